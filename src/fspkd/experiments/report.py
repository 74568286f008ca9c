"""Figures and markdown reports from run folders: the paper's Figure 3 (accuracy and loss against wall time and
iterations) and result tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from fspkd.training.runlog import read_metrics  # noqa: E402


def curves(run_dir: str | Path, student: int = 0) -> dict[str, list]:
    """One run's training curves with iterations counted over all its stages (stage 1 included)."""
    rows = [r for r in read_metrics(Path(run_dir) / "metrics.csv") if r["student"] in (0, student)]
    offsets, seen, total = {}, [], 0
    for row in rows:
        if row["stage"] not in offsets:
            offsets[row["stage"]] = total
            seen.append(row["stage"])
        total = max(total, offsets[row["stage"]] + row["iteration"])
    out = {"iteration": [], "wall_s": [], "loss": [], "acc_iteration": [], "acc_wall_s": [], "acc": []}
    for row in rows:
        step = offsets[row["stage"]] + row["iteration"]
        if row["loss"] is not None and row["stage"] == seen[-1]:  # stage-1 losses are on another scale
            out["iteration"].append(step)
            out["wall_s"].append(row["wall_s"])
            out["loss"].append(row["task_loss"] if row["task_loss"] is not None else row["loss"])
        acc = row["test_acc"] if row["test_acc"] is not None else row["val_acc"]
        if acc is not None:
            out["acc_iteration"].append(step)
            out["acc_wall_s"].append(row["wall_s"])
            out["acc"].append(acc)
    return out


def time_to_accuracy(curve: Mapping[str, list], target: float) -> tuple[int, float] | None:
    """(iterations, training seconds), all stages counted, of the first evaluation of ``curve`` (from ``curves``)
    at or above ``target`` percent; None when no evaluation reached it."""
    points = zip(curve["acc_iteration"], curve["acc_wall_s"], curve["acc"])
    return next(((it, wall) for it, wall, acc in points if acc >= target), None)


def reached_text(target: float, reached_wall: float | None, reference_wall: float, reference: str) -> str:
    """Time to accuracy as the reports say it: "reached X% at N s, k times REFERENCE's wall"."""
    if reached_wall is None:
        return f"did not reach {target:.2f}%"
    return (f"reached {target:.2f}% at {reached_wall:.0f} s, {reached_wall / reference_wall:.2f} times "
            f"{reference}'s wall")


def plot_training_curves(runs: Mapping[str, str | Path], path: str | Path, title: str = "") -> Path:
    """2x2 figure: held-out accuracy and task loss against iterations and against wall time, one line per run."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for label, run_dir in runs.items():
        c = curves(run_dir)
        axes[0, 0].plot(c["acc_iteration"], c["acc"], marker=".", label=label)
        axes[0, 1].plot(c["acc_wall_s"], c["acc"], marker=".", label=label)
        axes[1, 0].plot(c["iteration"], c["loss"], label=label, alpha=0.8)
        axes[1, 1].plot(c["wall_s"], c["loss"], label=label, alpha=0.8)
    for ax, (x, y) in zip(axes.flat, [("iterations (all stages)", "accuracy (%)"), ("wall time (s)", "accuracy (%)"),
                                      ("iterations (all stages)", "task loss"), ("wall time (s)", "task loss")]):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    axes[1, 0].set_yscale("log")
    axes[1, 1].set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    return _save(fig, path, title)


def _save(fig, path: str | Path, title: str) -> Path:
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v):
        if v is None:
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# -- `fspkd reproduce`: the paper's tables beside ours ----------------------------------------------------------
def plot_ensemble_gains(rows: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Bar chart per row: mean single-net accuracy and ensemble accuracy, ours and the paper's in two panels."""
    labels = [r["label"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True, sharey=False)
    nan = float("nan")  # a failed row: no bar
    panels = [("ours", [nan if r["avg"] is None else r["avg"] for r in rows],
               [nan if r["ensemble"] is None else r["ensemble"] for r in rows]),
              ("the paper", [r["paper"]["avg"] for r in rows], [r["paper"]["ensemble"] for r in rows])]
    positions = range(len(rows))
    for ax, (who, singles, ensembles) in zip(axes, panels):
        ax.bar([p - 0.2 for p in positions], singles, width=0.4, label="mean of single nets")
        ax.bar([p + 0.2 for p in positions], ensembles, width=0.4, label="ensemble")
        low = min([v for v in singles + ensembles if v == v], default=5.0)  # v == v: not NaN
        ax.set_ylim(max(0.0, low - 5), None)
        ax.set_xticks(list(positions), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(who)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path, title)


def write_reproduction_report(results: Mapping, out: str | Path) -> Path:
    """``report.md`` (and its figures) for the results of ``fspkd reproduce``; returns the report's path."""
    out = Path(out)
    figure_runs = {label: out / run for label, run in results["figure_runs"].items()}
    plot_training_curves(figure_runs, out / "figure3.png", title=f"{results['title']} (scale {results['scale']:g})")
    figures = ["![accuracy and task loss against iterations and wall time (the paper's Figure 3)](figure3.png)"]
    if results["layout"] == "three":
        plot_ensemble_gains(results["rows"], out / "ensembles.png", title="ensemble gains")
        figures.append("![mean single-net and ensemble accuracy per row](ensembles.png)")
    parts = [f"# {results['title']}", scale_notice(results), _tables(results), _timing_section(results),
             "## Figures", "\n\n".join(figures), _settings_section(results)]
    path = out / "report.md"
    path.write_text("\n\n".join(p for p in parts if p) + "\n")
    return path


def scale_notice(results: Mapping) -> str:
    overrides = results["overrides"]
    changed = [f"`--scale {results['scale']:g}`"] if results["scale"] != 1 else []
    size = results["image_size"]
    changed += [f"`--image-size {size['ours']}`"] if size["ours"] != size["table"] else []
    changed += [f"`--set {k}={v}`" for k, v in overrides["settings"].items()]
    changed += [f"`--model-override {k}={v}`" for k, v in overrides["models"].items()]
    split = "validation split held out of the training set" if results["split"] == "val" else "test split"
    pixels = "its own image size" if size["ours"] is None else f"{size['ours']} x {size['ours']} pixels"
    lines = [f"Data: `{results['data']}` at {pixels}; our accuracies are on its "
             f"**{split}** ({results['split']}_acc). The paper's: {results['paper_data']}."]
    if changed:
        lines.insert(0, f"**Not the paper's setting: this run used {', '.join(changed)}. Its numbers show the "
                        "pipeline at this budget and are not the paper's claim.**")
    return "\n\n".join(lines)


def _tables(results: Mapping) -> str:
    split = results["split"]
    rows = results["rows"]
    if results["layout"] == "single":
        header = ["Row", f"ours: {split} acc (%)", "ours: #Iter", "ours: train hours", "paper: acc (%)"]
        table = markdown_table(header, [[r["label"], (r["nets"] or [None])[0], _k(r["iterations"]), _hours(r["hours"]),
                                         r["paper"]["acc"]] for r in rows])
        return f"## Results\n\nOurs beside the paper's (separate columns; never mixed).\n\n{table}{_failures(results)}"
    header = ["Row", "Net 1", "Net 2", "Net 3", "Avg", "Ensemble", "#Iter"]
    ours = markdown_table(header, [[r["label"], *_three(r["nets"]), r["avg"], r["ensemble"], _k(r["iterations"])]
                                   for r in rows])
    paper = markdown_table(header, [[r["label"], *_three(r["paper"]["nets"]), r["paper"]["avg"],
                                     r["paper"]["ensemble"], r["paper"]["iterations"]] for r in rows])
    return (f"## Results\n\n### Ours ({split} accuracy, %)\n\n{ours}\n\n"
            f"### The paper's (test accuracy, %; quoted from the paper, not measured here)\n\n{paper}{_failures(results)}")


def _failures(results: Mapping) -> str:
    failed = [f"- {r['label']}: {r['failed']}" for r in results["rows"] if r.get("failed")]
    return "\n\nRows without numbers: their runs failed.\n\n" + "\n".join(failed) if failed else ""


def _three(nets: Sequence) -> list:
    return list(nets[:3]) + [None] * (3 - len(nets[:3]))


def _k(iterations: int | None) -> str | None:
    if iterations is None:
        return None
    return f"{iterations / 1000:g}k" if iterations >= 1000 else str(iterations)


def _hours(hours: float | None) -> str | None:
    return None if hours is None else f"{hours:.3g}"


def _run(name: str | None) -> str:
    return "" if name is None else f" (run {name})"


def _timing_section(results: Mapping) -> str:
    timing, paper = results["timing"], results["paper_timing"]
    live, stored = timing["stage1_live_s_per_100_it"], timing["stage1_stored_s_per_100_it"]
    header = ["", "ours", "paper (one GPU)"]
    table = markdown_table(header, [
        [f"normal training{_run(timing['normal_run'])}, s / 100 it", timing["normal_s_per_100_it"],
         paper.get("normal_s_per_100_it")],
        [f"stage 1, live teacher FSP{_run(timing['stage1_run'])}, s / 100 it",
         live if live is not None else timing["stage1_live_note"], paper.get("stage1_live_s_per_100_it")],
        [f"stage 1, stored teacher FSP{_run(timing['stage1_stored_run'])}, s / 100 it",
         stored if stored is not None else timing["stage1_stored_note"], paper.get("stage1_stored_s_per_100_it")],
    ])
    rows = markdown_table(["Row", "#Iter", "hours", "speed-up over the teacher row", "parameters"],
                          [[r["label"], _k(r["iterations"]), _hours(r["hours"]), r.get("speedup_over_teacher"),
                            f"{r['params']:,}"] for r in results["rows"]])
    note = paper.get("note", "")
    return (f"## Time\n\nMeasured training time only (evaluation excluded), summed over each row's runs; "
            f"a shared stage 1 is counted once.\n\n{table}\n\n{rows}" + (f"\n\nThe paper: {note}" if note else ""))


def _settings_section(results: Mapping) -> str:
    runs = markdown_table(
        ["run", "method", "model", "teacher", "students", "stage 1 it", "task stage it", "batch"],
        [[name, r["method"], _model(r), r["teacher"], r["students"],
          r["stage1_iterations"], r["train_iterations"], r["batch_size"]] for name, r in results["runs"].items()],
    )
    choices = "\n".join(f"- {c}" for c in results["choices"])
    return (f"## Settings\n\nThis run: `{results['rerun']}` (finished runs in the folder are reused). The table: "
            f"`{results['command']}`.\n\n{runs}\n\nEach run's resolved settings are in its folder's `config.yaml`, "
            f"its curves in `metrics.csv`, its numbers in `summary.json`; this report's numbers are in "
            f"`results.json`.\n\nWhere the paper is silent:\n\n{choices}")


def _model(run: Mapping) -> str:
    options = ", ".join(f"{k}={v}" for k, v in run["model_options"].items())
    shuffle = f", shuffle {run['shuffle_seed']}" if run["shuffle_seed"] is not None else ""
    return f"{run['model']}" + (f" ({options})" if options else "") + shuffle
