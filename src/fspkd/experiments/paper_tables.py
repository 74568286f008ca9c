"""The paper's experiments as data: ``paper_tables/*.yaml`` read into run configurations.

A paper table names its runs (RunConfig keys over a shared ``base``) and the table rows built from them. A run's
``teacher`` is another run's name (its ``final.pt``), ``NAME/final-K.pt`` (one student of a several-student
run) or ``@teacher`` (the ``--teacher`` file). ``new_head: true`` starts a ``copy`` run from the teacher's
weights with a freshly initialised classifier for this data (fine-tuning a teacher from another data set).

A table with ``teacher_models`` picks its networks from the teacher's architecture (``--teacher-model``, else
``default_teacher_model``): each entry names the ``teacher`` network (its architecture trained here, fine-tuned or
from scratch) and the ``student``, and may carry ``settings`` for every run. A run then says ``net: teacher`` or
``net: student`` instead of ``model``, its ``@teacher`` runs read the file as that architecture, and ``{teacher}``
and ``{student}`` in the title and row labels become the entry's ``label``s.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from fspkd.core.config import RunConfig
from fspkd.core.errors import FspkdError
from fspkd.core.settings import name_schedule_fields, resolve_config

EXTERNAL_TEACHER = "@teacher"
LAYOUTS = ("three", "single")  # three nets per row (Tables 1-2) or one (Tables 3-5)
SCALED_EVALUATIONS = 5  # evaluations per stage at most, of a run scaled down with --scale
PAPER_KEYS = {"three": ("nets", "avg", "ensemble", "iterations"), "single": ("acc",)}


@dataclass
class Row:
    """One table row: its label, the runs whose nets it holds, and the paper's figures for it."""

    label: str
    runs: list[str]
    paper: dict[str, Any] = field(default_factory=dict)


@dataclass
class PaperTable:
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


def list_tables() -> list[str]:
    """Names of the packaged experiments (``fspkd reproduce NAME``)."""
    return sorted(p.name[:-5] for p in _tables_dir().iterdir() if p.name.endswith(".yaml"))


def load_table(name: str, teacher_model: str | None = None) -> PaperTable:
    """The packaged paper table ``name``, validated; ``teacher_model`` picks its networks (``teacher_models``)."""
    if name not in list_tables():
        raise FspkdError(f"unknown experiment {name!r}; valid experiments: {', '.join(list_tables())}")
    text = (_tables_dir() / f"{name}.yaml").read_text()
    return parse_table(yaml.safe_load(text), where=f"paper_tables/{name}.yaml", command=text.splitlines()[0],
                       teacher_model=teacher_model)


def parse_table(data: dict, where: str, command: str = "", teacher_model: str | None = None) -> PaperTable:
    """Build a PaperTable from the YAML mapping of ``where`` (every run config validated, every reference known)."""
    for key in ("experiment", "title", "layout", "paper_data", "base", "runs", "rows"):
        if key not in data:
            raise FspkdError(f"{where}: missing key {key!r}")
    if data["layout"] not in LAYOUTS:
        raise FspkdError(f"{where}: layout must be one of {', '.join(LAYOUTS)}, got {data['layout']!r}")
    chosen, networks = pick_networks(data, where, teacher_model)
    base = {**data["base"], **networks.get("settings", {})}
    runs, new_head = {}, set()
    for name, spec in data["runs"].items():
        spec = dict(spec)
        if spec.pop("new_head", False):
            new_head.add(name)
        spec = {**base, **_place_networks(spec, chosen, networks, f"{where}, run {name}")}
        if spec.get("method") == "fsp":  # the paper's tables run Algorithm 1 as printed
            spec.setdefault("fsp_recipe", "paper")
        runs[name] = resolve_config(spec, where=f"{where}, run {name}")
    labels = {role: networks.get(role, {}).get("label", "") for role in ("teacher", "student")}
    rows = [Row(r["label"].format(**labels), list(r["runs"]), dict(r.get("paper", {}))) for r in data["rows"]]
    table = PaperTable(data["experiment"], data["title"].format(**labels), data["layout"], data["paper_data"], runs,
                       new_head, rows, list(data.get("choices", [])), dict(data.get("paper_timing", {})),
                       command.lstrip("# "))
    _check_references(table, where)
    return table


def pick_networks(data: dict, where: str, teacher_model: str | None) -> tuple[str | None, dict]:
    """(the teacher architecture, its ``teacher_models`` entry); (None, {}) for a table without the mapping."""
    known = data.get("teacher_models")
    if not known:
        return None, {}
    chosen = teacher_model or data.get("default_teacher_model")
    if chosen not in known:
        raise FspkdError(f"--teacher-model {chosen!r}: the {data['experiment']} table knows the teacher "
                         f"architectures {', '.join(known)} ({where}, key teacher_models)")
    for role in ("teacher", "student"):
        if not isinstance(known[chosen].get(role), dict) or "model" not in known[chosen][role]:
            raise FspkdError(f"{where}: teacher_models.{chosen}.{role} must be a mapping with a 'model'")
    return chosen, known[chosen]


def _place_networks(spec: dict, chosen: str | None, networks: dict, where: str) -> dict:
    """A run's spec with ``net: teacher|student`` replaced by that network, ``@teacher`` read as ``chosen``."""
    role = spec.pop("net", None)
    if role is not None:
        if role not in ("teacher", "student") or not networks:
            raise FspkdError(f"{where}: 'net: {role}' needs a teacher_models table and 'teacher' or 'student'")
        spec["model"] = networks[role]["model"]
        spec["model_options"] = dict(networks[role].get("model_options", {}))
    if chosen and spec.get("teacher") == EXTERNAL_TEACHER:
        spec["teacher_model"] = chosen
    return spec


def _check_references(table: PaperTable, where: str) -> None:
    order = list(table.runs)
    for name, ref in table.teacher_refs().items():
        if ref != EXTERNAL_TEACHER and (ref not in table.runs or order.index(ref) >= order.index(name)):
            raise FspkdError(f"{where}: run {name!r} takes its teacher from {ref!r}, which is not an earlier run")
    for row in table.rows:
        unknown = [r for r in row.runs if r not in table.runs]
        if unknown:
            raise FspkdError(f"{where}: row {row.label!r} names unknown runs {unknown}")
        missing = [k for k in PAPER_KEYS[table.layout] if k not in row.paper]
        if missing:
            raise FspkdError(f"{where}: row {row.label!r} lacks the paper's {missing}")


def scale_config(config: RunConfig, scale: float) -> RunConfig:
    """``config`` with every iteration count, milestone and ``eval_every`` multiplied by ``scale``.

    A scaled-down run evaluates at most ``SCALED_EVALUATIONS`` times per stage: the interval is not scaled below
    the longest stage / ``SCALED_EVALUATIONS``. (Scaled in proportion, ``--scale 0.002`` evaluated every 4
    iterations, each time over the whole test set, and spent most of its time evaluating.)"""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise FspkdError(f"--scale must be a finite number > 0, got {scale}")
    task = config.task.scaled(scale)
    stage1 = config.stage1.scaled(scale) if config.stage1 is not None else None
    eval_every = max(1, round(config.eval_every * scale))
    if scale < 1:
        longest = max(stage.iterations for stage in (task, stage1) if stage is not None)
        eval_every = max(eval_every, math.ceil(longest / SCALED_EVALUATIONS))
    return dataclasses.replace(config, task=task, stage1=stage1, eval_every=eval_every)


def evaluations_per_stage(config: RunConfig) -> dict[str, int]:
    """How many times each stage of ``config`` is evaluated (and checkpointed): every ``eval_every`` iterations
    and at its end, as ``fspkd.training.walk`` does."""
    stages = {"task": config.task, "stage1": config.stage1}
    return {name: math.ceil(stage.iterations / config.eval_every) for name, stage in stages.items() if stage}


def apply_overrides(config: RunConfig, settings: dict[str, Any], models: dict[str, str]) -> RunConfig:
    """Table settings replaced from the command line: RunConfig keys, one field of a run's schedule
    (``task.lr``, ``stage1.lr``: the other fields stay the table's; a run without that stage ignores it), and
    stand-ins for the networks the table trains (``OLD -> NEW``, the old model's options dropped)."""
    values = config.to_dict()
    for key, value in settings.items():
        stage, dot, field = key.partition(".")
        if not dot:
            values[key] = value
        elif stage not in ("task", "stage1"):
            raise FspkdError(f"--set {key}: a schedule setting is task.FIELD or stage1.FIELD")
        elif values.get(stage) is not None:
            name_schedule_fields(values, stage, {field: value}, where=f"--set {key}")
    if values["model"] in models:
        values["model"], values["model_options"] = models[values["model"]], {}
    return resolve_config(values, where="--set / --model-override")


def _tables_dir():
    return resources.files("fspkd.experiments") / "paper_tables"
