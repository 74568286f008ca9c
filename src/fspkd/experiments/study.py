"""``fspkd study``: the fast-optimization study as one re-runnable command.

Every arm trains ``students`` students of one architecture with the same task-stage budget and schedule shape
(the paper's shape); two-stage arms (FSP, FitNet) run one stage 1 as long as the task stage, shared by their
students (the paper's "Student *" rows). All arms share one held-out validation split, drawn by the study's
seed (an arm that overrides ``seed`` keeps it); the students of an arm differ in initialisation (single-stage arms)
and data order. Finished runs are skipped, an interrupted one is resumed, so the command can be run again to extend
a study or to rebuild its report.

An arm is a base name, optionally followed by overrides: ``fsp-paper:stage1.optimizer=adam,task.lr=0.02``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fspkd.core.config import RunConfig, load_yaml, parse_value  # noqa: E402
from fspkd.core.errors import FspkdError  # noqa: E402
from fspkd.core.settings import name_schedule_fields, resolve_config  # noqa: E402
from fspkd.experiments.report import markdown_table, reached_text  # noqa: E402
from fspkd.methods import get_method  # noqa: E402
from fspkd.training.runlog import read_metrics  # noqa: E402

BASE_ARMS = ("scratch", "fsp-paper", "fsp-best", "kd", "fitnet")  # the study's default arms
ARM_NAMES = (*BASE_ARMS, "copy")  # copy (the paper's Teacher double-dagger) only where named
EVALS_PER_STAGE = 5  # validation points per task stage (eval_every = budget / 5)


def base_arm(name: str, budget: int) -> dict:
    """The settings of a base arm for a task stage of ``budget`` iterations (schedules in the paper's shape)."""
    task = {"iterations": budget, "lr": 0.1}
    if name == "scratch":
        return {"method": "plain", "task": task, "teacher": None, "teacher_model": None}
    if name == "kd":
        return {"method": "kd", "task": task}
    if name == "copy":  # the paper's Teacher double-dagger: the teacher's weights, trained further on the task
        return {"method": "copy", "task": task}
    if name == "fitnet":  # the paper's hint stage: lr 1e-4, / 10 at 25k of 35k iterations
        return {"method": "fitnet", "task": task,
                "stage1": {"iterations": budget, "lr": 1e-4, "milestones": [round(budget * 25 / 35)]}}
    if name in ("fsp-paper", "fsp-best"):  # both stages equally long, as the paper's 21k + 21k
        return {"method": "fsp", "fsp_recipe": "paper" if name == "fsp-paper" else "fast",
                "stage1": {"iterations": budget}, "task": {"iterations": budget}}
    raise FspkdError(f"unknown study arm {name!r}; base arms: {', '.join(ARM_NAMES)}")


def arm_config(arm: str, budget: int, base: Mapping[str, Any]) -> RunConfig:
    """The settings of ``arm`` (``name[:key=value,...]``) at ``budget`` over the study's shared ``base``
    settings, resolved by ``resolve_config`` (overrides are named settings: they win over a recipe)."""
    name, _, overrides = arm.partition(":")
    given = {**base, **base_arm(name, budget)}
    for item in filter(None, overrides.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise FspkdError(f"arm {arm!r}: override {item!r} is not KEY=VALUE")
        _override(given, key, parse_value(value), arm)
    config = resolve_config(given, where=f"arm {arm!r}")
    study_seed = base.get("split_seed") if base.get("split_seed") is not None else base.get("seed", 0)
    if config.held_out_seed != study_seed:  # an arm with its own seed keeps the study's validation split
        config = dataclasses.replace(config, split_seed=study_seed)
    return config


def _override(given: dict, key: str, value, arm: str) -> None:
    stage, dot, field = key.partition(".")
    if not dot:
        given[key] = value
        return
    if stage not in ("stage1", "task") or (stage == "stage1" and "stage1" not in given):
        raise FspkdError(f"arm {arm!r}: no schedule setting {key!r} (stage1.* or task.* of this arm)")
    name_schedule_fields(given, stage, {field: value})


def is_reference_scratch(arm: str) -> bool:
    """Whether ``arm`` is plain scratch training (overrides of the evaluation interval only): the arm whose final
    mean accuracy the others are measured against."""
    name, _, overrides = arm.partition(":")
    return name == "scratch" and all(i.startswith("eval_every=") for i in overrides.split(",") if i)


def arm_label(arm: str) -> str:
    """A short name for tables and plots: ``scratch:init=.../fsp-best/checkpoints/stage1.pt,task.lr=0.02`` reads
    ``fsp-best stage 1 + task.lr=0.02``; ``eval_every`` overrides, which change no training, are left out."""
    name, _, overrides = arm.partition(":")
    items = [i for i in overrides.split(",") if i and not i.startswith("eval_every=")]
    inits = [i for i in items if i.startswith("init=")]
    if not inits:
        return ":".join([name, ",".join(items)]) if items else name
    source = Path(inits[0][len("init="):])
    rest = [i for i in items if not i.startswith("init=")]
    head = f"{source.parent.parent.name} stage 1" if source.parent.name == "checkpoints" else f"init {source.name}"
    return " + ".join([head] + rest)


def run_dir(out: Path, budget: int, arm: str) -> Path:
    return out / f"b{budget}" / arm.replace(":", "--").replace(",", "-").replace("=", "").replace("/", "_")


def run_study(out: Path, arms: list[str], budgets: list[int], base: Mapping[str, Any],
              progress: bool = True, reference: str | None = None) -> str:
    """Train (or finish) every arm at every budget under ``out``; write ``out/report.md``; return its text."""
    from fspkd.training.run import train

    for budget in budgets:
        base_b = {**base, "eval_every": max(1, budget // EVALS_PER_STAGE)}
        for arm in arms:
            if progress:
                print(f"== budget {budget}: {arm}", flush=True)
            train(arm_config(arm, budget, base_b), run_dir(out, budget, arm), resume=True, progress=progress)
    return write_report(out, arms, budgets, reference)


# -- results -----------------------------------------------------------------------------------------------------
def student_curves(folder: Path) -> list[dict]:
    """Per student: task-stage iterations, wall seconds (its stage 1 included) and validation accuracy.

    ``metrics.csv`` counts wall time over the whole run; a later student's clock is restarted at the end of the
    previous student and the shared stage 1's time is added to every student, as each needed it. A run started
    (``init``) from another run's ``checkpoints/stage1.pt`` is charged that run's stage-1 time.
    """
    rows = read_metrics(folder / "metrics.csv")
    config = RunConfig.from_dict(load_yaml(folder / "config.yaml"))
    final_stage = get_method(config.method).stages[-1]
    own_stage1_wall = max((r["wall_s"] for r in rows if r["stage"] != final_stage), default=0.0)
    stage1_wall = own_stage1_wall
    if config.init and Path(config.init).parent.name == "checkpoints":  # started from another run's stage 1
        source = read_metrics(Path(config.init).parent.parent / "metrics.csv")
        stage1_wall = max((r["wall_s"] for r in source if r["stage"] == "stage1"), default=0.0)
    curves, start = [], own_stage1_wall
    for student in sorted({r["student"] for r in rows}):
        mine = [r for r in rows if r["student"] == student and r["stage"] == final_stage]
        evals = [r for r in mine if r["val_acc"] is not None]
        if not evals or evals[-1]["iteration"] < config.task.iterations:
            break  # a student still training (or interrupted): only finished students are reported
        curves.append({
            "iteration": [r["iteration"] for r in evals],
            "wall_s": [r["wall_s"] - start + stage1_wall for r in evals],
            "val_acc": [r["val_acc"] for r in evals],
            "stage1_wall_s": stage1_wall,
        })
        start = max(r["wall_s"] for r in mine)
    return curves


def first_reaching(curve: dict, target: float) -> int | None:
    """The first evaluated task-stage iteration at which validation accuracy is at least ``target``."""
    return next((it for it, acc in zip(curve["iteration"], curve["val_acc"]) if acc >= target), None)


def first_reaching_wall(curve: dict, target: float) -> float | None:
    """The wall seconds (stage 1 included) of the first evaluation at or above ``target``."""
    return next((w for w, acc in zip(curve["wall_s"], curve["val_acc"]) if acc >= target), None)


def summarize(folder: Path, target: float | None) -> dict:
    curves = student_curves(folder)
    finals = [c["val_acc"][-1] for c in curves]
    reached = [first_reaching(c, target) for c in curves] if target is not None else []
    walls = [first_reaching_wall(c, target) for c in curves] if target is not None else []
    return {
        "students": len(curves),
        "mean": statistics.mean(finals),
        "std": statistics.stdev(finals) if len(finals) > 1 else float("nan"),
        "finals": finals,
        "stage1_wall_s": curves[0]["stage1_wall_s"],
        "task_wall_s": statistics.mean(c["wall_s"][-1] - c["stage1_wall_s"] for c in curves),
        "reached": reached,
        "reached_wall_s": None if not walls or None in walls else statistics.mean(walls),
        "wall_s": statistics.mean(c["wall_s"][-1] for c in curves),
    }


def write_report(out: Path, arms: list[str], budgets: list[int], reference: str | None = None) -> str:
    """Tables (mean +/- std per arm) and figures from the students that finished (a run still going counts the
    students it has finished, marked "k of n"). Time to accuracy is measured against ``reference``'s final mean
    accuracy and wall time (default: the scratch arm)."""
    if reference is not None and reference not in arms:
        raise FspkdError(f"--reference {reference!r} is not one of the study's arms: {'; '.join(arms)}")
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    sections = []
    finished = _finished_runs(out, arms, budgets)
    for budget, done in finished.items():
        ref_arm = reference or next((arm for arm in done if is_reference_scratch(arm)), None)
        ref = summarize(done[ref_arm], None) if ref_arm in done else None
        target = ref["mean"] if ref else None
        rows = []
        for arm, folder in done.items():
            s = summarize(folder, target)
            planned = RunConfig.from_dict(load_yaml(folder / "config.yaml")).students
            count = s["students"] if s["students"] == planned else f"{s['students']} of {planned}"
            reach = "-" if ref is None or arm == ref_arm else reached_text(
                target, s["reached_wall_s"], ref["wall_s"], arm_label(ref_arm))
            rows.append([arm_label(arm), count, _mean_text(s),
                         " / ".join(f"{v:.2f}" for v in s["finals"]), round(s["stage1_wall_s"]),
                         round(s["task_wall_s"]), _reached_text(s["reached"]), reach])
        header = ["arm", "students", "val acc (%) mean ± std", "per student", "stage-1 wall (s)",
                  "task-stage wall per student (s)", "task-stage its to the reference's final mean",
                  "time to the reference's final mean (wall per student, stage 1 incl.)"]
        plot = plot_study({arm_label(arm): student_curves(folder) for arm, folder in done.items()},
                          figures / f"study-b{budget}.png", f"{budget} task-stage iterations")
        sections.append(f"### Budget {budget}\n\n{markdown_table(header, rows)}\n\n![budget {budget}]"
                        f"(figures/{plot.name})\n\n{_distance_table(done)}")
        fsp_runs = {a: f for a, f in done.items() if a.startswith("fsp")}
        if fsp_runs:
            loss_plot = plot_stage1(fsp_runs, figures / f"stage1-b{budget}.png")
            sections.append(f"![stage-1 FSP loss, budget {budget}](figures/{loss_plot.name})\n")
    shorter = _shorter_schedules(finished)
    if shorter:
        sections.append(shorter)
    text = "# Fast-optimization study: results\n\n" + "\n".join(sections)
    (out / "report.md").write_text(text)
    return text


def _finished_runs(out: Path, arms: list[str], budgets: list[int]) -> dict[int, dict[str, Path]]:
    """Budget -> arm -> run folder, for the runs with at least one finished student."""
    finished = {}
    for budget in budgets:
        done = {arm: run_dir(out, budget, arm) for arm in arms
                if (run_dir(out, budget, arm) / "metrics.csv").exists() and student_curves(run_dir(out, budget, arm))}
        if done:
            finished[budget] = done
    return finished


def _shorter_schedules(finished: dict[int, dict[str, Path]]) -> str:
    """Each arm at a budget against scratch at every longer budget: the paper's "a third of the iterations"
    compares a student trained on a schedule a third as long (its own decays) with the full-length one."""
    scratch = {budget: summarize(folder, None) for budget, done in finished.items()
               for arm, folder in done.items() if is_reference_scratch(arm)}
    rows = []
    for budget, done in finished.items():
        for arm, folder in done.items():
            longer = [(b, reference) for b, reference in sorted(scratch.items()) if b > budget]
            if is_reference_scratch(arm) or not longer:
                continue
            s = summarize(folder, None)
            for longer_budget, reference in longer:
                rows.append(_shorter_row(arm, budget, s, longer_budget, reference))
    if not rows:
        return ""
    header = ["arm", "task-stage its", "val acc (%)", "wall per student (s, stage 1 incl.)", "scratch its",
              "scratch val acc (%)", "scratch wall (s)", "students at or above scratch's mean"]
    return "### Shorter schedules against longer scratch training\n\n" + markdown_table(header, rows) + "\n"


def _shorter_row(arm: str, budget: int, s: dict, longer: int, reference: dict) -> list:
    at_or_above = sum(final >= reference["mean"] for final in s["finals"])
    return [arm_label(arm), budget, _mean_text(s), round(s["stage1_wall_s"] + s["task_wall_s"]), longer,
            _mean_text(reference), round(reference["task_wall_s"]), f"{at_or_above} of {s['students']}"]


def _mean_text(summary: dict) -> str:
    if summary["students"] > 1:
        return f"{summary['mean']:.2f} ± {summary['std']:.2f}"
    return f"{summary['mean']:.2f}"


def _distance_table(done: dict[str, Path]) -> str:
    """Where each FSP arm's stage 1 ended, pair by pair, beside a fresh initialisation (cached per run)."""
    rows = []
    for arm, folder in done.items():
        stage1 = folder / "checkpoints" / "stage1.pt"
        config = RunConfig.from_dict(load_yaml(folder / "config.yaml"))
        if config.method != "fsp" or not stage1.exists():
            continue
        cache = folder / "stage1-distances.json"
        if not cache.exists():
            cache.write_text(json.dumps({"fresh": fsp_distances(config, None), "stage1": fsp_distances(config, stage1)}))
        measured = json.loads(cache.read_text())
        for label in ("fresh", "stage1"):
            rows.append([arm_label(arm), "fresh init" if label == "fresh" else "after stage 1"]
                        + [f"{r['relative']:.2f} / {r['cosine']:.3f}" for r in measured[label]])
    if not rows:
        return ""
    header = ["arm", "student"] + [f"pair {i + 1}" for i in range(len(rows[0]) - 2)]
    return ("FSP matrices against the teacher's per pair, relative distance ||G_s - G_t|| / ||G_t|| / cosine, "
            "500 validation images:\n\n" + markdown_table(header, rows) + "\n")


def _reached_text(reached: list) -> str:
    if not reached:
        return "-"
    return " / ".join("-" if r is None else str(r) for r in reached)


def plot_study(curves_by_arm: dict[str, list[dict]], path: Path, title: str) -> Path:
    """Mean validation accuracy over the students (``student_curves``) against task-stage iterations and against
    wall time (stage 1 included); the band spans the students' minimum to maximum."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for label, curves in curves_by_arm.items():
        length = min(len(c["val_acc"]) for c in curves)
        accs = [[c["val_acc"][i] for c in curves] for i in range(length)]
        mean = [statistics.mean(a) for a in accs]
        for ax, x in ((axes[0], curves[0]["iteration"][:length]),
                      (axes[1], [statistics.mean(c["wall_s"][i] for c in curves) for i in range(length)])):
            line, = ax.plot(x, mean, marker=".", label=label)
            ax.fill_between(x, [min(a) for a in accs], [max(a) for a in accs], color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("task-stage iterations (stage 1 not counted)")
    axes[1].set_xlabel("training wall time per student (s, stage 1 included)")
    for ax in axes:
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# -- what stage 1 reached ------------------------------------------------------------------------------------------
def fsp_distances(config: RunConfig, student_weights: Path | None, images: int = 500) -> list[dict]:
    """Per FSP pair, on the first ``images`` validation images, with the student's BatchNorm on batch statistics
    as in stage 1: the Eq. 2 term with lambda = 1, and the relative distance ||G_s - G_t||_F / ||G_t||_F (batch
    mean; 1.0 is as far as a zero matrix) and the cosine between the two matrices (batch mean; scale-free).

    ``student_weights`` is a checkpoint of ours (e.g. ``checkpoints/stage1.pt``); None measures a fresh
    initialisation of seed ``config.seed``.
    """
    import torch

    from fspkd.core.checkpoint import load_checkpoint
    from fspkd.data import parse_normalize
    from fspkd.methods.fsp import FSP
    from fspkd.training.build import build_model, load_run_data, load_teacher

    splits = load_run_data(config)
    mean, std = parse_normalize(config.normalize, splits)
    x = splits.val.images[:images].float() / 255
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.manual_seed(config.seed)
    student = build_model(config.model, config.model_options, splits.num_classes)
    if student_weights is not None:
        student.load_state_dict(load_checkpoint(student_weights)["model"])
    method = FSP(student.train(), load_teacher(config, splits.num_classes, "cpu"), config)
    try:
        with torch.no_grad():
            student_g, teacher_g = method.student_matrices(x), method.teacher_matrices(x)
    finally:
        method.close()
    rows = []
    for (first, second), gs, gt in zip(method.student_pairs, student_g, teacher_g):
        diff = (gs - gt).flatten(1)
        rows.append({"pair": f"{first} -> {second}", "eq2_term": float(diff.pow(2).sum(1).mean()),
                     "relative": float((diff.norm(dim=1) / gt.flatten(1).norm(dim=1)).mean()),
                     "cosine": float(torch.nn.functional.cosine_similarity(gs.flatten(1), gt.flatten(1)).mean())})
    return rows


def plot_stage1(folders: dict[str, Path], path: Path) -> Path:
    """Stage-1 FSP loss against iterations, each run's curve divided by its first logged value (the raw and the
    normalised losses live on different scales), log scale."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for label, folder in folders.items():
        rows = [r for r in read_metrics(folder / "metrics.csv") if r["stage"] == "stage1" and r["student"] == 0]
        if rows:
            ax.plot([r["iteration"] for r in rows], [r["fsp_loss"] / rows[0]["fsp_loss"] for r in rows], label=arm_label(label))
    ax.set_yscale("log")
    ax.set_xlabel("stage-1 iterations")
    ax.set_ylabel("FSP loss / first logged value (iteration 20)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
