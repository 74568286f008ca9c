"""Named FSP recipes: the paper's literal procedure and the settings the fast-optimization study found best.

A recipe fixes the FSP *settings* of a run (stage-1 optimiser and learning rate, lambda, matrix normalisation, tap
points, stage-2 learning rate), never its lengths: the iteration budgets stay the user's. Keys are RunConfig
fields, or ``stage1.<field>`` / ``train.<field>`` of the two schedules. Settings given explicitly (flags, a config
file) win over the recipe. The evidence for each choice is in ``docs/fast-optimization-study.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import RunConfig, Schedule
from .errors import FspkdError

DEFAULT_FSP_RECIPE = "fast"  # what `fspkd distill --method fsp` and the demo use; "paper" is the literal one

FSP_RECIPES: dict[str, dict[str, Any]] = {
    # Algorithm 1 as printed: SGD stage 1 at lr 1e-3 with lambda 0.01 (see RunConfig.fsp_lambda), raw Eq. 1
    # matrices, section start before the down-sampling block, stage 2 at lr 0.1
    "paper": {"stage1.optimizer": "sgd", "stage1.lr": 1e-3, "fsp_lambda": 0.01, "fsp_normalize": "none",
              "fsp_first": "before", "fsp_pre_relu": False, "train.lr": 0.1},
    # the study's best measured setting (docs/fast-optimization-study.md, 500 and 1,500 iterations): Adam on
    # unit-norm matrices learns the teacher's flow in every pair, and stage 2 at lr 0.005 keeps what stage 1 learned
    # (lr 0.1 / 0.02 / 0.01 / 0.005 / 0.002 measured: 0.002-0.005 best at both budgets); sections start after
    # their down-sampling block (square matrices, no pooling: better than "before" at both budgets)
    "fast": {"stage1.optimizer": "adam", "stage1.lr": 1e-3, "fsp_lambda": 0.01, "fsp_normalize": "frobenius",
             "fsp_first": "after", "fsp_pre_relu": False, "train.lr": 0.005},
}


def paper_shape(iterations: int, lr: float, optimizer: str = "sgd") -> Schedule:
    """A stage of ``iterations`` steps with the paper's shape: lr divided by 10 at 50% and 75% of the stage."""
    return Schedule(iterations=iterations, lr=lr, milestones=[round(0.5 * iterations), round(0.75 * iterations)],
                    optimizer=optimizer)


def apply_recipe(config: RunConfig, name: str, keep: set[str] = frozenset()) -> RunConfig:
    """``config`` with recipe ``name``'s settings, except the keys in ``keep`` (those given explicitly)."""
    if name not in FSP_RECIPES:
        raise FspkdError(f"unknown FSP recipe {name!r}; valid recipes: {', '.join(FSP_RECIPES)}")
    for key, value in FSP_RECIPES[name].items():
        if key in keep:
            continue
        stage, dot, field = key.partition(".")
        if dot:
            schedule = getattr(config, stage) or Schedule()
            config = dataclasses.replace(config, **{stage: dataclasses.replace(schedule, **{field: value})})
        else:
            config = dataclasses.replace(config, **{key: value})
    return config
