"""``train``: one run from its settings to its summary, in one order that loses nothing on bad input.

1. the settings are resolved and validated (``fspkd.resolve_config``);
2. the run folder is claimed atomically (a new run), or the run in it is checked against the settings (resume);
3. the data, models and method are built and tried on one batch (``fspkd.training.build``); a failure releases
   the claim and leaves nothing behind;
4. ``config.yaml`` is written whole, and the students and stages are trained (``fspkd.training.walk``).

Under ``torchrun`` the same function runs on every process (docs/distributed.md); only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fspkd.core.atomic import remove_stale_temporaries, write_failure, write_text_atomic
from fspkd.core.config import RunConfig, load_yaml
from fspkd.core.errors import FspkdError, TrainingError
from fspkd.core.settings import resolve_config
from fspkd.training import distributed
from fspkd.training.build import build_run
from fspkd.training.records import Records
from fspkd.training.step import NonFiniteLoss
from fspkd.training.walk import walk

CLAIM = ".fspkd-claim"  # present while a new run is being set up in a folder

__all__ = ["NonFiniteLoss", "train"]


def train(config: RunConfig | Mapping[str, Any] | None, out_dir: str | Path, *, resume: bool = False,
          progress: bool = True, device: str | None = None,
          on_metrics: Callable[[dict], None] | None = None) -> dict:
    """Run ``config`` into ``out_dir`` and return its summary.

    ``config`` is a RunConfig (taken as it is, validated) or a mapping of the settings a user names (resolved by
    ``fspkd.resolve_config``). With ``resume``, a run already in ``out_dir`` continues from its last checkpoint
    (``config`` must then equal the saved one, or be None to use it); an empty or missing ``out_dir`` starts
    afresh. Without ``resume`` an existing run is refused, and so is a non-empty folder that holds no run.
    ``on_metrics`` gets a copy of each ``metrics.csv`` row as it is written (losses by name, lr, accuracies,
    images per second), as ``--log`` trackers do.
    """
    ctx = distributed.setup(device)
    try:
        summary = _train(config, Path(out_dir), resume, progress, ctx, on_metrics)
    except FspkdError as err:
        # set-up checks fail on every rank alike and all reach the barrier; an error in training may be this
        # rank's alone (only rank 0 writes), so it leaves at once and torchrun then stops the others
        distributed.teardown(ctx, wait=not isinstance(err, TrainingError))
        raise
    except BaseException:
        distributed.teardown(ctx, wait=False)
        raise
    distributed.teardown(ctx)
    return summary



def _train(config, out: Path, resume: bool, progress: bool, ctx, on_metrics) -> dict:
    if isinstance(config, Mapping):
        config = resolve_config(config)
    elif config is not None:
        config = config.validate()
    config, claim = _claim(config, out, resume, ctx)
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    try:
        run = build_run(config, ctx)  # reads data and checkpoints: bad input stops here
        try:  # the training batches too (build_run tries evaluation batches): a batch larger than the data, and
            run.method.check_loader(run.loader(seed=config.seed))  # what the method does with them (FSP's store)
        except BaseException:
            run.method.close()
            raise
    except BaseException:
        if claim is not None:
            _release(out, claim, ctx)
        raise
    try:
        if claim is not None:
            try:
                _start(config, out, ctx)
            except BaseException:  # config.yaml could not be written (a read-only or full disk)
                _release(out, claim, ctx)
                raise
        return walk(run, Records(run, out, on_metrics), resume and (out / "checkpoints" / "last.pt").exists(), progress)
    except FspkdError as err:
        if isinstance(err, TrainingError):
            raise
        raise TrainingError(str(err)) from err
    finally:
        run.method.close()


def _claim(config: RunConfig | None, out: Path, resume: bool, ctx) -> tuple[RunConfig, bool | None]:
    """The run's settings after checking ``out``, and for a new run its claim on ``out`` (whether the folder was
    created for it); None when continuing the run already there."""
    holds_run = (out / "config.yaml").exists()
    holds_files = out.exists() and any(out.iterdir())
    distributed.barrier(ctx)  # every rank has looked before rank 0 writes
    if holds_run:
        return _resumed_config(config, out, resume, ctx), None
    if config is None:
        raise FspkdError(f"--resume: {out} holds no run to continue; give the run's settings to start one")
    if holds_files:
        if (out / CLAIM).exists():
            raise FspkdError(f"{out} is being set up by another fspkd run ({out / CLAIM}); if none is running, "
                             "delete that file")
        raise FspkdError(f"{out} exists, is not empty and holds no fspkd run (no config.yaml); choose another --out")
    failed, created = "", not out.exists()
    if ctx.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            os.close(os.open(out / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            failed = f"{out} is being set up by another fspkd run ({out / CLAIM})"
        except OSError as err:
            failed = f"cannot create the run folder {out}: {err}"
    if distributed.any_rank(bool(failed), ctx):
        raise FspkdError(failed or f"rank 0 could not claim {out}")
    return config, created


def _release(out: Path, created: bool, ctx) -> None:
    """Undo ``_claim`` (and ``_start``): the claim file and an empty checkpoints folder go, and the folder too if
    the claim created it."""
    if ctx.is_main:
        checkpoints = out / "checkpoints"
        if checkpoints.is_dir() and not any(checkpoints.iterdir()):
            checkpoints.rmdir()
        (out / CLAIM).unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()


def _start(config: RunConfig, out: Path, ctx) -> None:
    """``out/config.yaml`` (written whole or not at all) and ``out/checkpoints``; the claim is done with."""
    if ctx.is_main:
        _make_checkpoints_folder(out)
        write_text_atomic(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False), "the run settings")
        (out / CLAIM).unlink()
    distributed.barrier(ctx)


def _resumed_config(config: RunConfig | None, out: Path, resume: bool, ctx) -> RunConfig:
    if not resume:
        raise FspkdError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    saved = out / "config.yaml"
    stored = RunConfig.from_dict(load_yaml(saved), where=str(saved)).validate()
    if config is not None:
        # a saved choice stands against auto (a run saved before auto was the default says true or false)
        given = {**config.to_dict(), **({"stored_fsp": stored.stored_fsp} if config.stored_fsp == "auto" else {})}
        differing = [key for key, value in _lrs_aside(stored.to_dict()).items() if value != _lrs_aside(given)[key]]
        if differing:
            raise FspkdError(
                f"--resume: the settings given differ from those of the run in {out} in {', '.join(differing)}; "
                "resume with the same settings (learning rates may change), or with none (the saved config.yaml "
                "is used)"
            )
        stored = _with_new_lrs(stored, config, saved, ctx)
    _make_checkpoints_folder(out)
    for folder in (out, out / "checkpoints"):  # files torn by a kill -9 mid-write; a live writer's stay
        remove_stale_temporaries(folder)
    return stored


def _make_checkpoints_folder(out: Path) -> None:
    try:
        (out / "checkpoints").mkdir(exist_ok=True)
    except OSError as err:
        raise FspkdError(f"{out / 'checkpoints'}: cannot create the checkpoints folder "
                         f"({write_failure(err, out)})") from None


def _lrs_aside(settings: dict) -> dict:
    """Settings with the learning rates set aside: a run may resume at other rates (a lower one after a
    divergence). A changed task lr turns the lr probe off, as a task lr named at the start does."""
    settings = {**settings, "task_lr_candidates": None}
    for stage in ("task", "stage1"):
        if settings.get(stage):
            settings[stage] = {**settings[stage], "lr": None}
    return settings


def _with_new_lrs(stored: RunConfig, given: RunConfig, saved: Path, ctx) -> RunConfig:
    """``stored`` with ``given``'s learning rates, written to ``saved`` with a line saying what changed."""
    changes = [f"{stage}.lr {getattr(stored, stage).lr:g} -> {getattr(given, stage).lr:g}"
               for stage in ("task", "stage1") if getattr(stored, stage) and getattr(stored, stage).lr
               != getattr(given, stage).lr]
    if not changes:
        return stored
    probe_off = [] if any(c.startswith("task.") for c in changes) else stored.task_lr_candidates
    changed = dataclasses.replace(stored, task=given.task, stage1=given.stage1, task_lr_candidates=probe_off)
    if ctx.is_main:
        notes = "".join(line for line in saved.read_text().splitlines(keepends=True) if line.startswith("#"))
        write_text_atomic(saved, yaml.safe_dump(changed.to_dict(), sort_keys=False) + notes
                          + f"# resumed with {', '.join(changes)}\n", "the run settings")
    return changed
