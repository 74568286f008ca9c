"""``fspkd demo``: FSP's fast optimisation on real CIFAR-10 images, with a real pretrained teacher, in CPU minutes.

The package ships a balanced subset of the CIFAR-10 training JPEGs, 2,000 test JPEGs that the shipped teacher never
saw, and that teacher (a ResNet-20 trained with ``fspkd train``; see ``demo_data/README.md``). The demo checks the
teacher on the test images, then trains students of a smaller network at one task budget B (from scratch, FSP with
the default recipe, KD, FitNet; the two-stage arms also run their stage 1) and a scratch student at 3B, the full
schedule against which the paper's fast-optimisation claim is read. It prints and writes ``report.md`` and
``results.json``: test accuracy, iterations and training seconds per run, the teacher's accuracy, curves against
iterations and wall time, and how long FSP took to reach the 3B student's accuracy.

With ``data`` and ``teacher`` the same demo runs on a user's own data and teacher; other data without a teacher
trains one first (``--data synthetic`` is the generated shapes data set, for tests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from fspkd.core.config import RunConfig
from fspkd.core.errors import FspkdError
from fspkd.core.settings import DEFAULT_FSP_RECIPE, resolve_config
from fspkd.experiments.report import curves, markdown_table, plot_training_curves, reached_text, time_to_accuracy
from fspkd.training.inference import evaluate_checkpoints
from fspkd.training.run import train

DEMO_DATA_DIR = Path(__file__).with_name("demo_data")
DEMO_DATA = DEMO_DATA_DIR / "cifar10-demo.tar.gz"
DEMO_DATA_SHA256 = "0ac6ae56eda1a0e3980697fe6b9dd15bc9637263daf2a6b372be8eba8f37e174"
DEMO_TEACHER = DEMO_DATA_DIR / "resnet20-cifar10-demo.safetensors"
DEMO_TEACHER_MODEL = "resnet20"

STUDENT = "resnet8"
BATCH_SIZE = 64
# Budgets in iterations; --scale multiplies them all. FULL_FACTOR x the task budget is the "full schedule".
TASK_ITERATIONS = 400
STAGE1_ITERATIONS = 200
FULL_FACTOR = 3
EVALUATIONS = 4  # per task budget: cheap against the steps, enough for a curve
# A teacher trained first when the data is not the shipped set and no teacher is named.
OWN_TEACHER = "resnet14"
OWN_TEACHER_ITERATIONS = 800


def demo_configs(scale: float = 1.0, data: str | None = None, teacher: str | None = None,
                 teacher_model: str | None = None, seed: int = 0) -> dict[str, RunConfig]:
    """The demo's runs by name, in the order they run (a teacher to train first, if any, comes first)."""

    def length(iterations: int) -> dict:
        return {"iterations": max(1, round(iterations * scale))}  # the paper's shape: lr / 10 at 50% and 75%

    shipped = data is None
    if shipped and teacher is None:
        teacher, teacher_model = str(DEMO_TEACHER), DEMO_TEACHER_MODEL
    base = {"data": data or f"cifar10:{DEMO_DATA}", "seed": seed, "batch_size": BATCH_SIZE,
            "eval_every": max(1, round(TASK_ITERATIONS * scale / EVALUATIONS))}
    if shipped:
        base["normalize"] = "imagenet"  # the shipped teacher's input normalisation
    runs = {}
    if teacher is None:
        runs["teacher"] = resolve_config(base, method="plain", model=OWN_TEACHER,
                                         task=length(OWN_TEACHER_ITERATIONS))
        teacher = "teacher"  # resolved against the output folder by run_demo
    student = {**base, "model": STUDENT, "task": length(TASK_ITERATIONS), "teacher": teacher,
               "teacher_model": teacher_model}
    runs.update({
        "scratch": resolve_config(student, method="plain", teacher=None, teacher_model=None),
        "fsp": resolve_config(student, method="fsp", stage1=length(STAGE1_ITERATIONS)),
        "kd": resolve_config(student, method="kd"),
        "fitnet": resolve_config(student, method="fitnet", stage1=length(STAGE1_ITERATIONS)),
        f"scratch-{FULL_FACTOR}x": resolve_config(student, method="plain", teacher=None, teacher_model=None,
                                                  task=length(FULL_FACTOR * TASK_ITERATIONS)),
    })
    return runs


def check_demo_data(path: Path = DEMO_DATA) -> Path:
    """``path`` if its SHA-256 is the shipped archive's; one clear line otherwise."""
    if not path.is_file():
        raise FspkdError(f"{path}: the demo's data archive is missing (reinstall fspkd)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != DEMO_DATA_SHA256:
        raise FspkdError(f"{path}: SHA-256 {digest[:12]}... is not the shipped archive's "
                         f"{DEMO_DATA_SHA256[:12]}... (the file is damaged; reinstall fspkd)")
    return path


def run_demo(out: Path, scale: float = 1.0, data: str | None = None, teacher: str | None = None,
             teacher_model: str | None = None, seed: int = 0, cpus: int | None = None,
             progress: bool = True) -> dict:
    """Run (or finish) every demo run under ``out``; write ``report.md``, ``results.json`` and ``curves.png``."""
    start = time.perf_counter()
    if data is None:
        check_demo_data()
    out.mkdir(parents=True, exist_ok=True)
    configs = demo_configs(scale, data, teacher, teacher_model, seed)
    if "teacher" in configs:
        if progress:
            print("== teacher: training one first (no --teacher named for this data)", flush=True)
        train(configs.pop("teacher"), out / "teacher", resume=True, progress=progress)
        configs = {name: dataclasses.replace(c, teacher=str(out / "teacher")) for name, c in configs.items()}
    trained = train_runs(configs, out, cpus or available_cpus(), progress)
    students = {name: trained[name] for name in configs}  # the report's order
    teacher_acc = _teacher_accuracy(configs["fsp"].teacher, configs["fsp"])
    results = _results(out, students, configs["fsp"].teacher, teacher_acc, scale, seed)
    results["demo_wall_s"] = round(time.perf_counter() - start, 1)
    plot_training_curves({n: out / n for n in students}, out / "curves.png",
                         title=f"fspkd demo: {results['data']} (scale {scale:g}, seed {seed})")
    report = _report(results)
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(report)
    print(f"report: {out / 'report.md'}\ndemo finished in {_minutes(results['demo_wall_s'])} "
          "(decoding, teacher check, training and evaluation)")
    return results


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def train_runs(configs: dict[str, RunConfig], out: Path, cpus: int, progress: bool) -> dict[str, dict]:
    """Train every run of ``configs`` into ``out/<name>`` and return the summaries.

    Small networks use several cores better as separate single-run processes than as threads inside one run, so
    with more than one CPU the runs share them as parallel processes, longest first (each run's own threads are
    the CPUs over the processes). Runs already finished are only read back.
    """
    workers = min(cpus, len(configs))
    if workers == 1:
        return {name: _announce(name, train(c, out / name, resume=True, progress=progress), progress)
                for name, c in configs.items()}
    order = sorted(configs, key=lambda name: -_iterations(configs[name]))
    summaries = {}
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_train_quietly, configs[name], out / name, max(1, cpus // workers)): name
                   for name in order}
        if progress:
            print(f"== training {len(order)} runs, {workers} at a time: {', '.join(order)}", flush=True)
        for future in as_completed(futures):
            summaries[futures[future]] = _announce(futures[future], future.result(), progress)
    return summaries


def _train_quietly(config: RunConfig, out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    return train(config, out, resume=True, progress=False)


def _announce(name: str, summary: dict, progress: bool) -> dict:
    if progress:
        print(f"== {name} done: {summary['test_acc']:.2f}% after {summary['total_iterations']} iterations, "
              f"{summary['total_wall_s']:.0f} s of training", flush=True)
    return summary


def _iterations(config: RunConfig) -> int:
    return config.task.iterations + (config.stage1.iterations if config.stage1 else 0)


def _teacher_accuracy(path: str, student: RunConfig) -> float:
    """The teacher's accuracy on the test images, with the input normalisation the students give it."""
    result = evaluate_checkpoints([path], data=student.data, model=student.teacher_model,
                                  model_options=student.teacher_options, normalize=student.normalize)
    return result["networks"][0]["accuracy"]


def _results(out: Path, students: dict, teacher: str, teacher_acc: float, scale: float, seed: int) -> dict:
    full = f"scratch-{FULL_FACTOR}x"
    target = students[full]["test_acc"]
    reference_wall = students[full]["total_wall_s"]
    runs = []
    for name, summary in students.items():
        reached = time_to_accuracy(curves(out / name), target)
        runs.append({
            "run": name, "method": summary["method"], "model": summary["model"], "test_acc": summary["test_acc"],
            "iterations": summary["total_iterations"], "wall_s": round(summary["total_wall_s"], 1),
            "task_lr": summary["task_lr"],
            "probe_iterations": summary["stages"].get("lr_probe", {}).get("iterations", 0),
            "reached_full_at": None if reached is None else {"iteration": reached[0], "wall_s": round(reached[1], 1)},
        })
    return {
        "data": students["scratch"]["data"], "teacher": teacher, "teacher_test_acc": teacher_acc,
        "student": STUDENT, "scale": scale, "seed": seed, "fsp_recipe": DEFAULT_FSP_RECIPE,
        "target": {"run": full, "test_acc": target, "wall_s": round(reference_wall, 1),
                   "iterations": students[full]["total_iterations"]},
        "runs": runs,
    }


def time_sentence(results: dict) -> str:
    """One plain sentence: when FSP reached the full-schedule scratch student's accuracy, against its wall time."""
    target = results["target"]
    fsp = next(r for r in results["runs"] if r["run"] == "fsp")
    at = fsp["reached_full_at"]
    said = reached_text(target["test_acc"], at and at["wall_s"], target["wall_s"], f"the {target['run']} student")
    if at is None:
        return (f"FSP {said}, the {target['run']} student's accuracy, within its budget: it ended at "
                f"{fsp['test_acc']:.2f}% after {fsp['wall_s']:.0f} s of training "
                f"({fsp['wall_s'] / target['wall_s']:.2f} times that student's {target['wall_s']:.0f} s).")
    return (f"FSP {said}, the {target['run']} student's accuracy (training time, stage 1 included; "
            f"{at['iteration']} iterations against {target['iterations']}).")


def _report(results: dict) -> str:
    rows = [[r[key] for key in ("run", "method", "test_acc", "iterations", "wall_s", "task_lr")] for r in results["runs"]]
    table = markdown_table(["run", "method", "test acc (%)", "iterations", "training time (s)", "task-stage lr"], rows)
    fsp = next(r for r in results["runs"] if r["run"] == "fsp")
    probe = (f", whose probe picked the task-stage lr from the stage-1 weights ({fsp['probe_iterations']} probe steps, "
             "counted in its iterations and time)" if fsp["probe_iterations"] else "")
    scale = results["scale"]
    again = ("fspkd demo" + ("" if scale == 1 else f" --scale {scale:g}")
             + ("" if not results["seed"] else f" --seed {results['seed']}")
             + ("" if results["teacher"] == str(DEMO_TEACHER) else " --data ... --teacher ... (as given)"))
    return f"""# fspkd demo

Data `{results['data']}`; teacher `{results['teacher']}`: **{results['teacher_test_acc']:.2f}%** on the test
images. Students: {results['student']}. Every student but `{results['target']['run']}` gets the same task budget;
FSP and FitNet first run their stage 1, counted in iterations and training time (optimiser steps, evaluation
excluded). `fsp` uses the tool's default recipe ({results['fsp_recipe']!r}){probe}. Accuracy is on the test images,
evaluated a few times per run for the curves; no run trains or selects anything on them. One seed ({results['seed']}): see
the project's docs/demo.md for the spread over seeds.

{table}

{time_sentence(results)}

![accuracy and task loss against iterations and wall time](curves.png)

The whole demo took {_minutes(results['demo_wall_s'])} (decoding, teacher check, training, evaluation).
Reproduce: `{again}`.
"""


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"
