"""docs/reliability.md names, for each bad input and fault, the test that shows it: every test it names exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_the_reliability_table_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    named, current = [], None
    for file, name in re.findall(r"`(test_\w+)?(?:::(test_\w+))?`", text):
        current = file or current
        named.append((current, name))
    assert len(named) > 30
    for file, name in named:
        source = (ROOT / "tests" / f"{file}.py").read_text()
        assert not name or re.search(rf"^def {name}\(", source, re.M), f"{file}::{name} is not a test"
