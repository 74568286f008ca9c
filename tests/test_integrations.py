"""fspkd in other frameworks' loops: a Lightning Trainer and an Accelerate launch, each a short real run on CPU.

Without the extras (``fspkd[lightning]``, ``fspkd[accelerate]``) these runs are skipped; the one-line error of a
missing extra is tested always.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fspkd
from fspkd.models import create

ROOT = Path(__file__).resolve().parents[1]


def batches(count=32, size=8):
    data = torch.utils.data.TensorDataset(torch.randn(count, 3, 32, 32), torch.randint(0, 3, (count,)))
    return torch.utils.data.DataLoader(data, batch_size=size)


def test_the_lightning_module_without_lightning_fails_in_one_line_with_the_pip_command(monkeypatch):
    monkeypatch.delitem(sys.modules, "fspkd.integrations.lightning", raising=False)
    monkeypatch.setitem(sys.modules, "lightning", None)  # an import of it raises ImportError
    with pytest.raises(ImportError, match=r"needs 'lightning': pip install 'fspkd\[lightning\]'$") as err:
        importlib.import_module("fspkd.integrations.lightning")
    assert isinstance(err.value, fspkd.FspkdError) and "\n" not in str(err.value)


def test_lightning_trains_both_stages_of_fsp_with_a_frozen_teacher():
    lightning = pytest.importorskip("lightning")
    from fspkd.integrations.lightning import DistillationModule

    torch.manual_seed(0)
    student, teacher = create("resnet8", num_classes=3), create("resnet14", num_classes=3)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    start = student.conv1.weight.detach().clone()
    loader = batches()
    module = DistillationModule(fspkd.Distiller(student, teacher, "fsp", example=next(iter(loader))[0]))
    options = dict(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False)
    lightning.Trainer(**options).fit(module, loader)
    assert not torch.equal(start, student.conv1.weight) and "train/fsp_loss" in module.trainer.callback_metrics
    module.distiller.stage = "task"
    trainer = lightning.Trainer(**options)
    trainer.fit(module, loader)
    assert torch.isfinite(trainer.callback_metrics["train/task_loss"])
    assert 0 <= trainer.validate(module, loader, verbose=False)[0]["val/acc"] <= 100
    assert not teacher.training and all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())


def test_the_accelerate_example_runs_under_accelerate_launch_on_cpu(tmp_path):
    pytest.importorskip("accelerate")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
               str(ROOT / "examples" / "accelerate_fsp.py"), "--steps", "2", "--out", str(tmp_path / "student.pt")]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stage1: loss" in done.stdout and "task: loss" in done.stdout
    create("resnet8").load_state_dict(torch.load(tmp_path / "student.pt"))
