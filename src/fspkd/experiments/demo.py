"""``fspkd demo``: the main job on the built-in data in a few CPU minutes.

Trains a teacher, then five students of a smaller network (from scratch, FSP with the default recipe and with the
paper's, FitNet, Hinton KD) with the same task-stage budget, prints a table and writes ``report.md`` with the
paper's Figure 3 for these runs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from fspkd.core.config import RunConfig
from fspkd.core.settings import DEFAULT_FSP_RECIPE, resolve_config
from fspkd.experiments.report import markdown_table, plot_training_curves
from fspkd.training.run import train

# Budgets in iterations at batch 128; --scale multiplies them all.
TEACHER = "resnet14"
STUDENT = "resnet8"
TEACHER_ITERATIONS = 800
STUDENT_ITERATIONS = 400
STAGE1_ITERATIONS = 200


def demo_configs(scale: float = 1.0) -> dict[str, RunConfig]:
    """The demo's runs by name, in the order they must run (the teacher first)."""

    def length(iterations: int) -> dict:
        return {"iterations": max(1, round(iterations * scale))}  # the paper's shape: lr / 10 at 50% and 75%

    base = {"data": "synthetic", "eval_every": max(1, round(100 * scale)), "seed": 0}
    student = {**base, "model": STUDENT, "task": length(STUDENT_ITERATIONS), "teacher": "teacher"}
    return {
        "teacher": resolve_config(base, method="plain", model=TEACHER, task=length(TEACHER_ITERATIONS)),
        "scratch": resolve_config(student, method="plain", teacher=None),
        "fsp": resolve_config(student, method="fsp", stage1=length(STAGE1_ITERATIONS)),
        "fsp-paper": resolve_config(student, method="fsp", stage1=length(STAGE1_ITERATIONS), fsp_recipe="paper"),
        "fitnet": resolve_config(student, method="fitnet", stage1=length(STAGE1_ITERATIONS)),
        "kd": resolve_config(student, method="kd"),
    }


def run_demo(out: Path, scale: float = 1.0, progress: bool = True) -> dict:
    """Run (or finish) every demo run under ``out`` and write ``out/report.md``; returns the results."""
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, config in demo_configs(scale).items():
        if config.teacher:
            config = dataclasses.replace(config, teacher=str(out / "teacher"))
        if progress:
            print(f"== {name}: {config.method} {config.model}", flush=True)
        results[name] = train(config, out / name, resume=True, progress=progress)
    rows = [
        [name, s["model"], s["method"], s["test_acc"], s["total_iterations"], s["total_wall_s"]]
        for name, s in results.items()
    ]
    table = markdown_table(["run", "model", "method", "test acc (%)", "iterations", "train time (s)"], rows)
    plot_training_curves({n: out / n for n in results}, out / "curves.png",
                         title=f"fspkd demo on the built-in synthetic data (scale {scale:g})")
    (out / "report.md").write_text(_report(table, scale))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(table)
    print(f"report: {out / 'report.md'}")
    return results


def _report(table: str, scale: float) -> str:
    return f"""# fspkd demo

Built-in synthetic data (10 classes, 32x32, generated from a seed), teacher {TEACHER}, students {STUDENT}.
Every student gets the same task-stage budget; FSP and FitNet first run their stage 1 (counted in iterations and
train time). `fsp` uses the tool's default recipe ({DEFAULT_FSP_RECIPE!r}), `fsp-paper` the paper's Algorithm 1 (see
docs/findings.md). Scale {scale:g}: a demonstration of the pipeline, not a reproduction of the paper's
numbers.

{table}

![accuracy and loss against iterations and wall time](curves.png)

Reproduce: `fspkd demo --out {{this folder}}{'' if scale == 1 else f' --scale {scale:g}'}`.
"""
