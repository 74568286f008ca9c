"""Two CPU processes under torchrun (gloo) against one process taking the same global batch in two pieces.

Gloo has no SyncBatchNorm, so each process normalises its half of the batch with that half's statistics. One
process with ``micro_batches=2`` computes exactly that (each half normalised alone, gradients accumulated, BN
running statistics averaged over the halves as the ranks average theirs), so the two runs must agree: the loss
curve, the accuracies, every weight and buffer. A single process with the whole batch in one piece would
normalise over all of it and is not expected to agree. The same reference checks a two-process run that was
killed with SIGKILL (launcher and workers) in stage 2 and continued with ``--resume``.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fspkd.cli import main
from fspkd.core.checkpoint import load_checkpoint
from fspkd.core.config import RunConfig, Schedule
from fspkd.training.run import train

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--data", "synthetic:320,100", "--batch-size", "32", "--eval-every", "4", "--val-split", "0.1", "--seed", "3"]


def subprocess_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return env


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc. torchrun starts each worker in a session of its own, so a signal
    to the launcher's process group would leave the workers training (and writing) beside the resumed run."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):  # a process that ended while we looked
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def kill_and_wait(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: the state, then the parent's pid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _running(pid: int) -> bool:
    try:
        return _stat(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(ddp_dir: Path, one_dir: Path, weights: list[str]) -> None:
    """Equal metrics.csv rows (but wall time) and equal weights and buffers, within float tolerance."""
    ddp_rows, one_rows = read_rows(ddp_dir / "metrics.csv"), read_rows(one_dir / "metrics.csv")
    assert len(ddp_rows) == len(one_rows) > 0
    for ddp, one in zip(ddp_rows, one_rows):
        assert (ddp["student"], ddp["stage"], ddp["iteration"]) == (one["student"], one["stage"], one["iteration"])
        for column in ("loss", "fsp_loss", "task_loss", "train_acc", "val_acc", "test_acc", "lr"):
            if one[column] or ddp[column]:
                torch.testing.assert_close(float(ddp[column]), float(one[column]), rtol=1e-4, atol=1e-5,
                                           msg=f"{column} at {one['stage']} {one['iteration']}")
    for name in weights:
        ddp, one = load_checkpoint(ddp_dir / name)["model"], load_checkpoint(one_dir / name)["model"]
        assert ddp.keys() == one.keys()
        for key in one:
            torch.testing.assert_close(ddp[key], one[key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}")


def torchrun(*args: str) -> list[str]:
    """Two processes on this machine; --standalone: a private rendezvous on a free local port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "fspkd", *args]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    train(RunConfig(data="synthetic:320,100", model="resnet14", batch_size=32, eval_every=6, val_split=0.1,
                    seed=3, task=Schedule(iterations=6, lr=0.05)), out, progress=False)
    return out


@pytest.mark.slow
def test_two_torchrun_processes_equal_one_process_with_two_micro_batches(teacher, tmp_path):
    distill = ["--method", "fsp", "--teacher", str(teacher), "--model", "resnet8", "--students", "2",
               "--stage1-iterations", "4", "--stage1-lr", "1e-3", "--iterations", "6", "--lr", "0.05", *TINY]
    launch = torchrun("distill", "--quiet", "--out", str(tmp_path / "ddp"), *distill)
    done = subprocess.run(launch, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["distill", "--quiet", "--micro-batches", "2", "--out", str(tmp_path / "one"), *distill]) == 0

    assert_same_run(tmp_path / "ddp", tmp_path / "one", ["checkpoints/stage1.pt", "final-1.pt", "final-2.pt"])
    ddp_summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    one_summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    for key in ("val_acc", "test_acc", "ensemble_val_acc", "ensemble_test_acc"):
        assert ddp_summary[key] == one_summary[key], key
    # rows matched one to one above, so rank 1 wrote none; no temporary files were left behind
    assert not list((tmp_path / "ddp").rglob("*.tmp"))
    # a rank's predictions cover its share of the split only: none are stored, ensembles measure the weights
    assert not list((tmp_path / "ddp").glob("*-predictions.safetensors"))
    assert len(list((tmp_path / "one").glob("*-predictions.safetensors"))) == 2


@pytest.mark.slow
def test_a_two_process_run_killed_with_sigkill_resumes_to_the_same_result(teacher, tmp_path):
    distill = ["--method", "fsp", "--teacher", str(teacher), "--model", "resnet8", "--stage1-iterations", "4",
               "--stage1-lr", "1e-3", "--iterations", "60", "--lr", "0.05", *TINY]
    killed = tmp_path / "killed"
    process = subprocess.Popen(torchrun("distill", "--quiet", "--out", str(killed), *distill), env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            metrics = killed / "metrics.csv"
            if metrics.exists() and metrics.read_text().count(",task,") >= 2:  # a stage-2 checkpoint exists
                break
            time.sleep(0.01)
    finally:
        kill_and_wait(process_tree(process.pid))  # the launcher and both workers
        process.wait(timeout=60)
    assert not (killed / "summary.json").exists(), "the run ended before the kill: make it longer"
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["position"][1] == 1  # killed in stage 2

    done = subprocess.run(torchrun("distill", "--quiet", "--resume", "--out", str(killed)), env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["distill", "--quiet", "--micro-batches", "2", "--out", str(tmp_path / "one"), *distill]) == 0
    assert_same_run(killed, tmp_path / "one", ["checkpoints/stage1.pt", "final.pt"])


def test_an_error_on_rank_0_alone_ends_both_processes_with_one_line(tmp_path):
    # only rank 0 writes checkpoints: with its checkpoints folder gone, its next write fails and rank 1 is left
    # in the next step's all-reduce; the run must end, not wait there
    out = tmp_path / "run"
    process = subprocess.Popen(torchrun("train", "--quiet", "--out", str(out), "--model", "resnet8",
                                        "--iterations", "400", *TINY), env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if (out / "checkpoints" / "last.pt").exists():
                shutil.rmtree(out / "checkpoints")
                break
            time.sleep(0.01)
        _, stderr = process.communicate(timeout=90)
    finally:
        kill_and_wait(process_tree(process.pid))
    assert process.returncode != 0 and not (out / "summary.json").exists()
    assert [line for line in stderr.splitlines() if line.startswith("fspkd: error:")] != [], stderr[-2000:]
