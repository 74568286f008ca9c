"""One optimiser step of one stage: micro-batches, autocast, gradient averaging over ranks, clipping, finite check.

A batch's losses come from the run's ``fspkd.Distiller``, the object a user's own loop calls. Under ``torchrun``
each process takes its slice of the global batch. Where the loss flows through the student's output, the student
runs through a DDP wrapper that this module owns and hands to the distiller; a feature stage
(FSP matrices, FitNet hints) leaves the head without gradients, so its gradients are averaged here instead. Taking
each slice in ``micro_batches`` pieces with accumulated gradients computes exactly what that many processes with
per-process BatchNorm compute.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from fspkd.core.config import Schedule
from fspkd.core.errors import TrainingError
from fspkd.distiller import make_optimizer  # noqa: F401  (the engine's optimisers are the Distiller's)
from fspkd.training import distributed
from fspkd.training.build import Run


class NonFiniteLoss(TrainingError):
    """The loss became NaN or infinite."""


class Stepper:
    """Takes the optimiser steps of one stage of ``run``."""

    def __init__(self, run: Run, stage: str, optimizer: torch.optim.Optimizer):
        self.run, self.stage, self.optimizer = run, stage, optimizer
        self.schedule: Schedule = run.method.schedule(stage)
        config, ctx = run.config, run.ctx
        run.distiller.stage = stage
        self.forward = run.student
        if ctx.distributed and stage not in run.method.feature_stages:
            # buffers are averaged after each step (see RunningStatsMean), not broadcast from rank 0
            self.forward = DistributedDataParallel(run.student, forward_sync_buffers=False)
        self.scaler = torch.amp.GradScaler(enabled=config.precision == "fp16" and ctx.device.type == "cuda")

    def step(self, iteration: int, images: torch.Tensor, labels: torch.Tensor, grad_norm: bool) -> dict:
        """One optimiser step at ``iteration`` (0-based) on this rank's share of a global batch; returns the
        step's mean loss and parts, its logits, and (when ``grad_norm`` or clipping) the gradient norm."""
        lr = self.schedule.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        output = self._forward_backward(iteration, images, labels)
        self.scaler.unscale_(self.optimizer)
        norm = self._grad_norm(self.schedule.clip_grad)
        if self.schedule.clip_grad or grad_norm:
            output["grad_norm"] = norm
        if not self.scaler.is_enabled():  # fp16's scaler skips such a step itself
            self._check_finite_gradients(norm, iteration)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {**output, "lr": lr}

    def _forward_backward(self, iteration: int, images, labels) -> dict:
        """Loss and averaged gradients of one global batch, this rank's share taken in ``micro_batches`` pieces."""
        pieces, distiller = self.run.config.micro_batches, self.run.distiller
        progress = iteration / max(self.schedule.iterations - 1, 1)
        statistics = RunningStatsMean(self.run.student) if pieces > 1 else None  # one piece: nothing to average
        outputs = []
        for index, (x, y) in enumerate(zip(images.chunk(pieces), labels.chunk(pieces))):
            if statistics:
                statistics.restore()
            with self._no_sync(last=index == pieces - 1), self._autocast():
                logits, losses = distiller(x, y, progress, self.forward)
                output = {"loss": losses.pop("loss"), "logits": logits, "parts": losses}
            if statistics:
                statistics.add()
            self._check_finite(output, iteration)
            self.scaler.scale(output["loss"] / pieces).backward()
            outputs.append(output)
        if statistics:
            statistics.finish()
        self._average_gradients()
        distributed.average_float_buffers(self.run.student, self.run.ctx)
        return _mean_output(outputs)

    def _no_sync(self, last: bool):
        """DDP averages gradients once, on the backward pass of the last piece."""
        if last or not isinstance(self.forward, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.forward.no_sync()

    def _autocast(self):
        precision = self.run.config.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.run.ctx.device.type, dtype=dtype)

    def _average_gradients(self) -> None:
        """Average over ranks the gradients DDP does not: extra modules (FitNet's regressors) and an unwrapped
        student."""
        if not self.run.ctx.distributed:
            return
        modules = list(self.run.method.extra_modules(self.stage).values())
        if not isinstance(self.forward, DistributedDataParallel):
            modules.append(self.run.student)
        distributed.average_gradients([p for m in modules for p in m.parameters()], self.run.ctx)

    def _grad_norm(self, clip: float) -> torch.Tensor:
        """The gradients' total L2 norm before clipping, clipped to ``clip`` when it is set."""
        params = [p for p in self.run.method.parameters(self.stage) if p.grad is not None]
        if clip:
            return nn.utils.clip_grad_norm_(params, clip)
        return nn.utils.get_total_norm([p.grad for p in params])

    def _check_finite_gradients(self, norm: torch.Tensor, iteration: int) -> None:
        """A finite loss can still give non-finite gradients; such a step is never applied, so the weights (and
        every checkpoint) stay finite. The gradients are already averaged over ranks: all ranks stop alike."""
        if not torch.isfinite(norm):
            raise NonFiniteLoss(f"non-finite gradients at iteration {iteration + 1} of {self.stage} (norm "
                                f"{float(norm)}); the step was not applied")

    def _check_finite(self, output: dict, iteration: int) -> None:
        finite = bool(torch.isfinite(output["loss"].detach()).all())
        if not distributed.any_rank(not finite, self.run.ctx):
            return
        bad = [name for name, v in output["parts"].items() if not torch.isfinite(v.detach()).all()]
        raise NonFiniteLoss(f"non-finite loss at iteration {iteration + 1} of {self.stage} "
                            f"(term {', '.join(bad) or 'loss'}: {float(output['loss'].detach())})")


def _mean_output(outputs: list[dict]) -> dict:
    """One step's output from its micro-batches' outputs: mean loss and parts (detached), all logits."""
    if len(outputs) == 1:
        return outputs[0]
    mean = lambda values: torch.stack([v.detach().float() for v in values]).mean()
    logits = [o["logits"] for o in outputs]
    return {
        "loss": mean([o["loss"] for o in outputs]),
        "logits": None if logits[0] is None else torch.cat([l.detach() for l in logits]),
        "parts": {name: mean([o["parts"][name] for o in outputs]) for name in outputs[0]["parts"]},
    }


class RunningStatsMean:
    """BatchNorm running statistics of a step taken in micro-batches: each piece updates them from the same
    starting point and the step keeps the mean of those updates, which is what averaging the statistics over
    DDP ranks gives. So a run split over N processes equals one process taking N micro-batches."""

    def __init__(self, model: nn.Module):
        self.buffers = list(model.buffers())  # running mean / var, and num_batches_tracked (+1 per step)
        self.start = [b.detach().clone() for b in self.buffers]
        self.sums = [torch.zeros_like(b, dtype=torch.float64) for b in self.buffers]
        self.count = 0

    def restore(self) -> None:
        for buffer, start in zip(self.buffers, self.start):
            buffer.copy_(start)

    def add(self) -> None:
        for total, buffer in zip(self.sums, self.buffers):
            total += buffer
        self.count += 1

    def finish(self) -> None:
        for buffer, total in zip(self.buffers, self.sums):
            buffer.copy_(total / self.count)  # an integer counter comes back exact
