"""Run settings resolved once, for the command line, the Python API and the experiments alike.

A user names some settings (a YAML file, flags, a dict); ``resolve_config`` fills in the rest, in this order:

1. ``RunConfig``'s field defaults;
2. a schedule given a length but no milestones gets the paper's shape: lr / 10 at 50% and 75% of the stage;
3. stage 1 of a two-stage method, when not named, is shaped as the paper shapes it relative to the task stage
   (``STAGE1_SHAPE``);
4. an FSP run takes the settings of its recipe (``fsp_recipe``, default ``DEFAULT_FSP_RECIPE``) wherever the user
   named none.

A recipe fixes FSP *settings* (stage-1 optimiser and learning rate, lambda, matrix normalisation, tap points,
task-stage learning rate), never lengths: budgets stay the user's. The evidence for each choice is in
``docs/findings.md``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from fspkd.core.config import RunConfig, Schedule, check_types
from fspkd.core.errors import FspkdError

DEFAULT_FSP_RECIPE = "fast"

# recipe keys are RunConfig fields, or ``stage1.<field>`` / ``task.<field>`` of the two schedules
FSP_RECIPES: dict[str, dict[str, Any]] = {
    # Algorithm 1 as printed: SGD stage 1 at lr 1e-3 (lambda 0.01 keeps that lr stable on the raw matrices),
    # raw Eq. 1 matrices, section start before the down-sampling block, task stage at lr 0.1
    "paper": {"stage1.optimizer": "sgd", "stage1.lr": 1e-3, "fsp_lambda": 0.01, "fsp_normalize": "none",
              "fsp_first": "before", "fsp_pre_relu": False, "task.lr": 0.1, "task_lr_candidates": []},
    # the best measured setting (docs/findings.md): Adam on unit-norm matrices learns the teacher's flow in every
    # pair; sections start after their down-sampling block (square matrices, no pooling). The task-stage lr is
    # probed from the stage-1 weights: a low one keeps what a full stage 1 taught, a higher one learns the task
    # faster where stage 1 taught little; task.lr is the rate of runs too short to probe
    "fast": {"stage1.optimizer": "adam", "stage1.lr": 1e-3, "fsp_lambda": 0.01, "fsp_normalize": "frobenius",
             "fsp_first": "after", "fsp_pre_relu": False, "task.lr": 0.005,
             "task_lr_candidates": [0.005, 0.02, 0.1]},
}

# stage 1 as the paper shapes it, relative to the task stage: (length ratio, lr, milestones as fractions of stage 1).
# FSP: 21k iterations, lr / 10 at 11k and 16k, as long as the task stage; FitNet hints: 35k, lr / 10 at 25k,
# against a 21k task stage
STAGE1_SHAPE = {"fsp": (1.0, 1e-3, [11 / 21, 16 / 21]), "fitnet": (35 / 21, 1e-4, [25 / 35])}


def paper_milestones(iterations: int) -> list[int]:
    """The paper's schedule shape: lr divided by 10 at 50% and 75% of a stage."""
    return [round(0.5 * iterations), round(0.75 * iterations)]


def resolve_config(given: Mapping[str, Any] | None = None, where: str = "configuration", **named) -> RunConfig:
    """The effective, validated settings of a run from the settings a user names.

    ``given`` (and keyword arguments, which win) are RunConfig keys; ``task`` and ``stage1`` may be partial
    schedules (mappings); ``fsp_recipe`` names an FSP recipe. Unknown keys are refused with a hint. Resolving the
    result's own ``to_dict()`` gives it back unchanged, so a saved ``config.yaml`` resolves to itself.
    """
    given = copy.deepcopy({**(given or {}), **named})
    recipe = given.pop("fsp_recipe", None)
    method = given.get("method", RunConfig.method)
    check_types(RunConfig, {"method": method}, where)  # read before the rest is checked
    if recipe is not None and not isinstance(recipe, str):
        raise FspkdError(f"{where}: fsp_recipe must be a recipe name ({', '.join(FSP_RECIPES)}), got {recipe!r}")
    for stage in ("task", "stage1"):
        if isinstance(given.get(stage), Schedule):
            given[stage] = dataclasses.asdict(given[stage])
    task = _schedule(given.get("task") or {}, RunConfig().task, where, "task")
    stage1 = None
    if method in STAGE1_SHAPE:
        stage1 = _schedule(given.get("stage1") or {}, _paper_stage1(method, task), where, "stage1")
    elif given.get("stage1"):
        raise FspkdError(f"{where}: method {method!r} has one stage; its stage1 settings would be unused")
    config = RunConfig.from_dict({**given, "task": task, "stage1": stage1}, where=where)
    if method == "fsp":
        config = apply_recipe(config, recipe or DEFAULT_FSP_RECIPE, keep=_named_keys(given))
    elif recipe is not None:
        raise FspkdError(f"{where}: fsp_recipe {recipe!r} applies to method 'fsp' only, not {method!r}")
    return config.validate()


def name_schedule_fields(given: dict[str, Any], stage: str, fields: Mapping[str, Any],
                         where: str = "configuration") -> None:
    """Name ``fields`` of ``stage``'s schedule in ``given``, over those named before. A new length without
    milestones drops the old milestones, so that the stage takes the paper's shape again."""
    current = given.get(stage) or {}
    if not isinstance(current, (Schedule, Mapping)):
        raise FspkdError(f"{where}: {stage} must be a mapping of schedule settings, got {current!r}")
    schedule = dataclasses.asdict(current) if isinstance(current, Schedule) else dict(current)
    if "iterations" in fields and "milestones" not in fields:
        schedule.pop("milestones", None)
    given[stage] = {**schedule, **fields}


def _schedule(named: Mapping[str, Any], default: Schedule, where: str, stage: str) -> Schedule:
    """``default`` with the named fields; a length named without milestones gets the paper's shape."""
    if not isinstance(named, Mapping):
        raise FspkdError(f"{where}: {stage} must be a mapping of schedule settings, got {named!r}")
    schedule = Schedule.from_dict(named, where=f"{where}, {stage}", base=default)
    if "iterations" in named and "milestones" not in named:
        schedule = dataclasses.replace(schedule, milestones=paper_milestones(schedule.iterations))
    return schedule


def _paper_stage1(method: str, task: Schedule) -> Schedule:
    ratio, lr, fractions = STAGE1_SHAPE[method]
    iterations = max(1, round(ratio * task.iterations))
    return Schedule(iterations=iterations, lr=lr, milestones=[round(f * iterations) for f in fractions])


def _named_keys(given: Mapping[str, Any]) -> set[str]:
    """The settings a user named, as RunConfig keys and ``stage1.lr``-style schedule keys."""
    keys = set(given)
    for stage in ("task", "stage1"):
        keys |= {f"{stage}.{field}" for field in (given.get(stage) or {})}
    return keys


def apply_recipe(config: RunConfig, name: str, keep: set[str] = frozenset()) -> RunConfig:
    """``config`` with recipe ``name``'s settings, except the keys in ``keep`` (those named explicitly). A task
    lr named without candidates is used as it is: no probe."""
    if name not in FSP_RECIPES:
        raise FspkdError(f"unknown FSP recipe {name!r}; valid recipes: {', '.join(FSP_RECIPES)}")
    if "task.lr" in keep:
        keep = {*keep, "task_lr_candidates"}
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
