"""The ``fspkd reproduce`` command: one of the paper's tables, once or once per seed."""

from __future__ import annotations

import sys

from fspkd.core.config import parse_value
from fspkd.core.errors import FspkdError


def add_reproduce_parser(sub) -> None:
    from fspkd.experiments.paper_tables import list_tables

    parser = sub.add_parser("reproduce", help="one of the paper's tables: every run, report.md and figures")
    parser.add_argument("experiment", choices=list_tables(), help="the paper's experiment (one of its tables)")
    parser.add_argument("--data", required=True, help="data spec, e.g. cifar10:PATH (any set the runs accept)")
    parser.add_argument("--val-split", type=float, default=0.0, help="held-out validation fraction (needed "
                        "when the data has no test split; accuracies are then validation accuracies)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every iteration count, milestone "
                        "and eval interval (default 1 = the paper)")
    parser.add_argument("--image-size", type=int, help="image side of every run (default: the table's, 224 for "
                        "transfer); smaller for CPU budgets (marks the report)")
    parser.add_argument("--seeds", help="run the table once per seed, e.g. 0,1,2, under OUT/seed-K; OUT/report.md "
                        "gives each row's mean ± std over the seeds (default: once, with the table's seed)")
    parser.add_argument("--out", help="output folder (default runs/EXPERIMENT[-scaleF]); finished runs in it "
                        "are reused, interrupted ones resumed")
    parser.add_argument("--teacher", help="transfer: the teacher trained elsewhere (a state dict of "
                        "--teacher-model, torchvision format for resnet34, or one of our checkpoints)")
    parser.add_argument("--teacher-model", help="that teacher's architecture (default: the table's); for "
                        "transfer, resnet34 or mobilenetv2, which picks the student")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a run setting for every run, e.g. batch_size=32, or one schedule field, e.g. task.lr=0.01 "
                        "(repeatable; marks the report)")
    parser.add_argument("--model-override", action="append", default=[], metavar="OLD=NEW",
                        help="a stand-in model, e.g. resnet26=resnet8 (its options dropped; marks the report)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: the local GPU if any, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(handler=_reproduce)


def _reproduce(args) -> int:
    from fspkd.experiments.reproduce import Options, reproduce
    from fspkd.experiments.seeds import parse_seeds, reproduce_seeds

    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    models = _pairs(args.model_override, "--model-override")
    options = Options(data=args.data, scale=args.scale, val_split=args.val_split, teacher=args.teacher,
                      teacher_model=args.teacher_model, image_size=args.image_size,
                      settings=_pairs(args.set, "--set"), models={old: str(new) for old, new in models.items()})
    scale = "" if args.scale == 1 else f"-scale{args.scale:g}"
    out = args.out or f"runs/{args.experiment}{scale}"
    if seeds is None:
        results = reproduce(args.experiment, options, out, progress=not args.quiet, device=args.device)
    else:
        results = reproduce_seeds(args.experiment, options, out, seeds, progress=not args.quiet, device=args.device)
    if not args.quiet:
        for row in results["rows"]:
            print(f"{row['label']}: {results['split']} acc {_shown(row)}")
    if results["failures"]:
        print(f"fspkd: runs failed: {', '.join(results['failures'])} (see {out}/report.md)", file=sys.stderr)
        return 1
    return 0


def _pairs(items: list[str], flag: str) -> dict:
    """['KEY=VALUE', ...] -> {KEY: VALUE} with VALUE read as YAML (numbers, lists, true/false)."""
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise FspkdError(f"{flag} expects KEY=VALUE, got {item!r}")
        pairs[name] = parse_value(value)
    return pairs


def _shown(row: dict) -> str:
    """A row's result in one phrase: one run's accuracy (and ensemble), or the mean ± std over seeds."""
    if "per_seed" in row:
        spread = "" if row["std"] is None else f" ± {row['std']:.2f}"
        return "failed" if row["mean"] is None else f"{row['mean']:.2f}{spread} over {len(row['per_seed'])} seeds"
    if row.get("failed"):
        return f"failed ({row['failed']})"
    ensemble = "" if row["ensemble"] is None else f", ensemble {row['ensemble']:.2f}"
    return f"{row['avg']:.2f}{ensemble}"
