"""Run configuration: plain dataclasses that round-trip through YAML, validated before anything runs."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fspkd.core.errors import FspkdError

METHODS = ("plain", "fsp", "kd", "fitnet", "copy")  # fspkd.methods implements one class per name
TWO_STAGE_METHODS = ("fsp", "fitnet")  # stage 1 (FSP matrices, FitNet hints), then the task stage
# FSP between different widths (fspkd.core.connectors): none, the measured default design, or a design by name
FSP_CONNECTORS = ("none", "auto", "conv1x1", "linear")


@dataclass
class Schedule:
    """One training stage's optimiser and multi-step learning-rate schedule."""

    iterations: int = 1000  # optimiser steps in this stage
    lr: float = 0.1  # initial learning rate
    milestones: list[int] = field(default_factory=list)  # iterations at which lr is multiplied by gamma
    gamma: float = 0.1  # lr factor at each milestone
    optimizer: str = "sgd"  # sgd (momentum) or adam
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup: int = 0  # iterations of linear lr warm-up from 0 (0 = none, the paper)
    clip_grad: float = 0.0  # max gradient norm (0 = no clipping, the paper)

    def lr_at(self, iteration: int) -> float:
        """Learning rate used for the step that starts at ``iteration`` (0-based)."""
        lr = self.lr * self.gamma ** sum(iteration >= m for m in self.milestones)
        if self.warmup and iteration < self.warmup:
            lr *= (iteration + 1) / self.warmup
        return lr

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "schedule", base: "Schedule | None" = None) -> "Schedule":
        """``base`` (default: the field defaults) with the fields named in ``data``; unknown keys refused."""
        _refuse_unknown(data, cls, where)
        check_types(cls, data, where)
        return dataclasses.replace(base or cls(), **data)

    def scaled(self, factor: float) -> "Schedule":
        """The same schedule with every iteration count multiplied by ``factor`` (at least one step)."""
        return dataclasses.replace(
            self,
            iterations=max(1, round(self.iterations * factor)),
            milestones=[max(1, round(m * factor)) for m in self.milestones],
            warmup=round(self.warmup * factor),
        )


@dataclass
class RunConfig:
    """Everything one ``fspkd train`` / ``fspkd distill`` run needs; saved as ``config.yaml`` with the run.

    The field defaults are the paper's. Build one with ``fspkd.resolve_config`` from the settings you name: it adds
    the paper's schedule shapes, a two-stage method's stage 1 and an FSP run's recipe, as the CLI does.
    """

    method: str = "plain"  # plain | fsp | kd | fitnet | copy
    model: str = "resnet20"  # student (or the trained net for plain)
    model_options: dict[str, Any] = field(default_factory=dict)  # e.g. {width: 4, shortcut: B}
    data: str = "synthetic"  # KIND:PATH or a built-in name
    val_split: float = 0.0  # fraction of train held out for validation
    normalize: str = "dataset"  # dataset | imagenet | none | R,G,B:R,G,B
    augment: bool | None = None  # pad 4 + random crop; None = the data set's default (the paper: CIFAR-10 only)
    flip: bool = False  # random horizontal flips (the paper does not mention them)
    image_size: int | None = None  # for imagefolder / cub200 (resize + centre crop)
    batch_size: int = 128  # global batch over all ranks
    seed: int = 0
    split_seed: int | None = None  # seed of the held-out split; None = seed (vary seed, keep the split)
    eval_every: int = 500  # iterations between evaluations (and checkpoints)
    eval_batch_size: int = 500
    # held-out images per split in the evaluations every eval_every iterations (0 = all); the evaluation that ends
    # each student's task stage (summary.json) always takes the whole split. 512 images give an accuracy to within
    # about 2 points (binomial standard error), enough to follow a curve, at a cost that no longer grows with the
    # split: a 5,000-image split would otherwise be evaluated whole at every checkpoint
    eval_images: int = 512
    teacher: str | None = None  # checkpoint of the teacher (our run dir/checkpoint or a foreign state dict)
    teacher_model: str | None = None  # teacher architecture; defaults to the one stored in our checkpoints
    teacher_options: dict[str, Any] = field(default_factory=dict)
    stage1: Schedule | None = None  # FSP / FitNet-hint stage; None for single-stage methods
    # the task stage (the only stage of one-stage methods): 1,000 CPU-sized iterations with the paper's shape
    task: Schedule = field(default_factory=lambda: Schedule(iterations=1000, milestones=[500, 750]))
    students: int = 1  # students trained on the task from one stage 1 (an ensemble when more than one)
    init: str | None = None  # start the student from these weights (one of our checkpoints, e.g. an FSP stage1.pt)
    # FSP
    fsp_lambda: float = 0.01  # lambda of Eq. 2, one for all pairs; 0.01 makes the paper's stage-1 lr 1e-3 stable
    fsp_first: str = "before"  # section start taken before or after the down-sampling block
    fsp_pre_relu: bool = False  # tap each block's residual sum before its final ReLU instead of its output
    fsp_normalize: str = "none"  # none (the paper's raw Eq. 1) | frobenius (each matrix scaled to unit norm)
    fsp_pairs: list[list[str]] | None = None  # explicit [first tap, second tap] pairs for any model
    teacher_fsp_pairs: list[list[str]] | None = None  # the teacher's pairs when its module names differ
    fsp_connector: str = "auto"  # learned adapters at student taps whose width differs from the teacher's
    # task-stage learning rates probed from the stage-1 weights (fspkd.training.lr_probe); empty: task.lr as given
    task_lr_candidates: list[float] = field(default_factory=list)
    shuffle_seed: int | None = None  # shuffled-FSP student (the paper's dagger); None = the teacher as is
    # stored teacher FSP (fspkd.accel.fsp_store): stage 1 reads the teacher's matrices from disk instead of running it
    # true: compute the teacher's FSP once per image and view, reuse across runs; auto: where that costs no more
    # than running the teacher live and fits half the free disk and memory (fspkd.accel.fsp_store.store_pays)
    stored_fsp: bool | str = "auto"
    stored_fsp_views: int = 4  # fixed augmented views (crop offset + flip) stored per image
    stored_fsp_dtype: str = "float16"  # float16 | float32 storage (matrices are used as float32)
    compile_teacher: bool = False  # torch.compile the live FSP teacher (costs a compilation at start)
    fast_teacher: bool = True  # live FSP teacher with BatchNorm folded, channels-last on CPU (fspkd.accel.fast_teacher)
    # Hinton KD (and FitNet's task stage)
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9  # weight of the soft term; (1 - alpha) on the cross-entropy
    # FitNet
    fitnet_hints: int = 1  # 1 = one hint in the middle of the network, 3 = one per section
    fitnet_temperature: float = 3.0  # the paper's tau for FitNet's KD stage
    fitnet_kd_weight: list[float] = field(default_factory=lambda: [4.0, 1.0])  # lambda from .. to, linearly
    hint_layers: list[str] | None = None  # the student's guided layer taps, for models that declare none
    teacher_hint_layers: list[str] | None = None  # the teacher's hint layer taps (default: hint_layers)
    channels_last: bool = True  # channels-last networks and batches: faster convolutions on CPU (docs/performance.md)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; FSP matrices stay float32)
    micro_batches: int = 1  # each rank's batch in this many pieces, gradients accumulated (one optimiser step)
    sync_bn: bool = True  # SyncBatchNorm under multi-GPU DDP (CPU/gloo has none: per-rank BN statistics)
    log: str = "csv"  # csv (metrics.csv only) | tensorboard | wandb: a copy of each metrics row to that tracker

    @property
    def held_out_seed(self) -> int:
        """The seed that draws the validation split."""
        return self.seed if self.split_seed is None else self.split_seed

    def validate(self) -> "RunConfig":
        """Every value's type (from the field types) and range, then the settings that depend on each other."""
        check_types(RunConfig, self.to_dict(), "configuration", schedules_as_mappings=True)
        _check_ranges(self, RUN_RANGES, "")
        if self.method not in METHODS:
            raise FspkdError(f"unknown method {self.method!r}; valid methods: {', '.join(METHODS)}")
        if self.method in TWO_STAGE_METHODS and self.stage1 is None:
            raise FspkdError(f"method {self.method!r} has two stages but stage1 is not set; give a stage1 schedule "
                             "or let fspkd.resolve_config fill in the paper's")
        if self.method not in TWO_STAGE_METHODS and self.stage1 is not None:
            raise FspkdError(f"method {self.method!r} has one stage; its stage1 schedule would be unused")
        for name, schedule in (("task", self.task), ("stage1", self.stage1)):
            if schedule is not None:
                _validate_schedule(name, schedule)
        if self.task_lr_candidates:
            _validate_candidates(self.method, self.task_lr_candidates)
        for key in ("fsp_pairs", "teacher_fsp_pairs"):
            pairs = getattr(self, key)
            if pairs is not None and (not pairs or any(len(pair) != 2 or not all(pair) for pair in pairs)):
                raise FspkdError(f"{key} must be a non-empty list of [first tap, second tap] pairs of module names, "
                                 f"got {pairs!r}")
        if len(self.fitnet_kd_weight) != 2:
            raise FspkdError(f"fitnet_kd_weight must be two weights [from, to], got {self.fitnet_kd_weight!r}")
        if self.batch_size % self.micro_batches:
            raise FspkdError(f"batch_size {self.batch_size} must divide evenly into micro_batches {self.micro_batches}")
        if self.fsp_first not in ("before", "after"):
            raise FspkdError(f"fsp_first must be 'before' or 'after', got {self.fsp_first!r}")
        if self.fsp_normalize not in ("none", "frobenius"):
            raise FspkdError(f"fsp_normalize must be 'none' or 'frobenius', got {self.fsp_normalize!r}")
        if self.fsp_connector not in FSP_CONNECTORS:
            raise FspkdError(f"fsp_connector must be one of {', '.join(FSP_CONNECTORS)}, got {self.fsp_connector!r}")
        if self.fitnet_hints not in (1, 3):
            raise FspkdError(f"fitnet_hints must be 1 or 3, got {self.fitnet_hints}")
        if self.stored_fsp_views < 1 or self.stored_fsp_dtype not in ("float16", "float32"):
            raise FspkdError(f"stored_fsp_views must be >= 1 and stored_fsp_dtype float16 or float32, got "
                             f"{self.stored_fsp_views} and {self.stored_fsp_dtype!r}")
        if isinstance(self.stored_fsp, str) and self.stored_fsp != "auto":
            raise FspkdError(f"stored_fsp must be true, false or auto, got {self.stored_fsp!r}")
        if self.log not in ("csv", "tensorboard", "wandb"):
            raise FspkdError(f"log must be csv, tensorboard or wandb, got {self.log!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise FspkdError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "configuration") -> "RunConfig":
        data = dict(data)
        _refuse_unknown(data, cls, where)
        check_types(cls, data, where, schedules_as_mappings=True)
        for name in ("stage1", "task"):
            if isinstance(data.get(name), dict):
                data[name] = Schedule.from_dict(data[name], where=f"{where}, {name}")
        return cls(**data)


def _validate_schedule(name: str, schedule: Schedule) -> None:
    _check_ranges(schedule, SCHEDULE_RANGES, f"{name}.")
    if any(m < 0 for m in schedule.milestones):
        raise FspkdError(f"{name}.milestones must be non-negative iterations, got {schedule.milestones}")
    if schedule.optimizer not in ("sgd", "adam"):
        raise FspkdError(f"{name}.optimizer must be 'sgd' or 'adam', got {schedule.optimizer!r}")


# -- types and ranges ---------------------------------------------------------------------------------------------
# Each value's type is read off its dataclass field type; these say the same in words where the field type alone
# would not tell a user what to write.
TYPE_WORDS = {
    "augment": "true, false or null (null: the data set's default)",
    "stored_fsp": "true, false or auto",
    "fsp_pairs": "a list of [first tap, second tap] pairs such as [[layer1, layer2]] (the flag --fsp-pairs takes "
                 "'layer1>layer2')",
    "teacher_fsp_pairs": "a list of [first tap, second tap] pairs such as [[layer1, layer2]]",
    "model_options": "a mapping of option names to values, such as {width: 4}",
    "teacher_options": "a mapping of option names to values, such as {width: 4}",
}
_NOUNS = {bool: ("true or false", "true/false values"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings"), Any: ("any value", "values")}


def _finite(low: float, *, strict: bool) -> tuple:
    words = f"a finite number {'>' if strict else '>='} {low:g}"
    return (lambda v: math.isfinite(v) and (v > low if strict else v >= low)), words


_POSITIVE_INT = (lambda v: v >= 1), "a positive integer"
_SEED = (lambda v: 0 <= v < 2**63), "an integer in [0, 2**63)"
# key -> (test, allowed range in words); None values (the optional keys' defaults) are not tested
RUN_RANGES = {
    "val_split": ((lambda v: 0.0 <= v < 1.0), "in [0, 1)"),
    "image_size": _POSITIVE_INT,
    **dict.fromkeys(("batch_size", "eval_every", "eval_batch_size", "students", "micro_batches",
                     "stored_fsp_views"), _POSITIVE_INT),
    **dict.fromkeys(("seed", "split_seed", "shuffle_seed"), _SEED),
    "eval_images": ((lambda v: v >= 0), "an integer >= 0 (0 = the whole split)"),
    "fsp_lambda": _finite(0, strict=True),
    "kd_temperature": _finite(0, strict=True),
    "fitnet_temperature": _finite(0, strict=True),
    "kd_alpha": ((lambda v: 0.0 <= v <= 1.0), "in [0, 1] (the weight of the soft term)"),
    "fitnet_kd_weight": ((lambda v: all(math.isfinite(w) and w >= 0 for w in v)), "finite weights >= 0"),
}
SCHEDULE_RANGES = {
    "iterations": ((lambda v: v >= 1), "at least 1"),
    "lr": _finite(0, strict=True),
    "gamma": _finite(0, strict=True),
    "momentum": ((lambda v: 0.0 <= v < 1.0), "in [0, 1)"),
    "weight_decay": _finite(0, strict=False),
    "warmup": ((lambda v: v >= 0), "an integer >= 0"),
    "clip_grad": ((lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0 (0 = no clipping)"),
}


def check_types(cls: type, data: dict[str, Any], where: str, *, prefix: str = "",
                schedules_as_mappings: bool = False) -> None:
    """Each of ``data``'s values of a field of dataclass ``cls`` has the field's type, else FspkdError naming
    ``where``, the key, the value and the type expected. An int passes for a float; a bool never passes for a
    number. With ``schedules_as_mappings`` a Schedule field may also hold a mapping (checked as a Schedule)."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in hints:
            continue  # unknown keys are _refuse_unknown's
        hint = hints[key]
        if schedules_as_mappings and isinstance(value, dict) and Schedule in _options(hint):
            check_types(Schedule, value, where, prefix=f"{prefix}{key}.")
            continue
        if not _has_type(value, hint):
            words = TYPE_WORDS.get(key) or _describe(hint)
            raise FspkdError(f"{where}: {prefix}{key} must be {words}, got {value!r} ({type(value).__name__})"
                             f"{_yaml_number_hint(value, hint)}")


def _yaml_number_hint(value, hint) -> str:
    """PyYAML reads 1e-3 (no dot) as text: say so when a number was meant."""
    if isinstance(value, str) and float in _options(hint):
        try:
            number = float(value)
        except ValueError:
            return ""
        if "e" in value.lower():  # YAML 1.1 floats need a dot and a signed exponent
            mantissa, _, exponent = value.lower().partition("e")
            mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
            exponent = exponent if exponent[:1] in ("+", "-") else f"+{exponent}"
            return f"; YAML reads {value} as text: write {mantissa}e{exponent}"
        return f"; write {number!r} without quotes"
    return ""


def _options(hint) -> tuple:
    """The types a Union (``X | None``) allows, or the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _has_type(value, hint) -> bool:
    if hint is Any:
        return True
    options = _options(hint)
    if len(options) > 1:
        return any(_has_type(value, option) for option in options)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return isinstance(value, list) and all(_has_type(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_has_type(k, args[0]) and _has_type(v, args[1])
                                               for k, v in value.items())
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    raise TypeError(f"no type check for {hint!r}")  # a new field type: teach _has_type and _describe


def _describe(hint, plural: bool = False) -> str:
    options = [o for o in _options(hint) if o is not type(None)]
    if len(options) < len(_options(hint)):
        return f"{_describe(options[0], plural)} or null"
    if hint in _NOUNS:
        return _NOUNS[hint][plural]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return f"{'lists' if plural else 'a list'} of {_describe(args[0], plural=True)}"
    if origin is dict:
        return "mappings" if plural else "a mapping"
    return f"{hint.__name__} settings" if plural else f"a mapping of {hint.__name__} settings"


def _check_ranges(values, ranges: dict, prefix: str) -> None:
    for key, (test, words) in ranges.items():
        value = getattr(values, key)
        if value is not None and not test(value):
            raise FspkdError(f"{prefix}{key} must be {words}, got {value!r}")


def _refuse_unknown(data: dict[str, Any], cls: type, where: str) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(known)}"
            raise FspkdError(f"unknown key {key!r} in {where}{hint}")


def parse_value(text: str):
    """A KEY=VALUE value from the command line: an int, a float, true/false, or else the string itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or bad YAML."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FspkdError(f"configuration file not found: {path}") from None
    except yaml.YAMLError as err:
        raise FspkdError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FspkdError(f"{path} must hold a mapping of configuration keys, got {type(data).__name__}")
    return data


def _validate_candidates(method: str, candidates: list[float]) -> None:
    if method not in TWO_STAGE_METHODS:
        raise FspkdError(f"task_lr_candidates: method {method!r} has no stage 1 to probe from; name task.lr instead")
    bad = [c for c in candidates if not (math.isfinite(c) and c > 0)]  # their type is checked before
    if bad:
        raise FspkdError(f"task_lr_candidates must be finite learning rates > 0, got {bad[0]!r}")
