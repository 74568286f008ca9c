"""The task-stage learning rate of a two-stage run, chosen from its stage-1 weights by a short probe.

What stage 1 taught is kept by a low task-stage rate when it taught much (a student the teacher's size after a
full stage 1) and is worth less than fast task learning when it taught little (a smaller student, a short stage 1);
no one rate serves both (docs/findings.md). So each candidate rate (``task_lr_candidates``) trains a copy of the
stage-1 student for a few steps, the last quarter at a tenth of the rate as the task schedule ends, so that a high
rate's noise does not hide its progress. The rate whose copy has the lowest cross-entropy (in eval mode, see
``_held_out_loss``) on training images the probe never trains on wins (ties: the lower rate). The probe is meant
to start from stage-1 weights, whose BatchNorm running statistics stage 1 has set.

The probe is deterministic for a seed and identical on every rank (each runs it alone, on the whole batch, with
no communication), costs at most ``PROBE_SHARE`` of the run's steps, and leaves the student, the RNG and every
later batch as they were. A run too short to afford one step per candidate keeps ``task.lr``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import torch
import torch.nn.functional as F

from fspkd.data import BatchLoader
from fspkd.methods.base import eval_mode
from fspkd.training.build import Run
from fspkd.training.step import make_optimizer

PROBE_SHARE = 0.05  # of the run's optimiser steps
HELD_OUT_IMAGES = 512  # training images scored, never trained on by the probe
FORWARD_COST = 1 / 3  # a forward pass without backward, in optimiser-step equivalents
SEED_OFFSET = 7919  # the probe's batches are drawn apart from the run's own


@dataclasses.dataclass
class ProbeResult:
    chosen: float
    losses: dict[float, float]  # candidate rate -> held-out cross-entropy
    steps: int  # per candidate
    seconds: float


def probe_steps(config, held_out_images: int = HELD_OUT_IMAGES) -> int:
    """Steps per candidate that keep the probe (its steps and scoring) within PROBE_SHARE of the run's steps."""
    run_steps = config.task.iterations + (config.stage1.iterations if config.stage1 else 0)
    scoring = FORWARD_COST * held_out_images / config.batch_size
    return max(0, math.floor(PROBE_SHARE * run_steps / len(config.task_lr_candidates) - scoring))


def choose_task_lr(run: Run) -> ProbeResult | None:
    """Probe ``run.config.task_lr_candidates`` from the student's current (stage-1) weights; None when the run is
    too short for a probe."""
    train_set, held_out = _split(run)
    steps = probe_steps(run.config, len(held_out)) if held_out is not None else 0
    if steps < 1:
        return None
    started = time.perf_counter()
    weights, rng = copy.deepcopy(run.student.state_dict()), torch.get_rng_state()
    losses = {}
    try:
        for lr in run.config.task_lr_candidates:
            run.student.load_state_dict(weights)
            losses[lr] = _try_rate(run, lr, steps, train_set, held_out)
    finally:
        run.student.load_state_dict(weights)
        torch.set_rng_state(rng)
    chosen = min(sorted(losses), key=lambda lr: losses[lr])
    return ProbeResult(chosen, losses, steps, time.perf_counter() - started)


def _split(run: Run):
    """The probe's training images and its held-out images: a seeded draw from the training split."""
    data, config = run.splits.train, run.config
    held = min(HELD_OUT_IMAGES, len(data) // 10)
    if held < 1 or len(data) - held < config.batch_size:
        return None, None
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed + SEED_OFFSET))
    return data.subset(order[held:]), data.subset(order[:held])


def _try_rate(run: Run, lr: float, steps: int, train_set, held_out) -> float:
    """Held-out cross-entropy after ``steps`` task-stage steps at ``lr`` (the last quarter at lr / 10)."""
    config, device = run.config, run.ctx.device
    schedule = dataclasses.replace(config.task, lr=lr, iterations=steps, milestones=[math.ceil(0.75 * steps)],
                                   warmup=0)
    optimizer = make_optimizer(schedule, run.method.parameters("task"))
    batches = BatchLoader(train_set.images, train_set.labels, config.batch_size, mean=run.mean, std=run.std,
                          train=True, augment=run.augment, flip=config.flip, seed=config.seed + SEED_OFFSET,
                          channels_last=config.channels_last)
    torch.manual_seed(config.seed + SEED_OFFSET)
    run.student.train()
    for iteration, (images, labels) in zip(range(steps), batches):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(iteration)
        optimizer.zero_grad(set_to_none=True)
        loss = run.method.step("task", images.to(device), labels.to(device), iteration / max(steps - 1, 1))["loss"]
        if not torch.isfinite(loss):
            return math.inf
        loss.backward()
        optimizer.step()
    return _held_out_loss(run, held_out)


@torch.no_grad()
def _held_out_loss(run: Run, held_out) -> float:
    """Mean cross-entropy on ``held_out``, in eval mode as the network is scored. BatchNorm's running statistics
    then still mostly hold stage 1's, so a rate that moves the weights far from stage 1 in a few steps scores
    worse: the probe penalises undoing stage 1, which is what a high rate does to a student that learned much
    (docs/findings.md measures this choice against scoring on batch statistics)."""
    config, total = run.config, 0.0
    batches = BatchLoader(held_out.images, held_out.labels, config.eval_batch_size, mean=run.mean, std=run.std,
                          train=False, augment=False, channels_last=config.channels_last)
    with eval_mode(run.student):
        for images, labels in batches:
            logits = run.student(images.to(run.ctx.device)).float()
            total += float(F.cross_entropy(logits, labels.to(run.ctx.device), reduction="sum"))
    loss = total / len(held_out)
    return loss if math.isfinite(loss) else math.inf
