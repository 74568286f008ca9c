"""Hinton et al.'s knowledge distillation: match the teacher's softened class probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fspkd.methods.base import Method, teacher_forward


def kd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T) * T^2, batch mean, with p^T = softmax(logits / T).

    The T^2 factor keeps the soft term's gradient scale independent of T (Hinton et al., 2015).
    """
    log_p_student = F.log_softmax(logits_student.float() / temperature, dim=1)
    p_teacher = F.softmax(logits_teacher.float() / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


class KD(Method):
    """One stage: (1 - alpha) * cross-entropy + alpha * kd_loss."""

    name = "kd"
    needs_teacher = True

    def needs_teacher_outputs(self) -> bool:
        return True

    def step(self, stage, images, labels, progress, forward=None):
        logits = (forward or self.student)(images)
        teacher_logits = teacher_forward(self.teacher, images)
        task = F.cross_entropy(logits, labels)
        soft = kd_loss(logits, teacher_logits, self.config.kd_temperature)
        alpha = self.config.kd_alpha
        loss = (1 - alpha) * task + alpha * soft
        return {"loss": loss, "logits": logits, "parts": {"task_loss": task, "kd_loss": soft}}
