"""Named FSP recipes: the paper's literal procedure and the settings the fast-optimization study found best.

A recipe fills in the FSP settings of a run (stage-1 optimiser and learning rate, lambda, matrix normalisation,
stage-2 learning rate) for a given stage-2 length; flags given on the command line still override it. The
evidence for each choice is in ``docs/fast-optimization-study.md``.
"""

from __future__ import annotations

from typing import Any

from .config import Schedule
from .errors import FspkdError


def paper_shape(iterations: int, lr: float, optimizer: str = "sgd") -> Schedule:
    """A stage of ``iterations`` steps with the paper's shape: lr divided by 10 at 50% and 75% of the stage."""
    return Schedule(iterations=iterations, lr=lr, milestones=[round(0.5 * iterations), round(0.75 * iterations)],
                    optimizer=optimizer)


def _paper(iterations: int) -> dict[str, Any]:
    # Algorithm 1 as printed: SGD stage 1 at lr 1e-3 (with lambda 0.01, see RunConfig.fsp_lambda), raw Eq. 1
    # matrices, section start before the down-sampling block, stage 2 at lr 0.1; both stages equally long.
    return {
        "stage1": paper_shape(iterations, 1e-3),
        "train": paper_shape(iterations, 0.1),
        "fsp_lambda": 0.01,
        "fsp_normalize": "none",
        "fsp_first": "before",
    }


def _fast(iterations: int) -> dict[str, Any]:
    # the study's best measured setting; see docs/fast-optimization-study.md for the arms it beat
    return {
        "stage1": paper_shape(iterations, 1e-3, optimizer="adam"),
        "train": paper_shape(iterations, 0.1),
        "fsp_lambda": 0.01,
        "fsp_normalize": "none",
        "fsp_first": "before",
    }


FSP_RECIPES = {"paper": _paper, "fast": _fast}


def fsp_recipe(name: str, iterations: int) -> dict[str, Any]:
    """RunConfig fields of recipe ``name`` for a stage 2 (and stage 1) of ``iterations`` steps."""
    if name not in FSP_RECIPES:
        raise FspkdError(f"unknown FSP recipe {name!r}; valid recipes: {', '.join(FSP_RECIPES)}")
    return FSP_RECIPES[name](iterations)
