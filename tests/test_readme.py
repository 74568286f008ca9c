"""The README's Python example runs as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    if not (ROOT.parent / "shared" / "weights" / "resnet20-12fca82f.th").exists():
        pytest.skip("../shared/weights is not beside the repository")
    monkeypatch.chdir(ROOT)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["loss"].item() > 0
    assert namespace["student"].conv1.weight.grad is not None
