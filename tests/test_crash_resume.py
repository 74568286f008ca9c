"""A real ``fspkd distill`` process killed with SIGKILL mid-run, then ``--resume``d, ends exactly like a run that
was never interrupted: the same weights bit for bit and the same metrics.csv (all but its wall-clock column)."""

import csv
import os
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


def read_rows(path):
    with open(path, newline="") as f:
        timings = ("wall_s", "images_per_s")
        return [{k: v for k, v in row.items() if k not in timings} for row in csv.DictReader(f)]


def wait_for_task_rows(metrics: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll until metrics.csv has two task-stage rows or the process ends. A row is written just before its
    checkpoint, so by the second one the first task-stage checkpoint exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text().count(",task,") >= 2:
            return
        time.sleep(0.01)
    pytest.fail(f"no task-stage checkpoint before the process ended (exit {process.poll()})")


@pytest.mark.slow
def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path):
    teacher = tmp_path / "teacher"
    train(RunConfig(data="synthetic:320,100", model="resnet14", batch_size=32, eval_every=5,
                    task=Schedule(iterations=5, lr=0.05)), teacher, progress=False)
    flags = ["--method", "fsp", "--teacher", str(teacher), "--model", "resnet8", "--data", "synthetic:320,100",
             "--batch-size", "32", "--eval-every", "5", "--val-split", "0.1", "--stage1-iterations", "10",
             "--stage1-lr", "1e-3", "--iterations", "80", "--lr", "0.05", "--quiet"]
    assert main(["distill", "--out", str(tmp_path / "straight"), *flags]) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "fspkd", "distill", "--out", str(killed), *flags], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_task_rows(killed / "metrics.csv", process)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists(), "the run ended before the kill: make it longer"
    position = load_checkpoint(killed / "checkpoints" / "last.pt")["position"]
    assert position[1] == 1 and 0 < position[2] < 80  # killed mid task stage

    assert main(["distill", "--out", str(killed), "--resume", "--quiet"]) == 0  # the saved config.yaml
    straight = load_checkpoint(tmp_path / "straight" / "final.pt")["model"]
    resumed = load_checkpoint(killed / "final.pt")["model"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert read_rows(killed / "metrics.csv") == read_rows(tmp_path / "straight" / "metrics.csv")


def test_a_metrics_row_torn_by_a_crash_is_dropped_on_resume(tmp_path):
    from fspkd.training.runlog import MetricsFile

    metrics = MetricsFile(tmp_path / "metrics.csv")
    metrics.append({"student": 0, "stage": "task", "iteration": 20, "loss": 1.5})
    metrics.append({"student": 0, "stage": "task", "iteration": 40, "loss": 1.25})
    text = metrics.path.read_text()
    metrics.path.write_text(text[: text.index(",task,40") + len(",task,4")])  # the crash cut "40" to "4"
    metrics.truncate_after(lambda row: int(row["iteration"]) <= 20)
    rows = read_rows(metrics.path)
    assert [row["iteration"] for row in rows] == ["20"]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_metrics_file_of_an_older_version_keeps_its_columns_on_resume(tmp_path):
    from fspkd.training.runlog import MetricsFile

    old_columns = ["student", "stage", "iteration", "loss", "val_acc"]
    path = tmp_path / "metrics.csv"
    path.write_text(",".join(old_columns) + "\n0,train,20,1.5,\n")
    metrics = MetricsFile(path)
    metrics.append({"student": 0, "stage": "task", "iteration": 40, "loss": 1.25, "grad_norm": 3.0})
    metrics.truncate_after(lambda row: True)
    assert path.read_text().splitlines()[0] == ",".join(old_columns)
    assert [row["iteration"] for row in read_rows(path)] == ["20", "40"]
