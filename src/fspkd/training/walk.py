"""The walk over a run's students and stages, from the start or from its last checkpoint.

The first student runs every stage of the method; further students (an ensemble) start from the shared stage-1
weights, or from a fresh initialisation for one-stage methods, and run the last stage only.
"""

from __future__ import annotations

import time

import torch

from fspkd.core.checkpoint import load_checkpoint
from fspkd.training.build import Run
from fspkd.training.lr_probe import choose_task_lr
from fspkd.training.records import Position, Records
from fspkd.training.runlog import Progress
from fspkd.training.step import NonFiniteLoss, Stepper, make_optimizer

LOG_EVERY = 20  # iterations between metrics rows (evaluations add their own rows)


def walk(run: Run, records: Records, resume: bool, progress: bool) -> dict:
    """Train every student through its stages (continuing from ``checkpoints/last.pt`` when ``resume``) and
    return the run's summary."""
    start, saved = restore(run, records) if resume else (Position(), None)
    records.forget_after(start if saved else None)
    stages, results = run.method.stages, []
    for student in range(run.config.students):
        if student < start.student:  # finished before the interruption
            run.student.load_state_dict(load_checkpoint(records.out / records.final_name(student))["model"])
            results.append(records.evaluate_student(student))
            continue
        for index, stage in enumerate(stages):
            shared = index < len(stages) - 1  # run once, by the first student
            if (shared and student > 0) or (student, index) < (start.student, start.stage_index):
                continue
            resumed = saved if (student, index) == (start.student, start.stage_index) else None
            if resumed is not None:  # the students finished before it were loaded into the network to be scored
                run.student.load_state_dict(resumed["model"])
            else:
                _begin(run, records, student, index)
                if index > 0 and student == 0 and run.config.task_lr_candidates:
                    records.log_probe(choose_task_lr(run))
            _train_stage(run, records, Position(student, index, start.iteration if resumed else 0), resumed,
                         progress)
            if shared:
                records.save_weights(f"checkpoints/{stage}.pt")
        records.save_weights(records.final_name(student))
        results.append(records.evaluate_student(student))
    return records.write_summary(results)


def restore(run: Run, records: Records) -> tuple[Position, dict]:
    """The position and training state saved in ``checkpoints/last.pt``, with any extra modules loaded from it
    (the walk loads the student's weights when it reaches that student). A stage that was complete is resumed
    with no steps left, so the walk goes on as if it had never stopped."""
    saved = load_checkpoint(records.last_state)
    position = Position(*saved["position"])
    stage = run.method.stages[position.stage_index]
    for name, module in run.method.extra_modules(stage).items():
        module.load_state_dict(saved["extra"][name])
    records.wall, records.stage_stats = saved["wall"], saved["stage_stats"]
    # the probed task lr, unless the run resumes at a task lr of the user's (the probe is then off)
    run.method.task_lr = saved.get("task_lr") if run.config.task_lr_candidates else None
    run.method.uses_stored_fsp = saved.get("stored_fsp")  # a resumed stage 1 keeps its targets' source
    return position, saved


def _begin(run: Run, records: Records, student: int, stage_index: int) -> None:
    """A further student starts from the shared stage-1 weights, or (one stage) from a fresh initialisation."""
    if student == 0:
        return
    if stage_index == 0:
        run.fresh_student(seed=run.config.seed + student)
    else:
        first = run.method.stages[0]
        run.student.load_state_dict(load_checkpoint(records.out / "checkpoints" / f"{first}.pt")["model"])


def _train_stage(run: Run, records: Records, at: Position, saved: dict | None, progress: bool) -> None:
    """Train one stage of one student from step ``at.iteration``, with the optimiser, loader and RNG state of
    ``saved`` when resuming."""
    config, method = run.config, run.method
    stage = method.stages[at.stage_index]
    schedule = method.schedule(stage)
    run.student.train()
    optimizer = make_optimizer(schedule, method.parameters(stage))
    loader = run.loader(seed=config.seed + 1000 * at.student + at.stage_index)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        loader.load_state_dict(saved["loader"])
        torch.set_rng_state(saved["rng"])
    bound = time.perf_counter()
    note = method.bind_loader(stage, loader)
    if stage == "stage1" and method.uses_stored_fsp:  # building (or reading) the store is part of stage 1's cost
        records.add_setup(stage, time.perf_counter() - bound)
    stepper = Stepper(run, stage, optimizer)
    label = stage if config.students == 1 else f"student {at.student + 1} {stage}"
    bar = Progress(schedule.iterations, label, initial=at.iteration, enabled=progress and run.ctx.is_main)
    if note:
        bar.message(f"fspkd: {note}")
    batches = iter(loader)
    for iteration in range(at.iteration, schedule.iterations):
        started = time.perf_counter()
        images, labels = next(batches)
        images, labels = images.to(run.ctx.device, non_blocking=True), labels.to(run.ctx.device)
        done = iteration + 1
        is_eval = done % config.eval_every == 0 or done == schedule.iterations
        is_logged = done % LOG_EVERY == 0 or is_eval
        try:
            output = stepper.step(iteration, images, labels, grad_norm=is_logged)
        except NonFiniteLoss as err:
            raise NonFiniteLoss(f"{err}; {_kept(records)}. Lower the learning rate (or fsp_lambda), or add "
                                "warm-up / gradient clipping") from None
        records.add_step(stage, time.perf_counter() - started)
        bar.update(done, float(output["loss"].detach()), output["lr"])
        position = Position(at.student, at.stage_index, done)
        if is_logged:
            row = records.log(position, stage, output, labels, evaluate=is_eval, whole=done == schedule.iterations)
            if row.get("val_acc") is not None:
                bar.message(f"{label} iteration {done}: val_acc {row['val_acc']:.2f}")
        if is_eval:
            records.save_state(position, stage, optimizer, loader)
    bar.close()


def _kept(records: Records) -> str:
    last = records.last_state
    return f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
