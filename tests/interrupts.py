"""A run interrupted as a Ctrl-C would interrupt it: for the resume tests."""

import pytest

from fspkd.methods.fsp import FSP
from fspkd.training.run import train


def train_until_interrupted(config, out, monkeypatch, at_call: int) -> None:
    """Train ``config`` into ``out`` until the ``at_call``-th FSP step (every stage's, the lr probe's too) raises
    KeyboardInterrupt; FSP steps run normally again afterwards."""
    original, calls = FSP.step, {"n": 0}

    def step(self, *args):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(FSP, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train(config, out, progress=False)
    monkeypatch.setattr(FSP, "step", original)
