"""Run configuration: plain dataclasses that round-trip through YAML, validated before anything runs."""

from __future__ import annotations

import dataclasses
import difflib
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
    augment: bool | None = None  # pad 4 + random crop; None = the data set's default (paper: CIFAR-10 yes, CIFAR-100 no)
    flip: bool = False  # random horizontal flips (the paper does not mention them)
    image_size: int | None = None  # for imagefolder / cub200 (resize + centre crop)
    batch_size: int = 128  # global batch over all ranks
    seed: int = 0
    split_seed: int | None = None  # seed of the held-out split; None = seed (vary seed, keep the split)
    eval_every: int = 500  # iterations between evaluations (and checkpoints)
    eval_batch_size: int = 500
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
    stored_fsp: bool = False  # compute the teacher's FSP once per image and view, reuse across runs
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
    channels_last: bool = False
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; FSP matrices stay float32)
    micro_batches: int = 1  # each rank's batch in this many pieces, gradients accumulated (one optimiser step)
    sync_bn: bool = True  # SyncBatchNorm under multi-GPU DDP (CPU/gloo has none: per-rank BN statistics)

    @property
    def held_out_seed(self) -> int:
        """The seed that draws the validation split."""
        return self.seed if self.split_seed is None else self.split_seed

    def validate(self) -> "RunConfig":
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
        if not 0.0 <= self.val_split < 1.0:
            raise FspkdError(f"val_split must be in [0, 1), got {self.val_split}")
        for key in ("batch_size", "eval_every", "eval_batch_size", "students", "micro_batches"):
            if getattr(self, key) < 1:
                raise FspkdError(f"{key} must be a positive integer, got {getattr(self, key)}")
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
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise FspkdError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "configuration") -> "RunConfig":
        data = dict(data)
        _refuse_unknown(data, cls, where)
        for name in ("stage1", "task"):
            if isinstance(data.get(name), dict):
                data[name] = Schedule.from_dict(data[name], where=f"{where}, {name}")
        return cls(**data)


def _validate_schedule(name: str, schedule: Schedule) -> None:
    if schedule.iterations < 1:
        raise FspkdError(f"{name}.iterations must be at least 1, got {schedule.iterations}")
    if not schedule.lr > 0:
        raise FspkdError(f"{name}.lr must be > 0, got {schedule.lr}")
    if any(m < 0 for m in schedule.milestones):
        raise FspkdError(f"{name}.milestones must be non-negative iterations, got {schedule.milestones}")
    if schedule.optimizer not in ("sgd", "adam"):
        raise FspkdError(f"{name}.optimizer must be 'sgd' or 'adam', got {schedule.optimizer!r}")
    if schedule.weight_decay < 0 or schedule.warmup < 0 or schedule.clip_grad < 0:
        raise FspkdError(f"{name}: weight_decay, warmup and clip_grad must be >= 0")


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
    bad = [c for c in candidates if isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0]
    if bad:
        raise FspkdError(f"task_lr_candidates must be learning rates > 0, got {bad[0]!r}")
