"""The README's Python example (a plain PyTorch loop around fspkd.Distiller) runs as written."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "the README holds one Python example"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    distiller, student, teacher = namespace["distiller"], namespace["student"], namespace["teacher"]
    assert distiller.stage == "task" and namespace["losses"]["loss"] > 0 and namespace["logits"].shape[1] == 3
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())
    saved = torch.load(tmp_path / "student.pt")
    assert all(torch.equal(saved[k], v) for k, v in student.state_dict().items())
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["stage1", "task"]
