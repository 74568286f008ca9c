"""A run's records: metrics rows, evaluations, checkpoints and the summary, all written by rank 0 only.

A run folder holds ``config.yaml``, ``metrics.csv``, ``checkpoints/last.pt`` (everything needed to resume),
``checkpoints/stage1.pt`` (the shared stage-1 weights of a two-stage method), ``final.pt`` (``final-K.pt`` for
several students), each final network's softmax outputs on the held-out splits (``final[-K]-predictions.safetensors``,
single-process runs only, so that ensembles across runs need no second evaluation) and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from fspkd.core.atomic import atomic_write, write_text_atomic
from fspkd.core.checkpoint import save_checkpoint
from fspkd.data import ImageSet, Splits
from fspkd.training import distributed
from fspkd.training.build import Run
from fspkd.training.evaluate import accuracy, disagreement, ensemble_accuracy, predict
from fspkd.training.loggers import open_tracker
from fspkd.training.runlog import MetricsFile

PROBE_NOTE = "# task.lr chosen by the probe over task_lr_candidates:"
CADENCE_SEED = 0  # draws the held-out subset of the evaluations between a stage's ends
CADENCE_SUBSET = "seeded draw"  # summary.json says how that subset was taken (earlier runs: the first images)


@dataclass(frozen=True, order=True)
class Position:
    """Where a run stands: which student, which stage (index into the method's stages), how many steps done."""

    student: int = 0
    stage_index: int = 0
    iteration: int = 0


def weights_payload(model: nn.Module, model_name: str, model_options: dict, splits: Splits, mean, std) -> dict:
    """A checkpoint of a network's weights with what is needed to rebuild and feed it (``fspkd eval`` reads it)."""
    return {
        "model": model.state_dict(),
        "model_name": model_name,
        "model_options": dict(model_options),
        "num_classes": splits.num_classes,
        "classes": list(splits.classes),
        "mean": list(map(float, mean)),
        "std": list(map(float, std)),
    }


class Records:
    """The metrics, checkpoints, evaluations and summary of ``run`` in ``out``."""

    def __init__(self, run: Run, out: Path, on_metrics: Callable[[dict], None] | None = None):
        self.run, self.out = run, out
        self.metrics = MetricsFile(out / "metrics.csv")
        self.tracker = open_tracker(run.config, out) if run.ctx.is_main else None  # --log tensorboard | wandb
        self.on_metrics = on_metrics  # the Python API's copy of each row (fspkd.train(..., on_metrics=))
        self.wall = 0.0  # seconds of optimiser steps, over all stages and students
        self.stage_stats: dict[str, dict] = {}
        self.since_row = [0, 0.0]  # steps and seconds since the last metrics row: its images per second
        self.final_predictions: dict | None = None  # whole-split predictions of the last evaluated step
        self.cadence_subsets: dict[tuple[str, int], ImageSet] = {}  # (split, limit) -> its drawn images

    # -- metrics rows ---------------------------------------------------------------------------------------
    def _stats(self, stage: str) -> dict:
        return self.stage_stats.setdefault(stage, {"iterations": 0, "wall_s": 0.0, "eval_s": 0.0})

    def add_step(self, stage: str, seconds: float) -> None:
        self.wall += seconds
        stats = self._stats(stage)
        stats["iterations"] += 1
        stats["wall_s"] += seconds
        self.since_row[0] += 1
        self.since_row[1] += seconds

    def add_setup(self, stage: str, seconds: float) -> None:
        """Seconds a stage spent before its first step (building or reading stored teacher FSP): training wall
        time, kept beside the stage's step time as ``setup_s``."""
        self.wall += seconds
        stats = self._stats(stage)
        stats["setup_s"] = stats.get("setup_s", 0.0) + seconds

    def log(self, position: Position, stage: str, output: dict, labels, evaluate: bool, whole: bool = False) -> dict:
        """Append one metrics row (means over ranks), with validation / test accuracy when ``evaluate``: on the
        ``eval_images`` subset, or with ``whole`` (a stage's last step) on the whole splits, so that a curve ends
        on the run's result."""
        row = self._train_row(position, stage, output, labels)
        if evaluate and output["logits"] is not None:  # a stage-1 student's head is untrained
            row.update(self._cadence_evaluation(stage, 0 if whole else self.run.config.eval_images))
        self._write(row)  # before the checkpoint: a resume from that checkpoint never lacks it
        return row

    def _cadence_evaluation(self, stage: str, limit: int) -> dict:
        """Accuracies on ``limit`` drawn images of each held-out split (``eval_images``: how many a split gave at
        most), its seconds added to the stage's ``eval_s``; ``wall`` (optimiser steps) is left as is,
        so time to accuracy does not count the evaluations."""
        started = time.perf_counter()
        results = self.held_out_predictions(limit)
        self.final_predictions = results if limit == 0 else None  # the student's final evaluation reuses these
        stats = self.stage_stats[stage]  # add_step made it
        stats["eval_s"] = stats.get("eval_s", 0.0) + time.perf_counter() - started
        row = {f"{split}_acc": acc for split, (acc, _, _) in results.items()}
        if results:  # the images of the whole splits, not of this rank's share
            row["eval_images"] = max(len(self._held_out(split, limit)) for split in results)
        return row

    def _write(self, row: dict) -> None:
        """One metrics row to ``metrics.csv``, the tracker and the API's callback (rank 0 only)."""
        if self.run.ctx.is_main:
            self.metrics.append(row)
            if self.tracker:
                self.tracker.log(row)
            if self.on_metrics:
                self.on_metrics(dict(row))

    def _train_row(self, position: Position, stage: str, output: dict, labels) -> dict:
        ctx = self.run.ctx
        values = {name: float(v.detach()) for name, v in output["parts"].items()}
        values["loss"] = float(output["loss"].detach())
        names = sorted(values)
        totals = distributed.sum_over_ranks(torch.tensor([values[n] for n in names], device=ctx.device), ctx)
        row = dict(zip(names, (totals / ctx.world_size).tolist()))
        if output["logits"] is not None:
            hits = (output["logits"].detach().argmax(1) == labels).float().mean()
            row["train_acc"] = 100.0 * float(distributed.sum_over_ranks(hits, ctx)) / ctx.world_size
        if "grad_norm" in output:
            row["grad_norm"] = float(output["grad_norm"])
        row.update(student=position.student, stage=stage, iteration=position.iteration, wall_s=self.wall,
                   lr=output["lr"])
        steps, seconds = self.since_row
        if seconds > 0:
            row["images_per_s"] = steps * self.run.config.batch_size / seconds
        self.since_row = [0, 0.0]
        return row

    def log_probe(self, probe) -> None:
        """Take the probed task-stage lr (None: the run was too short to probe; task.lr stands) and record it: one
        metrics row per candidate (task stage, iteration 0, ``probe_loss``), its time in the ``lr_probe`` stage
        and a closing comment in ``config.yaml``."""
        if probe is None:
            return
        self.run.method.task_lr = probe.chosen
        self.wall += probe.seconds
        self.stage_stats["lr_probe"] = {"iterations": probe.steps * len(probe.losses), "wall_s": probe.seconds}
        if not self.run.ctx.is_main:
            return
        for lr, loss in probe.losses.items():
            self._write({"student": 0, "stage": "task", "iteration": 0, "wall_s": self.wall, "lr": lr,
                         "probe_loss": loss})
        config = self.out / "config.yaml"
        settings = "".join(line for line in config.read_text().splitlines(keepends=True)
                           if not line.startswith(PROBE_NOTE))
        losses = ", ".join(f"{lr:g}: {loss:.4f}" for lr, loss in probe.losses.items())
        write_text_atomic(config, f"{settings}{PROBE_NOTE} {probe.chosen:g} (held-out loss after {probe.steps} "
                                  f"steps per rate: {losses})\n", "the run settings")

    def forget_after(self, position: Position | None) -> None:
        """Drop the metrics rows past ``position`` (all of them for None): they are trained again."""
        if self.run.ctx.is_main:
            stages = self.run.method.stages
            self.metrics.truncate_after(lambda row: position is not None and Position(
                int(row["student"]), stages.index(row["stage"]), int(row["iteration"])) <= position)

    # -- evaluation -----------------------------------------------------------------------------------------
    def held_out_predictions(self, limit: int = 0) -> dict[str, tuple[float, torch.Tensor, torch.Tensor]]:
        """Accuracy, softmax probabilities and labels of the student on each held-out split ('val', 'test'), on
        ``limit`` of its images, drawn once (0: all of them)."""
        run, results = self.run, {}
        for split in ("val", "test"):
            if (images := self._held_out(split, limit)) is not None:
                probs, labels = predict(run.student, images, run.mean, run.std, ctx=run.ctx,
                                        batch_size=run.config.eval_batch_size, channels_last=run.config.channels_last)
                results[split] = (accuracy(probs, labels, run.ctx), probs, labels)
        return results

    def _held_out(self, split: str, limit: int) -> ImageSet | None:
        """``limit`` images of the split (all for 0), drawn with a fixed seed: the same subset at every evaluation
        and in every run on the same split. A draw, not the split's first images: a split keeps its source's
        order, which may be sorted by class (an image tree), and its first images would be one or two classes."""
        images = getattr(self.run.splits, split)
        if images is None or not 0 < limit < len(images):
            return images
        if (split, limit) not in self.cadence_subsets:
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(CADENCE_SEED))
            self.cadence_subsets[split, limit] = images.subset(order[:limit])
        return self.cadence_subsets[split, limit]

    def evaluate_student(self, student: int) -> dict:
        """The student's final accuracies on the whole splits: those of its task stage's last step when that was
        just evaluated (same weights), else measured now (a run resumed after its last step)."""
        result = {"weights": self.final_name(student)}
        predictions, self.final_predictions = self.final_predictions or self.held_out_predictions(), None
        for split, (acc, probs, labels) in predictions.items():
            result[f"{split}_acc"], result[f"{split}_probs"], result[f"{split}_labels"] = acc, probs, labels
        if predictions and self.run.ctx.world_size == 1:  # a DDP rank holds only its share of each split
            result["predictions"] = self.save_predictions(result["weights"], predictions)
        return result

    def save_predictions(self, weights: str, predictions: dict) -> str:
        """The final network's probabilities and labels per held-out split, as ``<weights>-predictions.safetensors``
        beside its weights; returns the file's name."""
        name = f"{Path(weights).stem}-predictions.safetensors"
        tensors = {}
        for split, (_, probs, labels) in predictions.items():
            tensors[f"{split}_probs"], tensors[f"{split}_labels"] = probs.float().contiguous(), labels.contiguous()
        atomic_write(self.out / name, lambda path: save_file(tensors, str(path)), "the held-out predictions")
        return name

    # -- checkpoints ----------------------------------------------------------------------------------------
    def payload(self) -> dict:
        run = self.run
        return weights_payload(run.student, run.config.model, run.config.model_options, run.splits, run.mean, run.std)

    def save_weights(self, name: str) -> None:
        """The student's weights as ``out/name`` (``final.pt``, ``checkpoints/stage1.pt``)."""
        if self.run.ctx.is_main:
            save_checkpoint(self.out / name, self.payload())
        distributed.barrier(self.run.ctx)

    def final_name(self, student: int) -> str:
        return "final.pt" if self.run.config.students == 1 else f"final-{student + 1}.pt"

    def save_state(self, position: Position, stage: str, optimizer, loader) -> None:
        """``checkpoints/last.pt``: everything needed to continue from ``position``."""
        if not self.run.ctx.is_main:
            return
        payload = self.payload()
        payload.update(
            position=[position.student, position.stage_index, position.iteration],
            optimizer=optimizer.state_dict(),
            loader=loader.state_dict(),
            rng=torch.get_rng_state(),
            wall=self.wall,
            stage_stats=self.stage_stats,
            extra={name: m.state_dict() for name, m in self.run.method.extra_modules(stage).items()},
            task_lr=self.run.method.task_lr,
            stored_fsp=self.run.method.uses_stored_fsp,
        )
        save_checkpoint(self.last_state, payload)

    @property
    def last_state(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    # -- summary --------------------------------------------------------------------------------------------
    def write_summary(self, students: list[dict]) -> dict:
        if self.tracker:
            self.tracker.close()
        config = self.run.config
        summary = {"method": config.method, "model": config.model, "teacher": config.teacher, "data": config.data,
                   "num_classes": self.run.splits.num_classes, "students": config.students}
        for key in ("val", "test"):
            accs = [s[f"{key}_acc"] for s in students if f"{key}_acc" in s]
            summary[f"{key}_acc"] = sum(accs) / len(accs) if accs else None
            if len(students) > 1 and accs:
                probs = [s[f"{key}_probs"] for s in students]
                summary[f"ensemble_{key}_acc"] = ensemble_accuracy(probs, students[0][f"{key}_labels"], self.run.ctx)
                summary[f"ensemble_{key}_disagreement"] = disagreement(probs, self.run.ctx)
        summary["per_student"] = [{k: v for k, v in s.items() if not k.endswith(("_probs", "_labels"))}
                                  for s in students]
        summary["stages"] = {name: {**s, "s_per_100_it": 100 * s["wall_s"] / max(s["iterations"], 1)}
                             for name, s in self.stage_stats.items()}
        summary["task_lr"] = self.run.method.schedule("task").lr
        if self.run.method.uses_stored_fsp is not None:  # FSP: stage 1 read stored teacher FSP (or ran it live)
            summary["stored_fsp"] = self.run.method.uses_stored_fsp
        summary["total_iterations"] = sum(s["iterations"] for s in self.stage_stats.values())
        summary["total_wall_s"] = self.wall
        summary["eval_wall_s"] = sum(s.get("eval_s", 0.0) for s in self.stage_stats.values())
        summary["cadence_subset"] = CADENCE_SUBSET
        if self.run.ctx.is_main:
            write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2))
        return summary
