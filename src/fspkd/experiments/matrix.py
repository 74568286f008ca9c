"""``fspkd study --matrix``: the default FSP recipe against scratch, KD and FitNet over a fixed matrix of settings.

A matrix (``matrix.yaml`` beside this module, or a user's file of the same shape) names teachers and cells. A
cell is a teacher, a student architecture and task-stage budgets; every cell trains the study's arms (scratch, the
default FSP recipe, KD, FitNet) with the same students, schedules and validation split. Scratch runs depend on the
student alone, so cells that share a student share them. A teacher that the matrix trains is trained when the
first arm that learns from it runs, so a scratch-only request trains none.

Each finished arm leaves one JSON result under ``results`` (accuracies, curves, wall times, core-hours, the
settings it ran with), written the moment it ends; a re-run skips every arm that has one, so a matrix can be
spread over several sittings and the results committed as they come. The report (``results/report.md``, with
one table and one figure per cell) is built from those files alone.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from importlib import resources
from pathlib import Path

from fspkd.core.atomic import write_text_atomic
from fspkd.core.config import RunConfig, load_yaml
from fspkd.core.errors import FspkdError
from fspkd.core.settings import resolve_config
from fspkd.experiments.study import EVALS_PER_STAGE, arm_config, student_curves

# matrix arm -> study arm. For a cell's extra_arms: fsp-stored is the default recipe with its stage 1 on stored
# teacher FSP (stored and live targets should train alike); copy is the paper's Teacher double-dagger (the
# teacher's weights trained further, one copy per student)
ARMS = {"scratch": "scratch", "fsp": "fsp-best", "kd": "kd", "fitnet": "fitnet",
        "fsp-stored": "fsp-best:stored_fsp=true", "copy": "copy"}
# arms of one run per student ("member"), the k-th with these overrides: fsp-shuffled is the paper's Student*
# dagger, each student with its own stage 1 on channel-shuffled teacher FSP (seed k), for a more diverse ensemble
MEMBER_ARMS = {"fsp-shuffled": "fsp-best:students=1,seed={k},shuffle_seed={k}"}
RUN_KEYS = ("data", "val_split", "normalize", "students", "seed")


def default_spec() -> Path:
    return Path(str(resources.files("fspkd.experiments") / "matrix.yaml"))


def load_spec(path: str | Path) -> dict:
    """The matrix in ``path``, checked: every cell names a known teacher, a student and positive budgets."""
    spec = load_yaml(Path(path))
    for key in ("teachers", "cells", *RUN_KEYS):
        if key not in spec:
            raise FspkdError(f"{path}: the matrix needs a {key!r} entry")
    for arm in [*spec.get("arms", ARMS), *(a for c in spec["cells"].values() if isinstance(c, dict)
                                           for a in c.get("extra_arms", []))]:
        if arm not in ARMS and arm not in MEMBER_ARMS:
            raise FspkdError(f"{path}: unknown arm {arm!r}; arms: {', '.join([*ARMS, *MEMBER_ARMS])}")
    for name, teacher in spec["teachers"].items():
        if not isinstance(teacher, dict) or "model" not in teacher or ("weights" in teacher) == ("train" in teacher):
            raise FspkdError(f"{path}: teacher {name!r} needs a model and either weights: FILE or train: SETTINGS")
    for name, cell in spec["cells"].items():
        if not isinstance(cell, dict) or cell.get("teacher") not in spec["teachers"] or "student" not in cell:
            raise FspkdError(f"{path}: cell {name!r} needs a student and a teacher from: {', '.join(spec['teachers'])}")
        budgets = cell.get("budgets")
        if not budgets or not all(isinstance(b, int) and b > 0 for b in budgets):
            raise FspkdError(f"{path}: cell {name!r} needs budgets, a list of positive task-stage iterations")
    _check_table1(spec, path)
    return spec


def _check_table1(spec: dict, path) -> None:
    """``table1: {cell, full, third}``: a cell and two of its budgets (the paper's Table 1 view of the report)."""
    table = spec.get("table1")
    if table is None:
        return
    cell = spec["cells"].get(table.get("cell")) if isinstance(table, dict) else None
    if cell is None or not {table.get("full"), table.get("third")} <= set(cell["budgets"]):
        raise FspkdError(f"{path}: table1 needs a cell and two of its budgets, full and third, e.g. "
                         "{cell: a, full: 1500, third: 500}")


def select_cells(spec: dict, cells: str | None) -> list[str]:
    names = [c for c in (cells or "").split(",") if c] or list(spec["cells"])
    unknown = [c for c in names if c not in spec["cells"]]
    if unknown:
        raise FspkdError(f"--cells: no cell {', '.join(unknown)}; the matrix has {', '.join(spec['cells'])}")
    return names


def shared_settings(spec: dict) -> dict:
    """The settings every run of the matrix shares: data, split, normalisation, students, seed, and the optional
    ``settings:`` mapping of further run settings (e.g. batch_size)."""
    return {**{k: spec[k] for k in RUN_KEYS}, **(spec.get("settings") or {})}


def cell_arms(spec: dict, cell: str) -> list[str]:
    """The matrix's arms, then the cell's ``extra_arms``."""
    return [*spec.get("arms", ["scratch", "fsp", "kd", "fitnet"]), *spec["cells"][cell].get("extra_arms", [])]


# -- where things live -----------------------------------------------------------------------------------------
def arm_key(cell: str, student: str, budget: int, arm: str) -> str:
    """The name of an arm's run folder and result file; scratch is keyed by its student, not its cell."""
    return f"scratch-{student}-b{budget}" if arm == "scratch" else f"{cell}-b{budget}-{arm}"


def teacher_folder(out: Path, name: str) -> Path:
    return out / "teachers" / name


# -- running -----------------------------------------------------------------------------------------------------
def run_matrix(spec: dict, cells: list[str], out: Path, results: Path, progress: bool = True,
               arms: list[str] | None = None, budgets: list[int] | None = None) -> str:
    """Train every arm of ``cells`` (only ``arms`` and ``budgets`` where given) that has no result yet, writing each
    result as it ends; return the report."""
    known = {arm for cell in cells for arm in cell_arms(spec, cell)}
    unknown = sorted(set(arms or []) - known)
    if unknown:
        raise FspkdError(f"--arms: no arm {', '.join(unknown)} in these cells; they have {', '.join(sorted(known))}")
    results.mkdir(parents=True, exist_ok=True)
    for cell in cells:
        setting = spec["cells"][cell]
        for budget in [b for b in setting["budgets"] if not budgets or b in budgets]:
            for arm in [a for a in cell_arms(spec, cell) if not arms or a in arms]:
                run_arm(spec, cell, budget, arm, out, results, progress)
    return write_matrix_report(spec, results)


def run_arm(spec: dict, cell: str, budget: int, arm: str, out: Path, results: Path, progress: bool) -> None:
    """Train one arm of a cell unless it has a result, then write its result (an earlier result gets only the
    ensemble's disagreement where it lacks it)."""
    from fspkd.training.run import train

    setting = spec["cells"][cell]
    key = arm_key(cell, setting["student"], budget, arm)
    base = {**shared_settings(spec), "model": setting["student"], **teacher_settings(spec, setting["teacher"], out),
            "eval_every": max(1, budget // EVALS_PER_STAGE)}
    runs = arm_runs(arm, budget, base, out / key)
    folders = [folder for folder, _ in runs]
    if (results / f"{key}.json").exists():
        add_disagreement(results / f"{key}.json", folders)
        return
    if progress:
        print(f"== matrix cell {cell}, budget {budget}: {arm} ({key})", flush=True)
    pending = [(folder, config) for folder, config in runs if not (folder / "summary.json").exists()]
    if pending and arm != "scratch":  # scratch never reads the teacher: asking for it trains none
        prepare_teacher(spec, setting["teacher"], out, results, progress)
    started, resumed = time.perf_counter(), any(map(kept_work, folders))
    for folder, config in pending:
        train(config, folder, resume=True, progress=progress)
    write_result(results / f"{key}.json", folders, time.perf_counter() - started if pending else None, resumed)


def arm_runs(arm: str, budget: int, base: dict, folder: Path) -> list[tuple[Path, object]]:
    """The run folders and settings of an arm: one run, or for a member arm one run per student."""
    if arm not in MEMBER_ARMS:
        return [(folder, arm_config(ARMS[arm], budget, base))]
    return [(folder / f"member-{k}", arm_config(MEMBER_ARMS[arm].format(k=k), budget, base))
            for k in range(1, base["students"] + 1)]


def teacher_settings(spec: dict, name: str, out: Path) -> dict:
    """The teacher settings of the runs of a cell: a ``weights:`` file, or where a ``train:`` teacher ends."""
    teacher = spec["teachers"][name]
    if "weights" in teacher:
        return {"teacher": teacher["weights"], "teacher_model": teacher["model"],
                "teacher_options": teacher.get("options", {})}
    return {"teacher": str(teacher_folder(out, name) / "final.pt"), "teacher_model": None}


def prepare_teacher(spec: dict, name: str, out: Path, results: Path, progress: bool) -> None:
    """Train a ``train:`` teacher (once) and record it; a ``weights:`` teacher is ready as it is."""
    from fspkd.training.run import train

    teacher = spec["teachers"][name]
    record = results / f"teacher-{name}.json"
    if "weights" in teacher or record.exists():
        return
    folder = teacher_folder(out, name)
    given = {**shared_settings(spec), "students": 1, "method": "plain", "model": teacher["model"],
             "model_options": teacher.get("options", {}), "task": teacher["train"],
             "eval_every": teacher.get("eval_every", 500)}
    if progress:
        print(f"== matrix teacher {name} ({teacher['model']})", flush=True)
    started, trained, resumed = time.perf_counter(), not (folder / "summary.json").exists(), kept_work(folder)
    if trained:
        train(resolve_config(given), folder, resume=True, progress=progress)
    write_result(record, [folder], time.perf_counter() - started if trained else None, resumed)


def kept_work(folder: Path) -> bool:
    """Whether an earlier process left work in a run folder that this one builds on (a finished member or a
    checkpoint to resume): then this process's elapsed time is not the arm's."""
    return (folder / "summary.json").exists() or (folder / "checkpoints" / "last.pt").exists()


def write_result(path: Path, folders: list[Path], elapsed_s: float | None, resumed: bool = False) -> dict:
    """One finished arm (its run, or its members' runs) as a JSON result: per-student accuracies and curves, the
    ensemble and its disagreement, wall times and cost. ``elapsed_s`` is this process's time, None for runs that
    had finished before (adopted as they are); ``resumed`` says that earlier processes did part of the work, so
    that ``elapsed_s`` covers only the rest and the cost is at least the runs' own training wall, which
    checkpoints carry across processes."""
    import torch

    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    first, config = summaries[0], load_yaml(folders[0] / "config.yaml")
    finals = [s["val_acc"] for summary in summaries for s in summary["per_student"]]
    ensemble, disagreement = _ensemble(folders, summaries, config)
    task_lrs = sorted({summary.get("task_lr") for summary in summaries}, key=str)
    threads = torch.get_num_threads()
    training_wall = sum(summary["total_wall_s"] for summary in summaries)
    result = {
        "run": str(folders[0].parent if len(folders) > 1 else folders[0]), "members": len(folders),
        "method": first["method"], "model": first["model"], "teacher": first["teacher"],
        "finals": finals, "mean": statistics.mean(finals),
        "std": statistics.stdev(finals) if len(finals) > 1 else None,
        "ensemble": ensemble, "disagreement": disagreement,
        "task_lr": task_lrs[0] if len(task_lrs) == 1 else task_lrs,
        "stages": _summed_stages(summaries), "training_wall_s": training_wall,
        "curves": [curve for folder in folders for curve in student_curves(folder)],
        "cadence_subset": first.get("cadence_subset"),  # None: the curves' inner points are not comparable
        "elapsed_s": elapsed_s, "resumed": resumed, "threads": threads,
        "core_hours": (max(elapsed_s or 0.0, training_wall) * threads) / 3600,
        "date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
        "config": config,
    }
    write_text_atomic(path, json.dumps(result, indent=1))
    return result


def add_disagreement(path: Path, folders: list[Path]) -> None:
    """Give a result of an earlier version, written before ensembles reported it, its ensemble's disagreement,
    measured from the students' weights; everything else in it stays as it was."""
    result = json.loads(path.read_text())
    if "disagreement" in result or not all((f / "summary.json").exists() for f in folders):
        return
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    _, result["disagreement"] = _ensemble(folders, summaries, load_yaml(folders[0] / "config.yaml"))
    write_text_atomic(path, json.dumps(result, indent=1))


def _ensemble(folders: list[Path], summaries: list[dict], config: dict) -> tuple[float | None, float | None]:
    """The averaged-softmax accuracy and pairwise disagreement of the arm's students on the validation split: from
    the run's summary, or from the members' stored predictions or weights (several runs, or a summary of an
    earlier version without the disagreement)."""
    if len(folders) == 1 and summaries[0].get("ensemble_val_disagreement") is not None:
        return summaries[0]["ensemble_val_acc"], summaries[0]["ensemble_val_disagreement"]
    members = [(folder, student) for folder, summary in zip(folders, summaries) for student in summary["per_student"]]
    if len(members) < 2:
        return None, None
    from fspkd.training.inference import ensemble_of_students

    run = RunConfig.from_dict(config)
    found = ensemble_of_students(members, "val", data=run.data, val_split=run.val_split, seed=run.held_out_seed,
                                 image_size=run.image_size)
    return found["ensemble_accuracy"], found["disagreement"]


def _summed_stages(summaries: list[dict]) -> dict:
    """Each stage's iterations and seconds, summed over the arm's runs."""
    stages: dict[str, dict] = {}
    for summary in summaries:
        for name, stage in summary["stages"].items():
            total = stages.setdefault(name, {})
            for key, value in stage.items():
                if key != "s_per_100_it":
                    total[key] = total.get(key, 0) + value
    for stage in stages.values():
        stage["s_per_100_it"] = 100 * stage["wall_s"] / max(stage["iterations"], 1)
    return stages


# -- report --------------------------------------------------------------------------------------------------------
def load_results(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def write_matrix_report(spec: dict, results: Path) -> str:
    """``results/report.md``: per cell and budget, one table and one figure, from the result files."""
    from fspkd.experiments.matrix_report import cell_section, table1_section, teacher_table

    found = load_results(results)
    sections = [teacher_table(spec, found)]
    if "table1" in spec:
        sections.append(table1_section(spec, found))
    for cell, setting in spec["cells"].items():
        for budget in setting["budgets"]:
            arms = {arm: found.get(arm_key(cell, setting["student"], budget, arm)) for arm in cell_arms(spec, cell)}
            sections.append(cell_section(cell, setting, budget, arms, results / "figures"))
    text = "# Settings matrix: results\n\nWritten by `fspkd study --matrix` from the result files beside it.\n\n"
    text += "\n".join(sections)
    (results / "report.md").write_text(text)
    return text

