import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_dir() -> Path:
    """``../shared`` beside the repository (or $FSPKD_SHARED): real data and weights, read in place."""
    return Path(os.environ.get("FSPKD_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture
def tiny_data():
    """A small built-in data set: 320 training and 100 test images."""
    return "synthetic:320,100"
