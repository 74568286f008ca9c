"""The task-stage lr probe: within its share of the run, deterministic, side-effect free, right where the answer
is known, and recorded and resumed by the engine."""

import csv
import json

import pytest
import torch
from interrupts import train_until_interrupted

from fspkd.core.checkpoint import load_checkpoint
from fspkd.core.config import RunConfig, Schedule
from fspkd.core.settings import resolve_config
from fspkd.training import distributed, lr_probe
from fspkd.training.build import build_run
from fspkd.training.run import train


def probed(teacher, **named) -> RunConfig:
    """An FSP run of the default recipe, long enough for a probe of 2 steps per candidate."""
    settings = dict(data="synthetic:320,100", model="resnet8", batch_size=16, eval_every=20, val_split=0.1,
                    method="fsp", teacher=str(teacher), stage1={"iterations": 60}, task={"iterations": 120})
    return resolve_config({**settings, **named})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    config = RunConfig(data="synthetic:320,100", model="resnet14", batch_size=32, val_split=0.1,
                       task=Schedule(iterations=6, lr=0.05, milestones=[3]))
    train(config, out, progress=False)
    return out


@pytest.mark.parametrize("stage1, task, batch, held", [(500, 500, 128, 512), (200, 400, 64, 512), (60, 120, 16, 28),
                                                       (3000, 3000, 256, 512)])
def test_the_probe_costs_at_most_its_share_of_the_run(stage1, task, batch, held):
    config = resolve_config(method="fsp", stage1={"iterations": stage1}, task={"iterations": task}, batch_size=batch)
    steps = lr_probe.probe_steps(config, held)
    cost = len(config.task_lr_candidates) * (steps + lr_probe.FORWARD_COST * held / batch)
    assert steps >= 1 and cost <= lr_probe.PROBE_SHARE * (stage1 + task)


def test_the_probe_is_deterministic_and_leaves_student_and_rng_as_they_were(teacher):
    run = build_run(probed(teacher), distributed.setup("cpu"))
    before, rng = {k: v.clone() for k, v in run.student.state_dict().items()}, torch.get_rng_state()
    first, second = lr_probe.choose_task_lr(run), lr_probe.choose_task_lr(run)
    assert first.losses == second.losses and first.chosen == second.chosen
    assert first.steps == 2 and set(first.losses) == {0.005, 0.02, 0.1}
    assert all(torch.equal(before[k], v) for k, v in run.student.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    other = lr_probe.choose_task_lr(build_run(probed(teacher, seed=1), distributed.setup("cpu")))
    assert other.losses != first.losses  # another seed: another student and other probe batches


def test_the_probe_picks_the_rate_that_learns_over_one_too_low_and_one_that_diverges(teacher, tmp_path):
    # from a briefly trained student (BatchNorm statistics set, as after stage 1): 1e-7 leaves the loss where it
    # is, 1e4 blows it up, 0.005 goes on learning
    start = RunConfig(data="synthetic:320,100", model="resnet8", batch_size=16, val_split=0.1,
                      task=Schedule(iterations=40, lr=0.05, milestones=[30]))
    train(start, tmp_path / "start", progress=False)
    config = probed(teacher, task_lr_candidates=[1e-7, 0.005, 1e4], task={"iterations": 1200},
                    init=str(tmp_path / "start" / "final.pt"))
    result = lr_probe.choose_task_lr(build_run(config, distributed.setup("cpu")))
    assert result.chosen == 0.005, result.losses
    assert result.losses[0.005] < result.losses[1e-7] < result.losses[1e4] == float("inf")


def test_a_run_too_short_to_probe_keeps_task_lr(teacher, tmp_path):
    config = probed(teacher, stage1={"iterations": 4}, task={"iterations": 6})
    summary = train(config, tmp_path / "short", progress=False)
    assert summary["task_lr"] == config.task.lr and "lr_probe" not in summary["stages"]


def test_an_fsp_run_records_its_probe_and_resumes_with_the_probed_rate(teacher, tmp_path, monkeypatch):
    config = probed(teacher)
    straight = train(config, tmp_path / "straight", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "straight" / "metrics.csv")))
    probe_rows = [r for r in rows if r["probe_loss"]]
    losses = {float(r["lr"]): float(r["probe_loss"]) for r in probe_rows}
    assert set(losses) == set(config.task_lr_candidates) and straight["task_lr"] == min(losses, key=losses.get)
    first_task_row = next(r for r in rows if r["stage"] == "task" and not r["probe_loss"])
    assert float(first_task_row["lr"]) == straight["task_lr"]
    assert f"task_lr_candidates: {straight['task_lr']:g}" in (tmp_path / "straight" / "config.yaml").read_text()
    assert straight["stages"]["lr_probe"]["iterations"] == 3 * 2

    # interrupted in the task stage, after its checkpoint at 40
    train_until_interrupted(config, tmp_path / "resumed", monkeypatch, at_call=60 + 3 * 2 + 50)
    resumed = train(config, tmp_path / "resumed", resume=True, progress=False)
    assert resumed["task_lr"] == straight["task_lr"]
    a, b = (load_checkpoint(tmp_path / run / "final.pt")["model"] for run in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["stages"]["lr_probe"]["iterations"] == 6
