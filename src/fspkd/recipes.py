"""The paper's experiments as data: ``recipes/*.yaml`` read into run configurations.

A recipe names its runs (RunConfig keys over a shared ``base``) and the table rows built from them. A run's
``teacher`` is another run's name (its ``final.pt``), ``NAME/final-K.pt`` (one member of a several-student
run) or ``@teacher`` (the ``--teacher`` file). ``new_head: true`` starts a ``copy`` run from the teacher's
weights with a freshly initialised classifier for this data (fine-tuning a teacher from another data set).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from .config import RunConfig
from .errors import FspkdError

EXTERNAL_TEACHER = "@teacher"
LAYOUTS = ("three", "single")  # three nets per row (Tables 1-2) or one (Tables 3-5)
PAPER_KEYS = {"three": ("nets", "avg", "ensemble", "iterations"), "single": ("acc",)}


@dataclass
class Row:
    """One table row: its label, the runs whose nets it holds, and the paper's figures for it."""

    label: str
    runs: list[str]
    paper: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    """One experiment of the paper: its runs (in dependency order) and its table."""

    name: str
    title: str
    layout: str
    paper_data: str  # what the paper trained on, e.g. "CIFAR-10 (50k train / 10k test)"
    runs: dict[str, RunConfig]
    new_head: set[str]
    rows: list[Row]
    choices: list[str] = field(default_factory=list)
    paper_timing: dict[str, Any] = field(default_factory=dict)
    command: str = ""

    def teacher_refs(self) -> dict[str, str]:
        """Run name -> the run (or ``@teacher``) its teacher comes from."""
        return {name: c.teacher.split("/")[0] for name, c in self.runs.items() if c.teacher}


def list_recipes() -> list[str]:
    """Names of the packaged experiments (``fspkd reproduce NAME``)."""
    return sorted(p.name[:-5] for p in _recipe_dir().iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> Recipe:
    """The packaged recipe ``name``, validated."""
    if name not in list_recipes():
        raise FspkdError(f"unknown experiment {name!r}; valid experiments: {', '.join(list_recipes())}")
    text = (_recipe_dir() / f"{name}.yaml").read_text()
    return parse_recipe(yaml.safe_load(text), where=f"recipes/{name}.yaml", command=text.splitlines()[0])


def parse_recipe(data: dict, where: str, command: str = "") -> Recipe:
    """Build a Recipe from the YAML mapping of ``where`` (every run config validated, every reference known)."""
    for key in ("experiment", "title", "layout", "paper_data", "base", "runs", "rows"):
        if key not in data:
            raise FspkdError(f"{where}: missing key {key!r}")
    if data["layout"] not in LAYOUTS:
        raise FspkdError(f"{where}: layout must be one of {', '.join(LAYOUTS)}, got {data['layout']!r}")
    runs, new_head = {}, set()
    for name, spec in data["runs"].items():
        spec = dict(spec)
        if spec.pop("new_head", False):
            new_head.add(name)
        runs[name] = RunConfig.from_dict({**data["base"], **spec}, where=f"{where}, run {name}").validate()
    rows = [Row(r["label"], list(r["runs"]), dict(r.get("paper", {}))) for r in data["rows"]]
    recipe = Recipe(data["experiment"], data["title"], data["layout"], data["paper_data"], runs, new_head, rows,
                    list(data.get("choices", [])), dict(data.get("paper_timing", {})), command.lstrip("# "))
    _check_references(recipe, where)
    return recipe


def _check_references(recipe: Recipe, where: str) -> None:
    order = list(recipe.runs)
    for name, ref in recipe.teacher_refs().items():
        if ref != EXTERNAL_TEACHER and (ref not in recipe.runs or order.index(ref) >= order.index(name)):
            raise FspkdError(f"{where}: run {name!r} takes its teacher from {ref!r}, which is not an earlier run")
    for row in recipe.rows:
        unknown = [r for r in row.runs if r not in recipe.runs]
        if unknown:
            raise FspkdError(f"{where}: row {row.label!r} names unknown runs {unknown}")
        missing = [k for k in PAPER_KEYS[recipe.layout] if k not in row.paper]
        if missing:
            raise FspkdError(f"{where}: row {row.label!r} lacks the paper's {missing}")


def scale_config(config: RunConfig, scale: float) -> RunConfig:
    """``config`` with every iteration count, milestone and ``eval_every`` multiplied by ``scale``."""
    if not scale > 0:
        raise FspkdError(f"--scale must be > 0, got {scale}")
    return dataclasses.replace(
        config,
        train=config.train.scaled(scale),
        stage1=config.stage1.scaled(scale) if config.stage1 is not None else None,
        eval_every=max(1, round(config.eval_every * scale)),
    )


def apply_overrides(config: RunConfig, settings: dict[str, Any], models: dict[str, str]) -> RunConfig:
    """Recipe settings replaced from the command line: RunConfig keys, and stand-ins for the networks the recipe
    trains (``OLD -> NEW``, the old model's options dropped)."""
    values = {**config.to_dict(), **settings}
    if values["model"] in models:
        values["model"], values["model_options"] = models[values["model"]], {}
    return RunConfig.from_dict(values, where="--set / --model-override").validate()


def _recipe_dir():
    return resources.files("fspkd") / "recipes"
