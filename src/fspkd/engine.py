"""The one training loop: every method and stage, evaluation, metrics, atomic checkpoints and resume.

A run's folder holds ``config.yaml``, ``metrics.csv``, ``checkpoints/last.pt`` (everything needed to resume),
``checkpoints/stage1.pt`` (the shared stage-1 weights of a two-stage method), ``final.pt`` (or ``final-K.pt``
for several students) and ``summary.json``.

Under ``torchrun`` the same loop runs on every process (see docs/distributed.md): each takes its slice of the
global batch, gradients and BatchNorm running statistics are averaged over ranks, metrics are reduced, and only
rank 0 writes. ``micro_batches`` takes each process's slice in pieces with accumulated gradients, which is
exactly what N processes with per-process BatchNorm compute.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig, Schedule, load_yaml, save_yaml
from .data import BatchLoader, load_dataset, parse_normalize
from .errors import FspkdError
from .evaluate import accuracy, ensemble_accuracy, predict
from .inference import load_network
from .methods import get_method
from .models import create
from .runlog import MetricsFile, Progress

LOG_EVERY = 20  # iterations between metrics rows (evaluations add their own rows)


class NonFiniteLoss(FspkdError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Position:
    """Where a run stands: which student (member), which stage, how many steps of it are done."""

    member: int = 0
    stage_index: int = 0
    iteration: int = 0

    def key(self):
        return (self.member, self.stage_index, self.iteration)


def train(config: RunConfig | None, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          device: str | None = None) -> dict:
    """Run ``config`` into ``out_dir`` and return its summary.

    With ``resume``, a run already in ``out_dir`` continues from its last checkpoint (``config`` must then equal
    the saved one, or be None to use it); an empty or missing ``out_dir`` starts afresh. Without ``resume`` an
    existing run is refused, and so is a non-empty folder that holds no run.
    """
    ctx = distributed.setup(device)
    try:
        summary = _train(config, Path(out_dir), resume, progress, ctx)
    except FspkdError:
        distributed.teardown(ctx)  # raised on every rank alike (input checks, any_rank): all reach the barrier
        raise
    except BaseException:
        distributed.teardown(ctx, wait=False)
        raise
    distributed.teardown(ctx)
    return summary


def _train(config: RunConfig | None, out: Path, resume: bool, progress: bool, ctx) -> dict:
    config, is_new = _prepare_out_dir(config, out, resume, ctx)
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    run = Run(config, out, ctx, progress)  # reads data and checkpoints: bad input stops here, nothing written
    try:
        if is_new:
            _start_run_folder(config, out, ctx)
        return run.execute(resume=resume and (out / "checkpoints" / "last.pt").exists())
    finally:
        run.method.close()


def _prepare_out_dir(config: RunConfig | None, out: Path, resume: bool, ctx) -> tuple[RunConfig, bool]:
    """The run's settings, and whether it is a new run, after checking what ``out`` holds."""
    saved = out / "config.yaml"
    holds_run = saved.exists()
    holds_files = out.exists() and any(out.iterdir())
    distributed.barrier(ctx)  # every rank has looked before rank 0 writes
    if holds_run:
        return _resumed_config(config, out, resume), False
    if holds_files:
        raise FspkdError(f"{out} exists, is not empty and holds no fspkd run (no config.yaml); choose another --out")
    if config is None:
        raise FspkdError(f"--resume: {out} holds no run to continue; give the run's settings to start one")
    return config.validate(), True


def _start_run_folder(config: RunConfig, out: Path, ctx) -> None:
    """``out/config.yaml`` (written whole or not at all) and ``out/checkpoints``."""
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "config.yaml.tmp"
        save_yaml(tmp, config.to_dict())
        tmp.replace(out / "config.yaml")  # a run folder either has its whole config.yaml or none
        (out / "checkpoints").mkdir(exist_ok=True)
    distributed.barrier(ctx)


def _resumed_config(config: RunConfig | None, out: Path, resume: bool) -> RunConfig:
    if not resume:
        raise FspkdError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    saved = out / "config.yaml"
    stored = RunConfig.from_dict(load_yaml(saved), where=str(saved)).validate()
    if config is not None:
        given = config.validate().to_dict()
        differing = [key for key, value in stored.to_dict().items() if value != given[key]]
        if differing:
            raise FspkdError(
                f"--resume: the settings given differ from those of the run in {out} in {', '.join(differing)}; "
                "resume with the same settings, or with none (the saved config.yaml is used)"
            )
    (out / "checkpoints").mkdir(exist_ok=True)
    return stored


def load_run_data(config: RunConfig):
    """The run's data splits; the validation split is drawn by ``config.held_out_seed``."""
    return load_dataset(config.data, val_split=config.val_split, seed=config.held_out_seed,
                        image_size=config.image_size)


def build_model(name: str, options: dict, num_classes: int) -> nn.Module:
    return create(name, num_classes=num_classes, **options)


def load_teacher(config: RunConfig, num_classes: int, device) -> nn.Module:
    """The teacher from one of our runs (folder or checkpoint) or from a foreign state dict + --teacher-model."""
    teacher, _ = load_network(Path(config.teacher), config.teacher_model, config.teacher_options, num_classes)
    return teacher.to(device)


class Run:
    """One configured run: data, models and method built once; ``execute`` walks members and stages."""

    def __init__(self, config: RunConfig, out: Path, ctx, progress: bool):
        self.config, self.out, self.ctx = config, out, ctx
        self.show_progress = progress and ctx.is_main
        torch.manual_seed(config.seed)
        self.splits = load_run_data(config)
        self.mean, self.std = parse_normalize(config.normalize, self.splits)
        self.augment = self.splits.default_augment if config.augment is None else config.augment
        self.student = build_model(config.model, config.model_options, self.splits.num_classes).to(ctx.device)
        self._load_init()
        if ctx.distributed and ctx.device.type == "cuda" and config.sync_bn:  # gloo has no SyncBatchNorm
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        if config.precision == "fp16" and ctx.device.type != "cuda":
            raise FspkdError(f"precision fp16 needs a CUDA device (gradient scaling), not {ctx.device}; "
                             "use bf16 on CPU")
        local_batch = config.batch_size // ctx.world_size
        if config.batch_size % ctx.world_size or local_batch % config.micro_batches:
            raise FspkdError(
                f"batch_size {config.batch_size} must split evenly over {ctx.world_size} processes and then into "
                f"micro_batches {config.micro_batches}"
            )
        if config.channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        teacher = load_teacher(config, self.splits.num_classes, ctx.device) if config.teacher else None
        self.method = get_method(config.method)(self.student, teacher, config)
        self.method.check(self._example_batch())
        self.metrics = MetricsFile(out / "metrics.csv")
        self.wall = 0.0
        self.stage_stats: dict[str, dict] = {}

    def _example_batch(self) -> torch.Tensor:
        loader = self._loader(seed=self.config.seed, train=False)
        return next(iter(loader))[0].to(self.ctx.device)

    def _loader(self, seed: int, train: bool = True) -> BatchLoader:
        data = self.splits.train
        return BatchLoader(
            data.images, data.labels, self.config.batch_size, mean=self.mean, std=self.std, train=train,
            augment=self.augment and train, flip=self.config.flip, seed=seed, rank=self.ctx.rank,
            world_size=self.ctx.world_size, channels_last=self.config.channels_last,
        )

    # -- the walk over members and stages ------------------------------------------------------------------
    def execute(self, resume: bool) -> dict:
        stages = self.method.stages
        shared, final_stage = stages[:-1], stages[-1]
        start, saved = (self._restore() if resume else (Position(), None))
        if not resume and self.ctx.is_main:
            self.metrics.truncate_after(lambda row: False)
        members = []
        for member in range(self.config.students):
            if member < start.member:  # finished before the interruption
                self.student.load_state_dict(load_checkpoint(self.out / self._final_name(member))["model"])
                members.append(self._evaluate_member(member))
                continue
            plan = list(shared) + [final_stage] if member == 0 else [final_stage]
            for stage in plan:
                index = stages.index(stage)
                if (member, index) < (start.member, start.stage_index):
                    continue
                if saved is not None and (member, index) == (start.member, start.stage_index):
                    self._train_stage(member, stage, start.iteration, saved)
                else:
                    self._begin_member(member, stage)
                    self._train_stage(member, stage, 0, None)
                if stage != final_stage and self.ctx.is_main:
                    save_checkpoint(self.out / "checkpoints" / f"{stage}.pt", self._weights_payload())
                distributed.barrier(self.ctx)
            self._save_final(member)
            members.append(self._evaluate_member(member))
        return self._write_summary(members)

    def _begin_member(self, member: int, stage: str) -> None:
        """A later student starts from the shared stage-1 weights (or, single-stage, from a fresh init)."""
        if member == 0:
            return
        if stage == self.method.stages[0]:  # single-stage method: a fresh, differently seeded network
            torch.manual_seed(self.config.seed + member)
            fresh = build_model(self.config.model, self.config.model_options, self.splits.num_classes)
            self.student.load_state_dict(fresh.state_dict())
            self._load_init()
        else:
            stage1 = load_checkpoint(self.out / "checkpoints" / f"{self.method.stages[0]}.pt")
            self.student.load_state_dict(stage1["model"])

    def _load_init(self) -> None:
        """Start the student from ``config.init`` (e.g. an FSP ``checkpoints/stage1.pt``) instead of a fresh init."""
        if self.config.init:
            self.student.load_state_dict(load_checkpoint(self.config.init)["model"])

    # -- one stage ------------------------------------------------------------------------------------------
    def _train_stage(self, member: int, stage: str, start_iteration: int, saved: dict | None) -> None:
        schedule = self.method.schedule(stage)
        stage_index = self.method.stages.index(stage)
        self.student.train()
        optimizer = make_optimizer(schedule, self.method.parameters(stage))
        loader = self._loader(seed=self.config.seed + 1000 * member + stage_index)
        if saved is not None:
            optimizer.load_state_dict(saved["optimizer"])
            loader.load_state_dict(saved["loader"])
            torch.set_rng_state(saved["rng"])
        self.method.bind_loader(stage, loader)
        self._wrap_student(stage)
        scaler = torch.amp.GradScaler(enabled=self.config.precision == "fp16" and self.ctx.device.type == "cuda")
        batches = iter(loader)
        label = stage if self.config.students == 1 else f"student {member + 1} {stage}"
        bar = Progress(schedule.iterations, label, initial=start_iteration, enabled=self.show_progress)
        stats = self.stage_stats.setdefault(stage, {"iterations": 0, "wall_s": 0.0})
        for iteration in range(start_iteration, schedule.iterations):
            started = time.perf_counter()
            lr = schedule.lr_at(iteration)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = next(batches)
            images, labels = images.to(self.ctx.device, non_blocking=True), labels.to(self.ctx.device)
            optimizer.zero_grad(set_to_none=True)
            output = self._forward_backward(stage, iteration, images, labels, schedule, scaler)
            done = iteration + 1
            is_eval = done % self.config.eval_every == 0 or done == schedule.iterations
            is_logged = done % LOG_EVERY == 0 or is_eval
            if schedule.clip_grad or is_logged:
                scaler.unscale_(optimizer)
                output["grad_norm"] = self._grad_norm(stage, schedule.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            elapsed = time.perf_counter() - started
            self.wall += elapsed
            stats["iterations"] += 1
            stats["wall_s"] += elapsed
            bar.update(done, float(output["loss"].detach()), lr)
            position = Position(member, stage_index, done)
            if is_logged:
                row = self._log(position, stage, lr, output, labels, evaluate=is_eval)
                if row.get("val_acc") is not None:
                    bar.message(f"{label} iteration {done}: val_acc {row['val_acc']:.2f}")
            if is_eval:
                self._checkpoint(position, optimizer, loader)
        bar.close()
        self.method.student_forward = self.student

    def _grad_norm(self, stage: str, clip: float) -> torch.Tensor:
        """The gradients' total L2 norm before clipping, clipped to ``clip`` when it is set."""
        params = [p for p in self.method.parameters(stage) if p.grad is not None]
        if clip:
            return nn.utils.clip_grad_norm_(params, clip)
        return nn.utils.get_total_norm([p.grad for p in params])

    def _forward_backward(self, stage: str, iteration: int, images, labels, schedule: Schedule, scaler) -> dict:
        """Loss and averaged gradients of this rank's share of one global batch, taken in
        ``config.micro_batches`` pieces whose gradients accumulate; returns the pieces' mean loss and parts."""
        pieces = self.config.micro_batches
        progress = iteration / max(schedule.iterations - 1, 1)
        outputs = []
        statistics = RunningStatsMean(self.student) if pieces > 1 else None  # one piece: nothing to average
        for index, (x, y) in enumerate(zip(images.chunk(pieces), labels.chunk(pieces))):
            if statistics:
                statistics.restore()
            with self._no_sync(last=index == pieces - 1), self._autocast():
                output = self.method.step(stage, x, y, progress)
            if statistics:
                statistics.add()
            self._check_finite(output, stage, iteration)
            scaler.scale(output["loss"] / pieces).backward()
            outputs.append(output)
        if statistics:
            statistics.finish()
        self._average_gradients(stage)
        distributed.average_float_buffers(self.student, self.ctx)
        return _mean_output(outputs)

    def _no_sync(self, last: bool):
        """DDP averages gradients once, on the backward pass of the last piece."""
        wrapped = self.method.student_forward
        if last or not isinstance(wrapped, DistributedDataParallel):
            return contextlib.nullcontext()
        return wrapped.no_sync()

    def _autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.ctx.device.type, dtype=dtype)

    def _wrap_student(self, stage: str) -> None:
        """DDP-wrap the student where the loss flows through its output; a feature stage (FSP / hint training)
        leaves its head without gradients, so its gradients are averaged by ``_average_gradients`` instead."""
        if not self.ctx.distributed or stage in self.method.feature_stages:
            self.method.student_forward = self.student
            return
        # buffers are averaged after each step (see RunningStatsMean), not broadcast from rank 0
        self.method.student_forward = DistributedDataParallel(self.student, forward_sync_buffers=False)

    def _average_gradients(self, stage: str) -> None:
        """Average over ranks the gradients DDP does not: extra modules (FitNet's regressors) and an unwrapped
        student."""
        if not self.ctx.distributed:
            return
        modules = list(self.method.extra_modules(stage).values())
        if not isinstance(self.method.student_forward, DistributedDataParallel):
            modules.append(self.student)
        distributed.average_gradients([p for m in modules for p in m.parameters()], self.ctx)

    def _check_finite(self, output: dict, stage: str, iteration: int) -> None:
        finite = bool(torch.isfinite(output["loss"].detach()).all())
        if not distributed.any_rank(not finite, self.ctx):
            return
        bad = [name for name, v in output["parts"].items() if not torch.isfinite(v.detach()).all()]
        last = self.out / "checkpoints" / "last.pt"
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
        raise NonFiniteLoss(
            f"non-finite loss at iteration {iteration + 1} of {stage} (term {', '.join(bad) or 'loss'}: "
            f"{float(output['loss'].detach())}); {kept}. Lower the learning rate (or fsp_lambda), or add "
            "warm-up / gradient clipping"
        )

    # -- metrics, evaluation, checkpoints -------------------------------------------------------------------
    def _log(self, position: Position, stage: str, lr: float, output: dict, labels, evaluate: bool) -> dict:
        """Append one metrics row (means over ranks), with validation / test accuracy when ``evaluate``."""
        row = self._train_row(position, stage, lr, output, labels)
        if evaluate and output["logits"] is not None:  # a stage-1 student's head is untrained
            row.update(self._evaluate_row())
        if self.ctx.is_main:  # written before the checkpoint: a resume from that checkpoint never lacks it
            self.metrics.append(row)
        return row

    def _train_row(self, position: Position, stage: str, lr: float, output: dict, labels) -> dict:
        values = {name: float(v.detach()) for name, v in output["parts"].items()}
        values["loss"] = float(output["loss"].detach())
        names = sorted(values)
        reduced = distributed.mean_over_ranks(torch.tensor([values[n] for n in names], device=self.ctx.device),
                                              self.ctx).tolist()
        row = dict(zip(names, reduced))
        if output["logits"] is not None:
            hits = (output["logits"].detach().argmax(1) == labels).float().mean()
            row["train_acc"] = 100.0 * float(distributed.mean_over_ranks(hits, self.ctx))
        if "grad_norm" in output:
            row["grad_norm"] = float(output["grad_norm"])
        row.update(member=position.member, stage=stage, iteration=position.iteration, wall_s=self.wall, lr=lr)
        return row

    def _evaluate_row(self) -> dict:
        return {f"{split}_acc": acc for split, (acc, _, _) in self._held_out_predictions().items()}

    def _held_out_predictions(self) -> dict[str, tuple[float, torch.Tensor, torch.Tensor]]:
        """Accuracy, softmax probabilities and labels of the student on each held-out split ('val', 'test')."""
        results = {}
        for split, images in (("val", self.splits.val), ("test", self.splits.test)):
            if images is not None:
                probs, labels = predict(self.student, images, self.mean, self.std, ctx=self.ctx,
                                        batch_size=self.config.eval_batch_size,
                                        channels_last=self.config.channels_last)
                results[split] = (accuracy(probs, labels, self.ctx), probs, labels)
        return results

    def _weights_payload(self) -> dict:
        return {
            "model": self.student.state_dict(),
            "model_name": self.config.model,
            "model_options": dict(self.config.model_options),
            "num_classes": self.splits.num_classes,
            "classes": list(self.splits.classes),
            "mean": list(map(float, self.mean)),
            "std": list(map(float, self.std)),
        }

    def _checkpoint(self, position: Position, optimizer, loader) -> None:
        if not self.ctx.is_main:
            return
        stage = self.method.stages[position.stage_index]
        payload = self._weights_payload()
        payload.update(
            position=[position.member, position.stage_index, position.iteration],
            optimizer=optimizer.state_dict(),
            loader=loader.state_dict(),
            rng=torch.get_rng_state(),
            wall=self.wall,
            stage_stats=self.stage_stats,
            extra={name: m.state_dict() for name, m in self.method.extra_modules(stage).items()},
        )
        save_checkpoint(self.out / "checkpoints" / "last.pt", payload)

    def _restore(self) -> tuple[Position, dict]:
        saved = load_checkpoint(self.out / "checkpoints" / "last.pt")
        position = Position(*saved["position"])
        self.student.load_state_dict(saved["model"])
        stage = self.method.stages[position.stage_index]
        for name, module in self.method.extra_modules(stage).items():
            module.load_state_dict(saved["extra"][name])
        self.wall = saved["wall"]
        self.stage_stats = saved["stage_stats"]
        stages = self.method.stages
        if self.ctx.is_main:
            self.metrics.truncate_after(
                lambda row: (int(row["member"]), stages.index(row["stage"]), int(row["iteration"]))
                <= position.key()
            )
        if position.iteration >= self.method.schedule(stage).iterations:  # the stage was complete
            if stage != stages[-1] and self.ctx.is_main:
                save_checkpoint(self.out / "checkpoints" / f"{stage}.pt", self._weights_payload())
            if stage == stages[-1]:
                self._save_final(position.member)
            position = self._next_position(position)
            saved = None
        return position, saved

    def _next_position(self, position: Position) -> Position:
        last_stage = len(self.method.stages) - 1
        if position.stage_index < last_stage:
            return Position(position.member, position.stage_index + 1, 0)
        return Position(position.member + 1, last_stage, 0)

    def _final_name(self, member: int) -> str:
        return "final.pt" if self.config.students == 1 else f"final-{member + 1}.pt"

    def _save_final(self, member: int) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.out / self._final_name(member), self._weights_payload())

    def _evaluate_member(self, member: int) -> dict:
        result = {"weights": self._final_name(member)}
        for split, (acc, probs, labels) in self._held_out_predictions().items():
            result[f"{split}_acc"], result[f"{split}_probs"], result[f"{split}_labels"] = acc, probs, labels
        return result

    def _write_summary(self, members: list[dict]) -> dict:
        summary = {
            "method": self.config.method,
            "model": self.config.model,
            "teacher": self.config.teacher,
            "data": self.config.data,
            "num_classes": self.splits.num_classes,
            "students": self.config.students,
        }
        for key in ("val", "test"):
            accs = [m[f"{key}_acc"] for m in members if f"{key}_acc" in m]
            summary[f"{key}_acc"] = sum(accs) / len(accs) if accs else None
            if len(members) > 1 and accs:
                summary[f"ensemble_{key}_acc"] = ensemble_accuracy(
                    [m[f"{key}_probs"] for m in members], members[0][f"{key}_labels"], self.ctx
                )
        summary["members"] = [
            {k: v for k, v in m.items() if not k.endswith(("_probs", "_labels"))} for m in members
        ]
        summary["stages"] = {
            name: {**s, "s_per_100_it": 100 * s["wall_s"] / max(s["iterations"], 1)}
            for name, s in self.stage_stats.items()
        }
        summary["total_iterations"] = sum(s["iterations"] for s in self.stage_stats.values())
        summary["total_wall_s"] = self.wall
        if self.ctx.is_main:
            tmp = self.out / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2))
            tmp.replace(self.out / "summary.json")
        return summary


def make_optimizer(schedule: Schedule, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if schedule.optimizer == "adam":
        return torch.optim.Adam(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    return torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)


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
