"""Plain supervised training (teachers, from-scratch baselines) and the paper's weight copy (the double dagger)."""

from __future__ import annotations

from fspkd.core.errors import FspkdError
from fspkd.methods.base import Method


class Plain(Method):
    """Cross-entropy on the task, nothing else."""

    name = "plain"


class Copy(Method):
    """Start from the teacher's weights (same architecture) and keep training on the task: the paper's Teacher‡."""

    name = "copy"
    needs_teacher = True

    def __init__(self, student, teacher, config):
        super().__init__(student, teacher, config)
        ours, theirs = student.state_dict(), teacher.state_dict()
        differing = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
        if differing or set(theirs) - set(ours):
            raise FspkdError(
                f"--method copy needs the student to have the teacher's architecture; "
                f"{len(differing)} student tensors have no equal-shaped teacher tensor (e.g. {differing[:3]})"
            )
        self.start_student()

    def start_student(self) -> None:
        self.student.load_state_dict(self.teacher.state_dict())
