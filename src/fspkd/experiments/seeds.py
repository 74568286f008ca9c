"""``fspkd reproduce --seeds``: one paper table run once per seed (``OUT/seed-K``), its rows as mean ± std.

Each seed is a whole ``reproduce`` of the table with every run's ``seed`` set to K; the held-out split stays the
table's, so the seeds differ in initialisation and batch order only. ``OUT/results.json`` and ``OUT/report.md``
give per row the mean ± sample standard deviation over the seeds, every seed's value, the training hours and the
row network's parameter count beside the teacher's; the paper's figures stay in their own column.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from fspkd.core.errors import FspkdError
from fspkd.experiments.report import markdown_table, scale_notice
from fspkd.experiments.reproduce import Options, command_line, reproduce


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: distinct integers >= 0."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise FspkdError(f"--seeds expects distinct integers >= 0 such as '0,1,2', got {text!r}")
    return seeds


def reproduce_seeds(experiment: str, options: Options, out: str | Path, seeds: list[int], *,
                    progress: bool = True, device: str | None = None) -> dict:
    """Run (or finish) the table once per seed under ``out/seed-K``; write the summary over seeds in ``out``."""
    out = Path(out)
    per_seed = {}
    for seed in seeds:
        if progress:
            print(f"=== {experiment}: seed {seed}", flush=True)
        per_seed[seed] = reproduce(experiment, dataclasses.replace(options, seed=seed), out / f"seed-{seed}",
                                   progress=progress, device=device)
    results = summarise(per_seed, options, out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_seeds_report(results, out)
    if progress:
        print(f"report: {out / 'report.md'}")
    return results


def summarise(per_seed: dict[int, dict], options: Options, out: Path) -> dict:
    """The table over seeds as plain data: one row per table row, the seeds' values in seed order."""
    first = next(iter(per_seed.values()))
    seeds = list(per_seed)
    rows = [_row_over_seeds([per_seed[s]["rows"][i] for s in seeds], first["rows"][0]["params"])
            for i in range(len(first["rows"]))]
    rerun, _, _ = command_line(first["experiment"], options, out).rpartition(" --out ")
    keep = ("experiment", "title", "layout", "command", "scale", "data", "paper_data", "split", "overrides",
            "teacher", "image_size", "choices")
    return {**{key: first[key] for key in keep}, "seeds": seeds, "rows": rows,
            "rerun": f"{rerun} --seeds {','.join(map(str, seeds))} --out {out}",
            "failures": {f"seed-{s}/{run}": why for s, r in per_seed.items() for run, why in r["failures"].items()},
            "seed_reports": [f"seed-{s}/report.md" for s in seeds]}


def _row_over_seeds(rows: list[dict], teacher_params: int) -> dict:
    """One row: its value per seed (None where the seed's run failed), mean and sample std of the finished."""
    values = [r["avg"] for r in rows]
    done = [v for v in values if v is not None]
    hours = [r["hours"] for r in rows if r["hours"] is not None]
    paper = rows[0]["paper"]
    return {"label": rows[0]["label"], "runs": rows[0]["runs"], "per_seed": values,
            "mean": statistics.fmean(done) if done else None,
            "std": statistics.stdev(done) if len(done) > 1 else None,
            "hours_per_seed": [r["hours"] for r in rows], "hours_mean": statistics.fmean(hours) if hours else None,
            "params": rows[0]["params"], "params_vs_teacher": rows[0]["params"] / teacher_params,
            "paper": paper.get("acc", paper.get("avg"))}


def write_seeds_report(results: dict, out: Path) -> Path:
    """``out/report.md``: the rows over seeds, ours and the paper's in separate columns."""
    n = len(results["seeds"])
    seeds = ", ".join(map(str, results["seeds"]))
    header = ["Row", f"ours: {results['split']} acc, mean ± std over {n} seeds (%)", f"ours: seeds {seeds}",
              "ours: train hours per seed (mean)", "parameters", "x the teacher's", "paper: acc (%)"]
    table = markdown_table(header, [[r["label"], _mean_std(r), " / ".join(_pct(v) for v in r["per_seed"]),
                                     _hours(r["hours_mean"]), f"{r['params']:,}", f"{r['params_vs_teacher']:.2f}",
                                     r["paper"]] for r in results["rows"]])
    failed = "\n".join(f"- {name}: {why}" for name, why in results["failures"].items())
    links = "\n".join(f"- [{path}]({path})" for path in results["seed_reports"])
    choices = "\n".join(f"- {c}" for c in results["choices"])
    parts = [f"# {results['title']} ({n} seeds)", scale_notice(results),
             f"## Results\n\nOurs beside the paper's (separate columns; never mixed). std is the sample standard "
             f"deviation (n - 1) over the seeds whose run finished; parameters count the row's network with this "
             f"data's classifier. Train hours exclude evaluation.\n\n{table}",
             f"Runs that failed (their seed is left out of the row's mean):\n\n{failed}" if failed else "",
             f"## Each seed\n\nEvery seed's own report (figures, time, settings):\n\n{links}",
             f"## Settings\n\nThis run: `{results['rerun']}` (finished runs are reused). The table: "
             f"`{results['command']}`.\n\nWhere the paper is silent:\n\n{choices}"]
    path = out / "report.md"
    path.write_text("\n\n".join(p for p in parts if p) + "\n")
    return path


def _mean_std(row: dict) -> str | None:
    if row["mean"] is None:
        return None
    std = "" if row["std"] is None else f" ± {row['std']:.2f}"
    return f"{row['mean']:.2f}{std}"


def _pct(value: float | None) -> str:
    return "failed" if value is None else f"{value:.2f}"


def _hours(hours: float | None) -> str | None:
    return None if hours is None else f"{hours:.3g}"
