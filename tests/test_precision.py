"""bf16 autocast on CPU: a short FSP run stays finite and the FSP matrices stay float32."""

import math

import pytest
import torch

import fspkd.methods.fsp as fsp_method
from fspkd.core.checkpoint import load_checkpoint
from fspkd.core.config import RunConfig, Schedule
from fspkd.training.run import train
from fspkd.training.runlog import read_metrics


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    train(RunConfig(data="synthetic:320,100", model="resnet14", batch_size=32, eval_every=4,
                    task=Schedule(iterations=4, lr=0.05)), out, progress=False)
    return out


def test_bf16_fsp_run_stays_finite_with_float32_fsp_matrices(teacher_dir, tmp_path, monkeypatch):
    seen = {"dtypes": set(), "autocast": set()}
    original = fsp_method.fsp_matrix

    def recording_fsp_matrix(a, b):
        g = original(a, b)
        seen["dtypes"].add((a.dtype, g.dtype))
        seen["autocast"].add(torch.is_autocast_enabled("cpu"))
        return g

    monkeypatch.setattr(fsp_method, "fsp_matrix", recording_fsp_matrix)
    config = RunConfig(method="fsp", teacher=str(teacher_dir), model="resnet8", data="synthetic:320,100",
                       batch_size=32, eval_every=4, precision="bf16", stage1=Schedule(iterations=6, lr=1e-3),
                       task=Schedule(iterations=6, lr=0.05, milestones=[3]))
    summary = train(config, tmp_path / "bf16", progress=False)
    assert True in seen["autocast"]  # the student's forward really ran under autocast
    assert (torch.bfloat16, torch.float32) in seen["dtypes"]  # bf16 features in, float32 matrix out
    assert {g for _, g in seen["dtypes"]} == {torch.float32}
    rows = read_metrics(tmp_path / "bf16" / "metrics.csv")
    assert rows and all(math.isfinite(r["loss"]) for r in rows)
    assert 0 <= summary["test_acc"] <= 100
    weights = load_checkpoint(tmp_path / "bf16" / "final.pt")["model"]
    assert all(v.dtype != torch.bfloat16 and torch.isfinite(v).all() for v in weights.values()
               if v.is_floating_point())  # autocast leaves the stored weights in float32
