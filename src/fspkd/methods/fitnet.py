"""FitNet (Romero et al., 2015) as the paper runs it: stage 1 hint training, then the task stage with KD at an
annealed weight."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fspkd.core.errors import FspkdError
from fspkd.core.taps import FeatureTaps
from fspkd.methods.base import Method, eval_mode, teacher_forward


def hint_loss(guided: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """FitNet's L_HT = 1/2 * ||hint - regressor(guided)||^2, summed over the map, batch mean."""
    return 0.5 * (guided.float() - hint.detach().float()).pow(2).flatten(1).sum(1).mean()


def soft_cross_entropy(logits_student, logits_teacher, temperature: float) -> torch.Tensor:
    """FitNet's KD term H(P_T^tau, P_S^tau): cross-entropy between softened outputs, batch mean (no tau^2)."""
    p_teacher = F.softmax(logits_teacher.float() / temperature, dim=1)
    return -(p_teacher * F.log_softmax(logits_student.float() / temperature, dim=1)).sum(1).mean()


def hint_taps(model, count: int, role: str, given: list[str] | None = None) -> list[str]:
    """The hint (teacher) or guided (student) taps: ``given`` if named, else those the model declares."""
    if given:
        return list(given)
    taps = [model.hint_layer] if count == 1 else list(getattr(model, "section_outputs", []))
    if not taps or (count == 1 and not getattr(model, "hint_layer", None)):
        raise FspkdError(f"the {role} model declares no FitNet hint layers (hint_layer / section_outputs)")
    return taps


def regressor(guided: torch.Size, hint: torch.Size, guided_tap: str, hint_tap: str) -> nn.Module:
    """FitNet's learned map from a guided (C, H, W) to a hint (C', H', W'): none where they match, a 1x1
    convolution where only the widths differ. Where the sizes differ by a whole factor k (pairs of other families
    place their middle layers at other resolutions), a k x k convolution at stride k (a larger guided layer) or
    its transpose (a smaller one) maps one to the other (the public CIFAR benchmarks' regressors, for k = 2, use
    3x3 and 4x4 kernels with a BatchNorm)."""
    (c_in, *size_in), (c_out, *size_out) = guided, hint
    if size_in == size_out:
        return nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)
    for big, small, make in ((size_in, size_out, nn.Conv2d), (size_out, size_in, nn.ConvTranspose2d)):
        k = big[0] // small[0]
        if all(b == s * k for b, s in zip(big, small)):
            return make(c_in, c_out, k, stride=k, bias=False)
    raise FspkdError(f"FitNet hint {hint_tap} is {tuple(size_out)} but guided layer {guided_tap} is "
                     f"{tuple(size_in)}: the sizes must be equal or differ by one whole factor (name other taps "
                     "in hint_layers / teacher_hint_layers)")


class FitNet(Method):
    """Stage 1: L2 between the teacher's hint layer(s) and the student's guided layer(s), through a learned
    regressor where their shapes differ (``regressor``). Task stage: cross-entropy + lambda * soft cross-entropy
    at tau, lambda falling linearly over the stage (the paper: tau = 3, lambda from 4 to 1)."""

    name = "fitnet"
    stages = ("stage1", "task")
    feature_stages = ("stage1",)
    needs_teacher = True

    def __init__(self, student, teacher, config):
        super().__init__(student, teacher, config)
        self.student_hints = hint_taps(student, config.fitnet_hints, "student", config.hint_layers)
        self.teacher_hints = hint_taps(teacher, config.fitnet_hints, "teacher",
                                       config.teacher_hint_layers or config.hint_layers)
        if len(self.student_hints) != len(self.teacher_hints):
            raise FspkdError("student and teacher declare different numbers of FitNet hint layers")
        self.student_taps = FeatureTaps(student, self.student_hints)
        self.teacher_taps = FeatureTaps(teacher, self.teacher_hints)
        self.regressors = nn.ModuleList()

    def needs_teacher_outputs(self) -> bool:
        """The task stage's soft cross-entropy uses the teacher's outputs unless its weight is 0 throughout."""
        return any(self.config.fitnet_kd_weight)

    def check(self, example):
        with torch.no_grad(), eval_mode(self.student):
            self.student(example[:2])
            teacher_forward(self.teacher, example[:2])
        regressors = []
        for s_tap, t_tap in zip(self.student_hints, self.teacher_hints):
            guided, hint = self.student_taps.features[s_tap], self.teacher_taps.features[t_tap]
            regressors.append(regressor(guided.shape[1:], hint.shape[1:], s_tap, t_tap))
        self.regressors = nn.ModuleList(regressors).to(example.device)

    def extra_modules(self, stage):
        return {"regressors": self.regressors} if stage == "stage1" else {}

    def step(self, stage, images, labels, progress, forward=None):
        logits = (forward or self.student)(images)
        if stage == "stage1":
            with torch.inference_mode():
                self.teacher(images)
            loss = sum(
                hint_loss(reg(self.student_taps.features[s]), self.teacher_taps.features[t].clone())
                for reg, s, t in zip(self.regressors, self.student_hints, self.teacher_hints)
            )
            return {"loss": loss, "logits": None, "parts": {"hint_loss": loss}}
        task = F.cross_entropy(logits, labels)
        if not self.needs_teacher_outputs():  # hints only: the teacher's (maybe untrained) classifier is unused
            return {"loss": task, "logits": logits, "parts": {"task_loss": task}}
        teacher_logits = teacher_forward(self.teacher, images).clone()
        soft = soft_cross_entropy(logits, teacher_logits, self.config.fitnet_temperature)
        start, end = self.config.fitnet_kd_weight
        weight = start + (end - start) * progress
        return {"loss": task + weight * soft, "logits": logits, "parts": {"task_loss": task, "kd_loss": soft}}

    def close(self):
        self.student_taps.remove()
        self.teacher_taps.remove()
