"""What every training method provides to the one training loop in ``fspkd.training``."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn

from fspkd.core.config import RunConfig, Schedule
from fspkd.core.errors import FspkdError

Forward = Callable[[torch.Tensor], torch.Tensor]
StepOutput = dict  # {"loss": scalar tensor, "logits": (B, classes) tensor or None, "parts": {name: scalar tensor}}


def is_channels_last(network: nn.Module) -> bool:
    """Whether ``network``'s first 4-d weight is channels-last, not NCHW (the engine's default layout; a user's own
    loop may keep NCHW). A weight that is both (a 1x1 kernel) counts as NCHW."""
    weight = next((p for p in network.parameters() if p.dim() == 4), None)
    return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


class Method:
    """A distillation (or plain) method: the stages it runs and the loss of one batch in each.

    The student (and any extra learnable module, such as FitNet's regressors) is trained; the teacher, if any,
    is frozen in eval mode and never receives gradients. ``step`` runs the student through the ``forward`` it is
    given: the student itself, or its DDP wrapper when the training step (``fspkd.training.step``) runs on several
    processes.
    """

    name = "plain"
    stages: tuple[str, ...] = ("task",)
    feature_stages: tuple[str, ...] = ()  # stages whose loss uses the student's features, not its output
    needs_teacher = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None, config: RunConfig):
        self.student = student
        self.teacher = teacher
        self.config = config
        self.task_lr: float | None = None  # set when the task-stage lr is probed (fspkd.training.lr_probe)
        self.uses_stored_fsp: bool | None = None  # FSP: whether stage 1 reads stored teacher FSP, once decided
        if self.needs_teacher and teacher is None:
            raise FspkdError(f"method {self.name!r} needs a teacher: pass --teacher PATH")
        if teacher is not None and getattr(teacher, "headless_source", None) and self.needs_teacher_outputs():
            raise FspkdError(
                f"method {self.name!r} needs the teacher's outputs (a fine-tuned teacher), but "
                f"{teacher.headless_source} has no classifier weights; fine-tune it first (--method copy) or use a "
                "method that needs only its features (fsp; fitnet with fitnet_kd_weight [0, 0])"
            )
        if teacher is not None:
            freeze(teacher)
            if is_channels_last(student):  # its batches come in its layout; the teacher runs faster in the same
                teacher.to(memory_format=torch.channels_last)

    def needs_teacher_outputs(self) -> bool:
        """Whether some stage uses the teacher's class scores, not only its features (a features-only teacher,
        whose classifier is untrained, cannot give them)."""
        return False

    def schedule(self, stage: str) -> Schedule:
        if stage == "stage1":
            if self.config.stage1 is None:
                raise FspkdError(f"method {self.name!r} needs a stage1 schedule")
            return self.config.stage1
        if self.task_lr is not None:
            return dataclasses.replace(self.config.task, lr=self.task_lr)
        return self.config.task

    def extra_modules(self, stage: str) -> dict[str, nn.Module]:
        """Learnable modules besides the student in ``stage`` (saved in checkpoints, optimised with it)."""
        return {}

    def parameters(self, stage: str) -> list[nn.Parameter]:
        params = list(self.student.parameters())
        for module in self.extra_modules(stage).values():
            params += list(module.parameters())
        return params

    def start_student(self) -> None:
        """Give a freshly initialised student this method's starting weights (each further student of an ensemble
        too): nothing here; the weight copy starts every student from the teacher."""

    def check(self, example: torch.Tensor) -> None:
        """Validate the set-up on one example batch before training (shapes, channel widths)."""

    def check_loader(self, loader) -> None:
        """Validate what the method will do with the training loader (a forced FSP store must fit its disk)."""

    def bind_loader(self, stage: str, loader) -> str | None:
        """Called with the training loader of ``stage`` before its first batch (stored FSP targets use it); may
        return a line for the progress output."""

    def step(self, stage: str, images: torch.Tensor, labels: torch.Tensor, progress: float,
             forward: Forward | None = None) -> StepOutput:
        """Loss of one batch; ``progress`` runs from 0 to 1 over the stage (for annealed weights); ``forward``
        runs the student (default: the student itself)."""
        logits = (forward or self.student)(images)
        task = nn.functional.cross_entropy(logits, labels)
        return {"loss": task, "logits": logits, "parts": {"task_loss": task}}

    def close(self) -> None:
        """Release hooks."""


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a frozen teacher (the engine only ever calls ``.train()`` on the student)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@torch.inference_mode()
def teacher_forward(teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return teacher(images)


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module`` in eval mode inside the block, back in the mode it had after it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
