"""Two CPU processes under torchrun (gloo) against one process taking the same global batch in two pieces.

Gloo has no SyncBatchNorm, so each process normalises its half of the batch with that half's statistics. One
process with ``micro_batches=2`` computes exactly that (each half normalised alone, gradients accumulated, BN
running statistics averaged over the halves as the ranks average theirs), so the two runs must agree: the loss
curve, the accuracies, every weight and buffer. A single process with the whole batch in one piece would
normalise over all of it and is not expected to agree.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from fspkd.checkpoint import load_checkpoint
from fspkd.cli import main
from fspkd.config import RunConfig, Schedule
from fspkd.engine import train

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--data", "synthetic:320,100", "--batch-size", "32", "--eval-every", "4", "--val-split", "0.1", "--seed", "3"]


def subprocess_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return env


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_two_torchrun_processes_equal_one_process_with_two_micro_batches(tmp_path):
    teacher = tmp_path / "teacher"
    train(RunConfig(data="synthetic:320,100", model="resnet14", batch_size=32, eval_every=6, val_split=0.1,
                    seed=3, train=Schedule(iterations=6, lr=0.05)), teacher, progress=False)
    distill = ["--method", "fsp", "--teacher", str(teacher), "--model", "resnet8", "--students", "2",
               "--stage1-iterations", "4", "--stage1-lr", "1e-3", "--iterations", "6", "--lr", "0.05", *TINY]
    # --standalone: a private rendezvous on a free local port
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "fspkd", "distill", "--quiet", "--out", str(tmp_path / "ddp"), *distill]
    done = subprocess.run(launch, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["distill", "--quiet", "--micro-batches", "2", "--out", str(tmp_path / "one"), *distill]) == 0

    ddp_rows, one_rows = read_rows(tmp_path / "ddp" / "metrics.csv"), read_rows(tmp_path / "one" / "metrics.csv")
    assert len(ddp_rows) == len(one_rows) > 0
    for ddp, one in zip(ddp_rows, one_rows):
        assert (ddp["member"], ddp["stage"], ddp["iteration"]) == (one["member"], one["stage"], one["iteration"])
        for column in ("loss", "fsp_loss", "task_loss", "train_acc", "val_acc", "test_acc", "lr"):
            if one[column] or ddp[column]:
                torch.testing.assert_close(float(ddp[column]), float(one[column]), rtol=1e-4, atol=1e-5,
                                           msg=f"{column} at {one['stage']} {one['iteration']}")
    for name in ("checkpoints/stage1.pt", "final-1.pt", "final-2.pt"):
        ddp, one = load_checkpoint(tmp_path / "ddp" / name)["model"], load_checkpoint(tmp_path / "one" / name)["model"]
        assert ddp.keys() == one.keys()
        for key in one:
            torch.testing.assert_close(ddp[key], one[key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
    ddp_summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    one_summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    for key in ("val_acc", "test_acc", "ensemble_val_acc", "ensemble_test_acc"):
        assert ddp_summary[key] == one_summary[key], key
    # rows matched one to one above, so rank 1 wrote none; no temporary files were left behind
    assert not list((tmp_path / "ddp").rglob("*.tmp"))
