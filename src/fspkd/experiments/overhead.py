"""What the Distiller and the engine cost over an FSP stage-1 step written by hand (part of ``fspkd bench``).

Three ways to take the same step (same networks, taps, Eq. 1 and Eq. 2 on raw matrices, same live teacher run
as loaded, SGD) on the same batches: by hand (forward hooks, ``fsp_matrix`` and ``fsp_loss`` inline), through
``fspkd.Distiller`` in a plain loop, and through the engine's ``Stepper`` (which adds the lr schedule, the finite
check and gradient scaling). The cases run interleaved within each repeat, so a busy machine slows them alike;
each ratio is the median of the per-repeat ratios, with their range beside it.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from types import SimpleNamespace
from typing import Callable

import torch

from fspkd.core.fsp import fsp_loss, fsp_matrix
from fspkd.core.taps import FeatureTaps
from fspkd.distiller import Distiller
from fspkd.training.distributed import Context
from fspkd.training.step import Stepper

SETTINGS = {"fsp_recipe": "paper", "fast_teacher": False}  # raw matrices, the teacher as loaded: as a hand loop
# the bench times steps, it does not train: at lr 0 the three ways do all of a step's work on the same weights
# throughout, where the raw Eq. 2 loss of a deep random teacher overflows within a few steps even at a tiny lr
LR = 0.0


def step_cases(student: torch.nn.Module, teacher: torch.nn.Module, batches, device: torch.device) -> dict:
    """The three ways, each a function of the batch index that takes one step and returns its loss."""
    return {"by_hand": _by_hand(copy.deepcopy(student), teacher, batches),
            "distiller": _distiller_step(copy.deepcopy(student), teacher, batches),
            "engine": _engine_step(copy.deepcopy(student), teacher, batches, device)}


def bench_overhead(student: torch.nn.Module, teacher: torch.nn.Module, batches, *, repeats: int,
                   device: torch.device) -> dict:
    """Median ms of each way, and the Distiller's and the engine's ratios to the hand-written step."""
    cases = step_cases(student, teacher, batches, device)
    times = {name: [] for name in cases}
    for repeat in range(repeats + 1):
        for name, case in cases.items():
            started = time.perf_counter()
            case(repeat)
            if repeat:  # repeat 0 is the warm-up
                times[name].append(1000 * (time.perf_counter() - started))
    result = {"ms": {name: statistics.median(values) for name, values in times.items()}, "ratios": {}}
    for name in ("distiller", "engine"):
        ratios = [a / b for a, b in zip(times[name], times["by_hand"])]
        result["ratios"][f"{name}_over_by_hand"] = {"median": statistics.median(ratios), "min": min(ratios),
                                                     "max": max(ratios)}
    return result


def _by_hand(student, teacher, batches) -> Callable[[int], torch.Tensor]:
    """The step a user would write: hooks on both networks, Eq. 1 per pair, Eq. 2, backward, SGD."""
    student_pairs, teacher_pairs = student.fsp_pairs("before"), teacher.fsp_pairs("before")
    student_taps = FeatureTaps(student, sorted({t for pair in student_pairs for t in pair}))
    teacher_taps = FeatureTaps(teacher, sorted({t for pair in teacher_pairs for t in pair}))
    optimizer = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9)
    student.train()

    def step(i: int) -> None:
        images = batches[i % len(batches)][0]
        student(images)
        with torch.inference_mode():
            teacher(images)
        student_g = [fsp_matrix(student_taps.features[a], student_taps.features[b]) for a, b in student_pairs]
        teacher_g = [fsp_matrix(teacher_taps.features[a], teacher_taps.features[b]) for a, b in teacher_pairs]
        loss = fsp_loss(student_g, teacher_g, 0.01)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _distiller_step(student, teacher, batches) -> Callable[[int], torch.Tensor]:
    distiller = Distiller(student, teacher, method="fsp", **SETTINGS).train()
    distiller.check(batches[0][0])
    optimizer = torch.optim.SGD(distiller.parameters(), lr=LR, momentum=0.9)

    def step(i: int) -> None:
        images, labels = batches[i % len(batches)][:2]
        _, losses = distiller(images, labels)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        return losses["loss"].detach()

    return step


def _engine_step(student, teacher, batches, device: torch.device) -> Callable[[int], torch.Tensor]:
    distiller = Distiller(student, teacher, method="fsp", **SETTINGS).train()
    distiller.check(batches[0][0])
    run = SimpleNamespace(distiller=distiller, method=distiller.built(), student=student, config=distiller.config,
                          ctx=Context(device=device))
    stepper = Stepper(run, "stage1", torch.optim.SGD(distiller.parameters(), lr=LR, momentum=0.9))
    stepper.schedule = dataclasses.replace(stepper.schedule, lr=LR, milestones=[], warmup=0)  # not the recipe's

    def step(i: int) -> None:
        images, labels = batches[i % len(batches)][:2]
        return stepper.step(i, images, labels, grad_norm=False)["loss"].detach()

    return step
