"""The settings matrix's report: per cell and budget a table, a figure and the default recipe's two criteria.

The criteria, read from the result files: the default FSP arm's mean is at or above scratch's mean minus
scratch's standard deviation, and where a cell names ``gain_to_keep`` (FSP's gain over scratch before the recipe
changed), at least 90% of that gain is kept.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from fspkd.experiments.report import markdown_table, reached_text
from fspkd.experiments.study import plot_study

KEPT_FRACTION = 0.9
# the Table 1 view: (row, matrix arm, budget: "full" or "third", the paper's mean single / ensemble accuracy)
TABLE1_ROWS = (
    ("Scratch (the paper's Teacher, 64k iterations)", "scratch", "full", (91.75, 93.48)),
    ("Student* (one shared stage 1)", "fsp", "full", None),
    ("Student*† (own stage 1 each, shuffled FSP)", "fsp-shuffled", "full", None),
    ("Teacher‡ (teacher's weights trained further; the paper: 21k more)", "copy", "full", (92.04, 92.71)),
    ("Student* at a third (the paper's 21k + 21k)", "fsp", "third", (92.14, 93.26)),
    ("Student*† at a third", "fsp-shuffled", "third", (92.08, 93.67)),
)


def teacher_table(spec: dict, found: dict[str, dict]) -> str:
    rows = []
    for name, teacher in spec["teachers"].items():
        result = found.get(f"teacher-{name}")
        if "weights" in teacher:
            rows.append([name, teacher["model"], f"file `{teacher['weights']}`", "-", "-", "-"])
        elif result:
            its = result["stages"]["task"]["iterations"]
            rows.append([name, teacher["model"], f"trained here, {its} iterations", f"{result['mean']:.2f}",
                         round(result["training_wall_s"]), f"{result['core_hours']:.2f}"])
    header = ["teacher", "model", "source", "val acc (%)", "training wall (s)", "core-hours"]
    return "## Teachers\n\n" + markdown_table(header, rows) + "\n"


def table1_section(spec: dict, found: dict[str, dict]) -> str:
    """The paper's Table 1 at our scale: each row's mean single and ensemble accuracy, the members' disagreement,
    and the whole row's training wall time (stage 1 and store builds included) against the scratch row's."""
    from fspkd.experiments.matrix import arm_key

    table = spec["table1"]
    student = spec["cells"][table["cell"]]["student"]
    scratch = found.get(arm_key(table["cell"], student, table["full"], "scratch"))
    header = ["row", "task its per student", "val acc (%) mean ± std", "ensemble (%)", "disagreement (%)",
              "training wall (s, all members)", "wall / scratch row's", "at equal step price",
              "paper: mean / ensemble"]
    rows = []
    for label, arm, budget, paper in TABLE1_ROWS:
        r = found.get(arm_key(table["cell"], student, table[budget], arm))
        if r is None:
            rows.append([label, table[budget], "not run yet", *["-"] * (len(header) - 4), _paper(paper)])
            continue
        ratio = f"{r['training_wall_s'] / scratch['training_wall_s']:.2f}" if scratch else "-"
        rows.append([label, table[budget], _mean_std(r), r["ensemble"], r.get("disagreement"),
                     round(r["training_wall_s"]), ratio, _equal_price_ratio(r, scratch), _paper(paper)])
    return (f"## The paper's Table 1 at our scale: cell ({table['cell']})\n\n" + markdown_table(header, rows)
            + "\n\nDisagreement: the share of validation images on which two members' predictions differ, the mean "
            "over pairs. Training wall: every member's optimiser steps, stage 1 (shared or each member's own), the lr "
            "probe and stored-FSP builds; evaluations excluded. The arms run on shared cores under different loads, "
            "so beside the plain ratio, *at equal step price* prices the scratch row's task iterations at the row's "
            "own task-step time (measured in the same run, so under the same load). The paper's three teachers took "
            "8.6 h, Student* 4.84 h (0.56 of it).\n")


def _equal_price_ratio(r: dict, scratch: dict | None) -> str:
    """The row's training wall over what the scratch row's task iterations cost at this row's own task-step time:
    a wall ratio that a different load on the shared cores during the two arms does not move."""
    task = r["stages"]["task"]
    if scratch is None or not task["iterations"]:
        return "-"
    step_s = task["wall_s"] / task["iterations"]  # optimiser steps only: evaluations are counted apart
    return f"{r['training_wall_s'] / (scratch['stages']['task']['iterations'] * step_s):.2f}"


def _paper(paper) -> str:
    return "-" if paper is None else f"{paper[0]:.2f} / {paper[1]:.2f}"


def cell_section(cell: str, setting: dict, budget: int, arms: dict[str, dict | None], figures: Path) -> str:
    title = f"## Cell ({cell}) {setting['teacher']} -> {setting['student']}, {budget} task-stage iterations"
    done = {arm: r for arm, r in arms.items() if r}
    missing = [arm for arm, r in arms.items() if not r]
    if not done:
        return f"{title}\n\nNot run yet.\n"
    scratch = done.get("scratch")
    target = scratch["mean"] if scratch else None
    reference_wall = _mean_wall(scratch) if scratch else None
    rows = []
    for arm, r in done.items():
        gain = None if scratch is None or arm == "scratch" else r["mean"] - scratch["mean"]
        reach = "-" if scratch is None or arm == "scratch" else _reach(r, target, reference_wall)
        rows.append([arm, _mean_std(r), " / ".join(f"{v:.2f}" for v in r["finals"]),
                     None if gain is None else f"{gain:+.2f}", r["ensemble"], r.get("disagreement"),
                     _task_lr(r) if arm.startswith("fsp") else "-", round(_mean_wall(r)), reach,
                     _elapsed(r), f"{r['core_hours']:.2f}"])
    header = ["arm", "val acc (%) mean ± std", "per student", "vs scratch", "ensemble", "disagreement", "task lr",
              "wall per student (s, stage 1 incl.)", "time to scratch's final mean",
              "arm elapsed (s, all students, evaluations and store builds incl.)", "core-hours"]
    cost = sum(r["core_hours"] for arm, r in done.items() if arm != "scratch")
    lines = [title, "", markdown_table(header, rows), "",
             f"- Cost: {cost:.2f} core-hours for the cell's own arms"
             + (f", {scratch['core_hours']:.2f} for scratch (shared by the cells with this student)." if scratch
                else "."),
             *resumed_note(done), *evaluation_share(done), *criteria(setting, budget, done)]
    if missing:
        lines.append(f"- Not run yet: {', '.join(missing)}.")
    figures.mkdir(parents=True, exist_ok=True)
    figure = plot_study({arm: r["curves"] for arm, r in done.items()}, figures / f"cell-{cell}-b{budget}.png",
                        title.removeprefix("## "))
    lines += ["", f"![cell {cell} at {budget}](figures/{figure.name})", ""]
    return "\n".join(lines)


def criteria(setting: dict, budget: int, done: dict[str, dict]) -> list[str]:
    """The default recipe's two criteria in this cell, as sentences that say met or not met."""
    fsp, scratch = done.get("fsp"), done.get("scratch")
    if not (fsp and scratch):
        return []
    floor = scratch["mean"] - (scratch["std"] or 0.0)
    lines = [f"- FSP at or above scratch's mean minus one std ({floor:.2f}): "
             f"{'met' if fsp['mean'] >= floor else 'NOT met'} ({fsp['mean']:.2f})."]
    gain_to_keep = (setting.get("gain_to_keep") or {}).get(budget)
    if gain_to_keep is not None:
        gain = fsp["mean"] - scratch["mean"]
        lines.append(f"- {KEPT_FRACTION:.0%} of the earlier gain of {gain_to_keep:.2f} points kept: "
                     f"{'met' if gain >= KEPT_FRACTION * gain_to_keep else 'NOT met'} ({gain:+.2f}, "
                     f"{gain / gain_to_keep:.0%}).")
    return lines


def resumed_note(done: dict[str, dict]) -> list[str]:
    resumed = [arm for arm, r in done.items() if _resumed(r)]
    if not resumed:
        return []
    return [f"- Resumed across processes: {', '.join(resumed)}. Their core-hours count the runs' training wall,"
            " which checkpoints carry over, and leave out the evaluations and store builds of earlier processes."]


def evaluation_share(done: dict[str, dict]) -> list[str]:
    """The evaluations' seconds against the training seconds of the arms that recorded them (runs of earlier
    versions did not)."""
    timed = [r for r in done.values() if any("eval_s" in stage for stage in r["stages"].values())]
    if not timed:
        return []
    evals = sum(stage.get("eval_s", 0.0) for r in timed for stage in r["stages"].values())
    training = sum(r["training_wall_s"] for r in timed)
    return [f"- Evaluations (on {len(timed)} of the arms that timed them) took {100 * evals / training:.1f}% of their "
            "training time."]


def _mean_std(r: dict) -> str:
    return f"{r['mean']:.2f} ± {r['std']:.2f}" if r["std"] is not None else f"{r['mean']:.2f}"


def _task_lr(r: dict) -> str:
    """The probed task lr, or each member's where they differ."""
    lrs = r["task_lr"] if isinstance(r["task_lr"], list) else [r["task_lr"]]
    return " / ".join(f"{lr:g}" for lr in lrs)


def _resumed(r: dict) -> bool:
    """Whether earlier processes did part of the arm's work (a result written before ``resumed`` was recorded
    shows it by an elapsed time under its training wall)."""
    if r["elapsed_s"] is None:  # adopted as it was: no process of the matrix timed it
        return False
    return r.get("resumed", r["elapsed_s"] < r["training_wall_s"])


def _elapsed(r: dict) -> str:
    """The arm's elapsed seconds where one process ran it all; a resumed arm's process saw only its last part."""
    if r["elapsed_s"] is None:
        return "-"
    return f"resumed ({round(r['elapsed_s'])} in the last process)" if _resumed(r) else str(round(r["elapsed_s"]))


def _mean_wall(r: dict) -> float:
    return statistics.mean(c["wall_s"][-1] for c in r["curves"])


def _reach(r: dict, target: float, reference_wall: float) -> str:
    if r.get("cadence_subset") is None:  # written before the cadence subset was a draw: not a measurement
        return "n/a: curve on the split's first images"
    return reached_text(target, _mean_reach(r, target), reference_wall, "scratch")


def _mean_reach(r: dict, target: float) -> float | None:
    """Mean wall seconds (stage 1 included) at which the students first reached ``target``; None unless all did."""
    walls = [next((w for w, acc in zip(c["wall_s"], c["val_acc"]) if acc >= target), None) for c in r["curves"]]
    return None if None in walls else statistics.mean(walls)
