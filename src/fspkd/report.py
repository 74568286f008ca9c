"""Figures and markdown reports from run folders: the paper's Figure 3 (accuracy and loss against wall time and
iterations) and result tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from .runlog import read_metrics  # noqa: E402


def curves(run_dir: str | Path, member: int = 0) -> dict[str, list]:
    """One run's training curves with iterations counted over all its stages (stage 1 included)."""
    rows = [r for r in read_metrics(Path(run_dir) / "metrics.csv") if r["member"] in (0, member)]
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
