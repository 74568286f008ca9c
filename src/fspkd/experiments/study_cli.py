"""The ``fspkd study`` command: the fast-optimization study, and with ``--matrix`` the settings matrix."""

from __future__ import annotations

from pathlib import Path

from fspkd.core.errors import FspkdError


def add_study_parser(sub) -> None:
    study = sub.add_parser("study", help="the fast-optimization study (docs/findings.md), or with --matrix the "
                           "settings matrix (docs/matrix.md): scratch, FSP, KD and FitNet at equal task budgets")
    for flag, default, text in (
            ("--out", "runs/study", "output folder of the runs (default runs/study, runs/matrix with --matrix); "
             "rerun to resume"),
            ("--data", "cifar10:../shared/data/cifar10-train-jpg.tar.gz", "data spec"),
            ("--normalize", "imagenet", "input normalisation of every arm (the teacher's)"),
            ("--teacher", "../shared/weights/resnet20-12fca82f.th", "teacher checkpoint"),
            ("--teacher-model", "resnet20", "the teacher's architecture"),
            ("--model", "resnet20", "the students' architecture"),
            ("--budgets", None, "comma-separated task-stage iterations (default 500; with --matrix: only these of "
             "each cell's budgets)"),
            ("--arms", None, "arms separated by ';', each a base arm (scratch, fsp-paper, fsp-best, kd, fitnet) "
             "optionally followed by :key=value,... overrides (default: the five base arms); with --matrix: only "
             "these of the matrix's arms, e.g. 'kd;fitnet' (so that two processes can share a cell)"),
            ("--reference", None, "the arm whose final mean accuracy and wall time the others' time to accuracy "
             "is measured against (default: scratch)"),
            ("--cells", None, "with --matrix: comma-separated cells to run (default: all)"),
            ("--results", "docs/matrix", "with --matrix: folder of the per-arm result files and report.md")):
        study.add_argument(flag, default=default, help=text)
    study.add_argument("--matrix", nargs="?", const="default", help="run the settings matrix of this YAML file "
                       "(default: the shipped one, fspkd/experiments/matrix.yaml); each arm's result is written as "
                       "it ends and skipped on a re-run")
    study.add_argument("--val-split", type=float, default=0.1, help="held-out fraction (default 0.1)")
    study.add_argument("--students", type=int, default=3, help="students per arm (default 3)")
    study.add_argument("--seed", type=int, default=0, help="seed of the split and of the first student")
    study.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs")
    study.add_argument("--quiet", action="store_true", help="no progress output")
    study.set_defaults(handler=_study)


def _study(args) -> int:
    if args.matrix:
        return _matrix(args)
    from fspkd.experiments.study import BASE_ARMS, run_study, write_report

    arms = _arms(args) or list(BASE_ARMS)
    budgets = _budgets(args) or [500]
    base = {"data": args.data, "val_split": args.val_split, "normalize": args.normalize, "teacher": args.teacher,
            "teacher_model": args.teacher_model, "model": args.model, "students": args.students, "seed": args.seed}
    if args.report_only:
        print(write_report(Path(args.out), arms, budgets, args.reference))
    else:
        print(run_study(Path(args.out), arms, budgets, base, progress=not args.quiet, reference=args.reference))
    return 0


def _matrix(args) -> int:
    from fspkd.experiments import matrix

    spec = matrix.load_spec(matrix.default_spec() if args.matrix == "default" else args.matrix)
    cells, results = matrix.select_cells(spec, args.cells), Path(args.results)
    out = Path("runs/matrix" if args.out == "runs/study" else args.out)
    if args.report_only:
        print(matrix.write_matrix_report(spec, results))
    else:
        print(matrix.run_matrix(spec, cells, out, results, progress=not args.quiet, arms=_arms(args),
                                budgets=_budgets(args)))
    return 0


def _arms(args) -> list[str] | None:
    return [a for a in args.arms.split(";") if a] if args.arms else None


def _budgets(args) -> list[int] | None:
    try:
        return [int(b) for b in args.budgets.split(",") if b] if args.budgets else None
    except ValueError:
        raise FspkdError(f"--budgets must be comma-separated whole numbers, got {args.budgets!r}") from None
