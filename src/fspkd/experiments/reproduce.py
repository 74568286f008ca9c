"""``fspkd reproduce EXPERIMENT``: every run of one of the paper's tables, then its report.

Each run of the paper table is a run folder under ``out`` driven by ``fspkd.training.run.train(..., resume=True)``: a
finished run is reused (its stored summary is read back), an interrupted one continues where it stopped. The
table is then built from the runs' summaries (``results.json``) and written as ``report.md`` with figures.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from fspkd.core.checkpoint import save_checkpoint
from fspkd.core.config import RunConfig, load_yaml
from fspkd.core.errors import FspkdError
from fspkd.data import parse_normalize
from fspkd.experiments.paper_tables import EXTERNAL_TEACHER, PaperTable, apply_overrides, load_table, scale_config
from fspkd.experiments.report import write_reproduction_report
from fspkd.models import create
from fspkd.training.build import load_run_data
from fspkd.training.inference import ensemble_of_students, load_network
from fspkd.training.records import weights_payload
from fspkd.training.run import NonFiniteLoss, train

STORED_FSP_NOTE = "not measured in this run: run the table again with --set stored_fsp=true"
LIVE_FSP_NOTE = ("not measured in this run: every FSP run read stored teacher FSP (--set stored_fsp=false runs "
                 "it live)")


@dataclasses.dataclass
class Options:
    """What the command line changes in a paper table."""

    data: str
    scale: float = 1.0
    val_split: float = 0.0
    teacher: str | None = None  # the @teacher file (transfer: e.g. an ImageNet ResNet-34 or MobileNetV2)
    teacher_model: str | None = None  # its architecture, when not the table's (transfer: picks the networks)
    image_size: int | None = None  # every run's, when not the table's
    seed: int | None = None  # every run's, when not the table's (the held-out split stays the table's)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # RunConfig keys for every run
    models: dict[str, str] = dataclasses.field(default_factory=dict)  # model stand-ins, OLD -> NEW


def reproduce(experiment: str, options: Options, out: str | Path, *, progress: bool = True,
              device: str | None = None) -> dict:
    """Run (or finish) every run of ``experiment`` under ``out``; write results.json and report.md there."""
    table = load_table(experiment, options.teacher_model)
    out = Path(out)
    configs = run_configs(table, options, out)
    out.mkdir(parents=True, exist_ok=True)
    summaries, failures = {}, {}
    for name, config in configs.items():
        teacher_run = table.teacher_refs().get(name)
        if teacher_run in failures:
            failures[name] = f"not run: its teacher run {teacher_run!r} failed"
            continue
        if progress:
            print(f"== {experiment}: {name} ({config.method} {config.model})", flush=True)
        if name in table.new_head:
            config = dataclasses.replace(config, teacher=str(_new_head_start(config, out, name)), teacher_model=None)
        _check_same_settings(config, out / name)
        try:
            summaries[name] = train(config, out / name, resume=True, progress=progress, device=device)
        except NonFiniteLoss as err:  # a diverged run is a result too: its row says so, the others go on
            failures[name] = str(err)
    results = collect_results(table, options, configs, summaries, failures, out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_reproduction_report(results, out)
    if progress:
        print(f"report: {out / 'report.md'}")
    return results


def run_configs(table: PaperTable, options: Options, out: Path) -> dict[str, RunConfig]:
    """The table's runs as they will run: data, scale and overrides applied, teachers resolved to files."""
    if options.teacher is None and EXTERNAL_TEACHER in table.teacher_refs().values():
        raise FspkdError(f"experiment {table.name} needs a teacher trained elsewhere: pass --teacher PATH")
    configs = {}
    for name, config in table.runs.items():
        config = dataclasses.replace(config, data=options.data, val_split=options.val_split)
        if options.image_size is not None:
            config = dataclasses.replace(config, image_size=options.image_size)
        if options.seed is not None:
            split_seed = config.seed if config.split_seed is None else config.split_seed
            config = dataclasses.replace(config, seed=options.seed, split_seed=split_seed)
        if config.teacher == EXTERNAL_TEACHER:
            model = options.teacher_model or config.teacher_model
            config = dataclasses.replace(config, teacher=str(options.teacher), teacher_model=model)
        elif config.teacher:
            ref = Path(config.teacher)
            config = dataclasses.replace(config, teacher=str(out / (ref if ref.suffix else ref / "final.pt")))
        configs[name] = apply_overrides(scale_config(config, options.scale), options.settings, options.models)
    return configs


def _check_same_settings(config: RunConfig, run_dir: Path) -> None:
    """A run folder is reused only for the same settings: another --scale or --set needs another --out."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    stored = RunConfig.from_dict(load_yaml(saved), where=str(saved)).to_dict()
    differing = [key for key, value in config.to_dict().items() if stored[key] != value
                 and not (key == "stored_fsp" and value == "auto")]  # a saved choice stands against auto
    if differing:
        raise FspkdError(f"{run_dir} holds a run with other settings ({', '.join(differing)}); "
                         "use the same --data/--scale/--set as before, or another --out")


def _new_head_start(config: RunConfig, out: Path, name: str) -> Path:
    """The teacher's weights with a freshly initialised classifier for this data (the start of fine-tuning)."""
    path = out / "prepared" / f"{name}-start.pt"
    if path.exists():
        return path
    splits = load_run_data(config)
    teacher, _ = load_network(Path(config.teacher), config.teacher_model, config.teacher_options, splits.num_classes,
                              features_only=True)
    torch.manual_seed(config.seed)
    net = create(config.model, num_classes=splits.num_classes, **config.model_options)
    ours, theirs = net.state_dict(), teacher.state_dict()
    if getattr(teacher, "headless_source", None):  # a features-only file: its classifier is not the file's
        theirs = {k: v for k, v in theirs.items() if not k.startswith(f"{teacher.head}.")}
    kept = {k: v for k, v in theirs.items() if k in ours and v.shape == ours[k].shape}
    fresh = [k for k in ours if k not in kept and not k.endswith("num_batches_tracked")]
    if len(fresh) > 2:  # more than the classifier's weight and bias
        raise FspkdError(f"{config.teacher}: {len(fresh)} tensors do not fit {config.model} (e.g. {fresh[:3]}); "
                         "a new head can only replace the classifier")
    net.load_state_dict({**ours, **kept})
    mean, std = parse_normalize(config.normalize, splits)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, weights_payload(net, config.model, config.model_options, splits, mean, std))
    return path


# -- results --------------------------------------------------------------------------------------------------
def collect_results(table: PaperTable, options: Options, configs: dict[str, RunConfig], summaries: dict,
                    failures: dict, out: Path) -> dict:
    """The table (ours and the paper's, apart), the time accounting and the run settings, as plain data."""
    if not summaries:
        raise FspkdError(f"every run of {table.name} failed; the first: {next(iter(failures.values()))}")
    split = held_out_split(summaries)
    rows = [_row_result(row, configs, summaries, failures, split, out) for row in table.rows]
    teacher_hours = rows[0]["hours"]
    for row in rows[1:]:
        row["speedup_over_teacher"] = teacher_hours / row["hours"] if teacher_hours and row["hours"] else None
    return {
        "experiment": table.name,
        "title": table.title,
        "layout": table.layout,
        "command": table.command,
        "scale": options.scale,
        "data": options.data,
        "paper_data": table.paper_data,
        "split": split,
        "overrides": {"settings": options.settings, "models": options.models},
        "teacher": options.teacher,
        "image_size": {"ours": next(iter(configs.values())).image_size,
                       "table": next(iter(table.runs.values())).image_size},
        "choices": table.choices,
        "rerun": command_line(table.name, options, out),
        "runs": {name: _run_digest(config, out) for name, config in configs.items()},
        "rows": rows,
        "failures": failures,
        "timing": _timing(table, configs, summaries),
        "paper_timing": table.paper_timing,
        "figure_runs": {row.label: row.runs[0] for row in table.rows if row.runs[0] in summaries},
    }


def command_line(experiment: str, options: Options, out: Path) -> str:
    """The ``fspkd reproduce`` command that gives these results again (finished runs are reused)."""
    words = ["fspkd reproduce", experiment, "--data", options.data]
    if options.val_split:
        words += ["--val-split", f"{options.val_split:g}"]
    if options.scale != 1:
        words += ["--scale", f"{options.scale:g}"]
    if options.teacher:
        words += ["--teacher", options.teacher]
    if options.teacher_model:
        words += ["--teacher-model", options.teacher_model]
    if options.image_size is not None:
        words += ["--image-size", str(options.image_size)]
    words += [f"--set {key}={value}" for key, value in options.settings.items()]
    words += [f"--model-override {old}={new}" for old, new in options.models.items()]
    return " ".join(words + ["--out", str(out)])


def _run_digest(config: RunConfig, out: Path) -> dict:
    """What a reader of the report needs to know of one run (the rest is in its config.yaml)."""
    teacher = config.teacher
    if teacher and Path(teacher).is_relative_to(out):
        teacher = str(Path(teacher).relative_to(out))
    return {"method": config.method, "model": config.model, "model_options": config.model_options,
            "teacher": teacher, "students": config.students, "shuffle_seed": config.shuffle_seed,
            "stage1_iterations": config.stage1.iterations if config.stage1 else None,
            "train_iterations": config.task.iterations, "batch_size": config.batch_size}


def held_out_split(summaries: dict) -> str:
    """'test' when the data has a test split, else 'val'; an error when it has neither."""
    first = next(iter(summaries.values()))
    if first.get("test_acc") is not None:
        return "test"
    if first.get("val_acc") is not None:
        return "val"
    raise FspkdError("the data has no test split and no validation split: pass --val-split (e.g. 0.1)")


def _row_result(row, configs, summaries, failures: dict, split: str, out: Path) -> dict:
    failed = [f"{run}: {failures[run]}" for run in row.runs if run in failures]
    params = _parameters(configs[row.runs[0]], next(iter(summaries.values()))["num_classes"])
    if failed:
        return {"label": row.label, "runs": row.runs, "nets": [], "avg": None, "ensemble": None,
                "iterations": None, "hours": None, "params": params, "paper": row.paper, "failed": "; ".join(failed)}
    members = [(out / run, student) for run in row.runs for student in summaries[run]["per_student"]]
    nets = [student[f"{split}_acc"] for _, student in members]
    return {
        "label": row.label,
        "runs": row.runs,
        "nets": nets,
        "avg": sum(nets) / len(nets),
        "ensemble": _ensemble(row.runs, summaries, configs, members, split),
        "iterations": sum(summaries[r]["total_iterations"] for r in row.runs),
        "hours": sum(summaries[r]["total_wall_s"] for r in row.runs) / 3600,
        "params": params,
        "paper": row.paper,
    }


def _parameters(config: RunConfig, num_classes: int) -> int:
    """Parameters of a row's network (classifier for this data included; no connector or regressor)."""
    net = create(config.model, num_classes=num_classes, **config.model_options)
    return sum(p.numel() for p in net.parameters())


def _ensemble(runs: list[str], summaries: dict, configs: dict, members: list, split: str) -> float | None:
    """The accuracy of the row's averaged softmax: from the run's summary when one run holds every net, else from
    the nets' stored predictions (or their weights)."""
    if len(members) < 2:
        return None
    stored = summaries[runs[0]].get(f"ensemble_{split}_acc") if len(runs) == 1 else None
    if stored is not None:
        return stored
    config = configs[runs[0]]
    return ensemble_of_students(members, split, data=config.data, val_split=config.val_split,
                                seed=config.held_out_seed, image_size=config.image_size)["ensemble_accuracy"]


def _timing(table: PaperTable, configs: dict, summaries: dict) -> dict:
    """Seconds per 100 iterations: normal training (the first row's run), stage 1 with the live teacher and with
    stored teacher FSP (the first FSP run of each kind, as its summary says; ``--set stored_fsp=true`` makes them
    stored)."""
    first = summaries.get(table.rows[0].runs[0], {"stages": {}})
    normal = first["stages"].get("task", {}).get("s_per_100_it")
    fsp_runs = [n for n, c in configs.items() if c.method == "fsp" and n in summaries]
    stored = [n for n in fsp_runs if summaries[n].get("stored_fsp", configs[n].stored_fsp is True)]
    live = [n for n in fsp_runs if n not in stored]

    def stage1_speed(runs):
        return summaries[runs[0]]["stages"]["stage1"]["s_per_100_it"] if runs else None

    return {"normal_run": table.rows[0].runs[0], "stage1_run": live[0] if live else None,
            "stage1_stored_run": stored[0] if stored else None,
            "normal_s_per_100_it": normal, "stage1_live_s_per_100_it": stage1_speed(live),
            "stage1_stored_s_per_100_it": stage1_speed(stored),
            "stage1_live_note": LIVE_FSP_NOTE, "stage1_stored_note": STORED_FSP_NOTE}
