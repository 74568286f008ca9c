"""Building a run from its settings: data, student, teacher and method, checked on one batch before training.

Everything here reads (data, checkpoints) and nothing writes, so a run whose data, models or method do not fit
together fails here with nothing written (``fspkd.training.run`` calls it before writing ``config.yaml``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from fspkd.core.checkpoint import load_checkpoint
from fspkd.core.config import RunConfig
from fspkd.core.errors import FspkdError
from fspkd.data import BatchLoader, Splits, load_dataset, parse_normalize
from fspkd.distiller import Distiller
from fspkd.methods import Method
from fspkd.models import create
from fspkd.training.distributed import Context
from fspkd.training.inference import load_network
from fspkd.training.loggers import check_tracker


@dataclass
class Run:
    """The parts of one run, built once: its settings, data, student and distiller (which owns the method: the
    engine computes its losses through the same ``fspkd.Distiller`` a user's own loop does)."""

    config: RunConfig
    ctx: Context
    splits: Splits
    mean: list[float]
    std: list[float]
    augment: bool
    student: nn.Module
    distiller: Distiller

    @property
    def method(self) -> Method:
        return self.distiller.built()

    def loader(self, seed: int, train: bool = True) -> BatchLoader:
        """This rank's batches of the training split: shuffled and augmented forever (``train``) or one pass."""
        data = self.splits.train
        return BatchLoader(
            data.images, data.labels, self.config.batch_size, mean=self.mean, std=self.std, train=train,
            augment=self.augment and train, flip=self.config.flip, seed=seed, rank=self.ctx.rank,
            world_size=self.ctx.world_size, channels_last=self.config.channels_last,
        )

    def fresh_student(self, seed: int) -> None:
        """Give the student new weights drawn with ``seed`` (or ``config.init``'s, or the method's own start, e.g. the
        weight copy's teacher): a further single-stage student."""
        torch.manual_seed(seed)
        fresh = build_model(self.config.model, self.config.model_options, self.splits.num_classes)
        self.student.load_state_dict(fresh.state_dict())
        load_init(self.student, self.config)
        self.method.start_student()


def build_run(config: RunConfig, ctx: Context) -> Run:
    """The run's parts on this rank, after a dry run of the method on one batch (``Distiller.check``)."""
    check_devices(config, ctx)
    check_tracker(config)
    torch.manual_seed(config.seed)
    splits = load_run_data(config)
    mean, std = parse_normalize(config.normalize, splits)
    student = build_model(config.model, config.model_options, splits.num_classes).to(ctx.device)
    load_init(student, config)
    if ctx.distributed and ctx.device.type == "cuda" and config.sync_bn:  # gloo has no SyncBatchNorm
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    if config.channels_last:
        student = student.to(memory_format=torch.channels_last)
    teacher = load_teacher(config, splits.num_classes, ctx.device) if config.teacher else None
    distiller = Distiller(student, teacher, config=config)
    augment = splits.default_augment if config.augment is None else config.augment
    run = Run(config, ctx, splits, mean, std, augment, student, distiller)
    try:
        distiller.check(next(iter(run.loader(seed=config.seed, train=False)))[0].to(ctx.device))
    except BaseException:
        distiller.close()
        raise
    if getattr(teacher, "headless_source", None) and ctx.rank == 0:  # after the method accepted it, not before
        print(f"fspkd: note: {teacher.headless_source} has no classifier weights: the teacher's classifier is left "
              f"freshly initialised (fine for {config.method}, which does not use the teacher's outputs)",
              file=sys.stderr)
    return run


def check_devices(config: RunConfig, ctx: Context) -> None:
    """Settings that depend on the device and the number of processes."""
    if config.precision == "fp16" and ctx.device.type != "cuda":
        raise FspkdError(f"precision fp16 needs a CUDA device (gradient scaling), not {ctx.device}; use bf16 on CPU")
    local_batch = config.batch_size // ctx.world_size
    if config.batch_size % ctx.world_size or local_batch % config.micro_batches:
        raise FspkdError(f"batch_size {config.batch_size} must split evenly over {ctx.world_size} processes and "
                         f"then into micro_batches {config.micro_batches}")


def load_run_data(config: RunConfig) -> Splits:
    """The run's data splits; the validation split is drawn by ``config.held_out_seed``."""
    return load_dataset(config.data, val_split=config.val_split, seed=config.held_out_seed,
                        image_size=config.image_size)


def build_model(name: str, options: dict, num_classes: int) -> nn.Module:
    return create(name, num_classes=num_classes, **options)


def load_init(student: nn.Module, config: RunConfig) -> None:
    """Start the student from ``config.init`` (e.g. an FSP ``checkpoints/stage1.pt``) instead of a fresh init."""
    if config.init:
        student.load_state_dict(load_checkpoint(config.init)["model"])


def load_teacher(config: RunConfig, num_classes: int, device) -> nn.Module:
    """The teacher from one of our runs (folder or checkpoint) or from a foreign state dict + ``teacher_model``;
    a foreign file may lack the classifier (features only, e.g. an ImageNet backbone for FSP or FitNet hints)."""
    teacher, _ = load_network(Path(config.teacher), config.teacher_model, config.teacher_options, num_classes,
                              features_only=True)
    return teacher.to(device)
