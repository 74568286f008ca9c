"""The README's Python example runs as written, on an image folder this test makes."""

import re
from pathlib import Path

from datafakes import write_image_folder

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "the README holds one Python example"
    for split, count in (("train", 8), ("test", 4)):
        write_image_folder(tmp_path / "pets", ["cat", "dog", "fox"], per_class=count, split=split)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["loss"].item() > 0 and namespace["student"].conv1.weight.grad is not None
    assert namespace["summary"]["method"] == "fsp" and (tmp_path / "runs" / "fsp" / "final.pt").exists()
    assert 0 <= namespace["summary"]["test_acc"] <= 100 and "Schedule(" in capsys.readouterr().out
