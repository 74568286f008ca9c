"""The ``fspkd`` command line: train, distill, eval, demo, models, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fspkd.core.config import RunConfig, load_yaml, parse_value
from fspkd.core.errors import FspkdError
from fspkd.core.settings import DEFAULT_FSP_RECIPE, FSP_RECIPES, name_schedule_fields, resolve_config
from fspkd.experiments.reproduce_cli import add_reproduce_parser
from fspkd.experiments.study_cli import add_study_parser

# flag -> (RunConfig key, type, help); only the flags a user gives override the config file and defaults
RUN_FLAGS = {
    "--data": ("data", str, "KIND:PATH (cifar10:, cifar100:, imagefolder:, cub200:), 'synthetic' (built in), or "
               "python:package.module:attribute (your Dataset of (image, label))"),
    "--val-split": ("val_split", float, "fraction of the training set held out for validation (default 0)"),
    "--normalize": ("normalize", str, "dataset (default) | imagenet | none | R,G,B:R,G,B (mean:std)"),
    "--image-size": ("image_size", int, "resize + centre-crop size for imagefolder / cub200 data"),
    "--batch-size": ("batch_size", int, "global batch size over all processes (default 128)"),
    "--seed": ("seed", int, "random seed (default 0); runs are deterministic on CPU"),
    "--split-seed": ("split_seed", int, "seed of the --val-split hold-out (default: --seed), to vary --seed on "
                     "one validation split"),
    "--eval-every": ("eval_every", int, "iterations between evaluations and checkpoints (default 500)"),
    "--eval-images": ("eval_images", int, "held-out images per split in those evaluations, one seeded draw (default "
                      "512; 0 = all); the evaluation that ends the run (summary.json) takes all"),
    "--model": ("model", str, "the student: a name from 'fspkd models' or your package.module:factory"),
    "--precision": ("precision", str, "fp32 (default) | bf16 | fp16 autocast; FSP matrices stay float32"),
    "--log": ("log", str, "csv (default: metrics.csv only) | tensorboard | wandb (extras fspkd[tensorboard|wandb])"),
    "--micro-batches": ("micro_batches", int, "split each process's batch into this many pieces, accumulating "
                        "gradients (default 1)"),
}
SCHEDULE_FLAGS = {
    "iterations": (int, "optimiser steps"),
    "lr": (float, "initial learning rate"),
    "milestones": (lambda s: [int(v) for v in s.split(",") if v], "comma-separated iterations where lr *= 0.1 "
                   "(default: 50%% and 75%% of the iterations, the paper's shape)"),
    "optimizer": (str, "sgd (momentum 0.9, the paper) or adam"),
    "weight-decay": (float, "weight decay (default 1e-4)"),
    "warmup": (int, "iterations of linear lr warm-up (default 0)"),
    "clip-grad": (float, "clip the gradient norm to this value (default 0 = off)"),
}


DISTILL_FLAGS = {
    "--method": ("method", str, "fsp (default) | kd | fitnet | copy"),
    "--teacher": ("teacher", str, "teacher checkpoint: one of our run folders / .pt files, or a foreign state dict"),
    "--teacher-model": ("teacher_model", str, "the teacher's architecture (for foreign checkpoints), as --model"),
    "--students": ("students", int, "students trained on the task from one stage 1 (default 1)"),
    "--fsp-lambda": ("fsp_lambda", float, "lambda of Eq. 2, one for all pairs"),
    "--fsp-first": ("fsp_first", str, "section start taken 'before' or 'after' its down-sampling block; "
                   "default: the recipe's (paper: before, fast: after; 'after' becomes 'before' "
                   "when a network has one-block sections, as ResNet-8)"),
    "--fsp-normalize": ("fsp_normalize", str, "none (the paper's raw matrices) | frobenius (unit-norm matrices "
                        "per sample); default: the recipe's"),
    "--fsp-connector": ("fsp_connector", str, "adapters where student and teacher FSP taps differ in width: auto "
                        "(default; docs/connectors.md) | linear (on the FSP matrices) | conv1x1 (1x1 conv + BN on "
                        "the student's maps) | none (widths must match)"),
    "--task-lr-candidates": ("task_lr_candidates", lambda s: [float(v) for v in s.split(",") if v not in ("", "none")],
                             "task-stage lrs probed from the stage-1 weights, e.g. 0.005,0.02,0.1 ('none': --lr as "
                             "given); default: the recipe's (fast: probe, paper: none)"),
    "--shuffle-seed": ("shuffle_seed", int, "train against channel-shuffled teacher FSP (the paper's dagger)"),
    "--kd-temperature": ("kd_temperature", float, "Hinton KD temperature (default 4)"),
    "--kd-alpha": ("kd_alpha", float, "weight of the soft KD term (default 0.9)"),
    "--fitnet-hints": ("fitnet_hints", int, "1 hint in the middle (default) or 3, one per section"),
    "--stored-fsp-views": ("stored_fsp_views", int, "augmented views stored per image with --stored-fsp (default 4)"),
    "--stored-fsp-dtype": ("stored_fsp_dtype", str, "float16 (default) or float32 storage of --stored-fsp targets"),
}
# on/off flags (--x / --no-x), each a RunConfig key
SWITCHES = ("augment", "flip", "channels_last", "sync_bn", "stored_fsp", "compile_teacher", "fast_teacher",
            "fsp_pre_relu")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except (FspkdError, OSError) as err:  # OSError: a file-system fault no check caught (made read-only mid-run)
        if _is_rank_zero():  # under torchrun every rank fails alike: one message
            print(f"fspkd: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fspkd: interrupted; continue with --resume", file=sys.stderr)
        return 130


def _is_rank_zero() -> bool:
    """True outside torchrun and in its global rank 0: the process that speaks for the run."""
    return os.environ.get("RANK", "0") == "0"


def one_line(message: str) -> str:
    """A message as one line (some library errors quote multi-line text)."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fspkd", description="Knowledge distillation with FSP matrices (Yim et al., CVPR 2017)."
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="plain supervised training (teachers, from-scratch baselines)")
    _add_run_flags(train)
    train.set_defaults(handler=_train, method="plain")
    distill = sub.add_parser("distill", help="train a student from a teacher: FSP (two stages), KD, FitNet, copy")
    _add_run_flags(distill)
    for flag, (_, kind, text) in DISTILL_FLAGS.items():
        distill.add_argument(flag, type=kind, help=text, default=argparse.SUPPRESS)
    distill.add_argument("--fsp-pairs", help="FSP tap pairs for any model: 'a>b,c>d' module paths "
                         "(append ':input' for a module's input)", default=argparse.SUPPRESS)
    distill.add_argument("--teacher-fsp-pairs", help="the teacher's pairs when its module names differ",
                         default=argparse.SUPPRESS)
    distill.add_argument("--stored-fsp", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                         help="stage 1 reads the teacher's FSP matrices from a store built once (in the data cache) "
                         "instead of running the teacher; default (auto): where the store exists, or costs no more "
                         "teacher passes than stage 1 and takes at most half the free disk and memory "
                         "(docs/performance.md)")
    distill.add_argument("--compile-teacher", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                         help="torch.compile the live FSP teacher (faster steps after a compilation at start)")
    distill.add_argument("--fsp-pre-relu", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                         help="tap each block's residual sum before its final ReLU instead of the block's output "
                              "(declared FSP pairs of our ResNets; default off, the paper's block outputs)")
    distill.add_argument("--fast-teacher", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                         help="run the live FSP teacher with BatchNorm folded into its convolutions and, on CPU, "
                              "channels-last (default on; same matrices up to float rounding)")
    distill.add_argument("--fsp-recipe", choices=sorted(FSP_RECIPES), default=argparse.SUPPRESS,
                         help=f"FSP settings by name (default {DEFAULT_FSP_RECIPE!r}): 'paper' = Algorithm 1 as "
                         "printed (SGD stage 1, raw matrices, task lr 0.1); 'fast' = Adam stage 1 on unit-norm "
                         "matrices, task lr 0.005, the best measured setting (docs/findings.md); flags override it")
    distill.add_argument("--teacher-option", action="append", default=[], metavar="KEY=VALUE",
                         help="teacher architecture option, e.g. width=4 (repeatable)")
    _add_schedule_flags(distill, "stage1-", "stage 1 (FSP / hint training)")
    distill.set_defaults(handler=_distill)
    evaluate = sub.add_parser("eval", help="accuracy of networks and of their ensemble (averaged softmax)")
    evaluate.add_argument("--weights", nargs="+", required=True, help="checkpoints (ours or foreign)")
    evaluate.add_argument("--model", help="architecture (default: the one stored in our checkpoints)")
    evaluate.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE")
    evaluate.add_argument("--data", default="synthetic", help="data spec, as for train")
    evaluate.add_argument("--split", default="test", choices=["test", "val", "train"])
    evaluate.add_argument("--val-split", type=float, default=0.0, help="the held-out fraction used in training")
    evaluate.add_argument("--seed", type=int, default=0, help="the seed of that split")
    evaluate.add_argument("--normalize", help="default: the statistics stored in our checkpoints, else 'dataset'")
    evaluate.add_argument("--image-size", type=int)
    evaluate.add_argument("--json", action="store_true", help="print machine-readable results")
    evaluate.set_defaults(handler=_eval)
    demo = sub.add_parser("demo", help="the main job in a few CPU minutes: the shipped CIFAR-10 images and "
                          "pretrained teacher, scratch / FSP / KD / FitNet students at one budget and scratch at "
                          "3x, report.md and results.json with curves and time to accuracy")
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo); a rerun finishes "
                      "what is missing")
    demo.add_argument("--scale", type=float, default=1.0, help="multiply every iteration count (default 1)")
    demo.add_argument("--data", help="your data (KIND:PATH as for train, or synthetic) instead of the shipped "
                      "CIFAR-10 subset")
    demo.add_argument("--teacher", help="your teacher (run folder, checkpoint or state dict); default: the "
                      "shipped ResNet-20 on the shipped data, else a teacher trained first")
    demo.add_argument("--teacher-model", help="the teacher's architecture, for a plain state dict")
    demo.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    demo.add_argument("--cpus", type=int, help="CPUs to use (default: all available); the runs share them as "
                      "parallel processes")
    demo.set_defaults(handler=_demo)
    bench = sub.add_parser("bench", help="speed: plain step vs stage 1 (live teacher, stored FSP), FSP loss, "
                           "data path vs a per-image Pillow pipeline, peak memory; prints a table")
    bench.add_argument("--json", help="also write the results and ratios to this file")
    bench.add_argument("--pairs", default="resnet26:resnet26,resnet56:resnet20",
                       help="teacher:student pairs, comma-separated (default resnet26:resnet26,resnet56:resnet20)")
    bench.add_argument("--batch-size", type=int, default=128)
    bench.add_argument("--repeats", type=int, default=10, help="timed repeats after one warm-up (median reported)")
    bench.add_argument("--steps", type=int, default=1, help="steps per case in each repeat (default 1)")
    bench.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own)")
    bench.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                       help="networks and batches channels-last, the training default (--no-channels-last: NCHW)")
    bench.add_argument("--compare-layouts", action="store_true",
                       help="also time plain and stage 1 (live, stored) in the other layout")
    bench.add_argument("--compile", action="store_true", help="also time live stage 1 with a torch.compile'd teacher")
    bench.add_argument("--compare-threads", default="",
                       help="also time the plain step with these intra-op thread counts, e.g. 1,2")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--fsp-first", choices=("before", "after"), default="before",
                       help="FSP taps: sections start before their down-sampling block (the paper's, default) or "
                       "after it (the fast recipe's)")
    bench.set_defaults(handler=_bench)
    add_reproduce_parser(sub)
    add_study_parser(sub)
    models = sub.add_parser("models", help="list the models with their sizes and FSP tap widths, to pick a pair")
    models.add_argument("--pairs", metavar="MODEL", help="the FSP sections and FitNet hint a dry run finds in MODEL")
    models.add_argument("--image-size", type=int, default=32, help="input size of the --pairs dry run")
    models.set_defaults(handler=_models)
    return parser


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of run settings (flags override it)")
    parser.add_argument("--out", required=True, help="output folder of the run")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the local GPU if any, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    for flag, (_, kind, text) in RUN_FLAGS.items():
        parser.add_argument(flag, type=kind, help=text, default=argparse.SUPPRESS)
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="model option, e.g. width=4 or shortcut=B (repeatable)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                        help="pad 4 + random crop (default: the data set's, as the paper: CIFAR-100 none)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                        help="random horizontal flips (default off: the paper does not mention them)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                        help="channels-last networks and batches (default on: faster convolutions on CPU, "
                             "docs/performance.md; --no-channels-last: NCHW)")
    parser.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                        help="SyncBatchNorm under multi-GPU torchrun (default on; CPU runs keep per-process BN)")
    _add_schedule_flags(parser, "", "the task stage (the second of two-stage methods)")


def _add_schedule_flags(parser, prefix: str, what: str) -> None:
    group = parser.add_argument_group(f"schedule of {what}")
    for name, (kind, text) in SCHEDULE_FLAGS.items():
        group.add_argument(f"--{prefix}{name}", type=kind, help=text, default=argparse.SUPPRESS,
                           dest=f"{prefix}{name}".replace("-", "_"))


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run's settings: the --config file (with --resume: the run's saved config.yaml), then the flags given,
    resolved by ``fspkd.resolve_config`` as the Python API resolves them."""
    saved = Path(args.out) / "config.yaml" if getattr(args, "resume", False) else None
    source = saved if saved is not None and saved.exists() else getattr(args, "config", None)
    given = load_yaml(source) if source else {}
    flags = vars(args)
    for flag, (key, _, _) in {**RUN_FLAGS, **DISTILL_FLAGS}.items():
        if (dest := flag[2:].replace("-", "_")) in flags:
            given[key] = flags[dest]
    for key in SWITCHES + ("fsp_recipe",):
        if key in flags:
            given[key] = flags[key]
    for key in ("fsp_pairs", "teacher_fsp_pairs"):
        if key in flags:
            given[key] = _parse_pairs(flags[key])
    for stage, prefix in (("task", ""), ("stage1", "stage1_")):
        named = {name.replace("-", "_"): flags[dest] for name in SCHEDULE_FLAGS
                 if (dest := f"{prefix}{name}".replace("-", "_")) in flags}
        if named:
            name_schedule_fields(given, stage, named, where=str(source or "configuration"))
    if args.handler is _train:
        given.update(method="plain")
        given.pop("stage1", None)  # a config file shared with a distillation run
    else:
        given.setdefault("method", "fsp")
    _merge_options(given, "model_options", flags.get("model_option", []))
    _merge_options(given, "teacher_options", flags.get("teacher_option", []))
    return resolve_config(given, where=str(source or "configuration"))


def _parse_pairs(text: str) -> list[list[str]]:
    pairs = [p.split(">") for p in text.split(",") if p]
    if not pairs or any(len(p) != 2 or not all(p) for p in pairs):
        raise FspkdError(f"--fsp-pairs expects 'first>second,first>second', got {text!r}")
    return pairs


def _merge_options(data: dict, key: str, items: list[str]) -> None:
    if not items or not isinstance(data.get(key) or {}, dict):
        return  # a config file's value is left as it is: the settings' type check names it with its file
    options = dict(data.get(key) or {})
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise FspkdError(f"model options are KEY=VALUE, got {item!r}")
        options[name] = parse_value(value)
    data[key] = options


def _run(args, config: RunConfig) -> int:
    from fspkd.training.run import train

    if args.resume and not _names_settings(args):
        config = None  # continue with the run's saved config.yaml
    summary = train(config, args.out, resume=args.resume, progress=not args.quiet, device=args.device)
    if not args.quiet and _is_rank_zero():
        shown = {k: summary.get(k) for k in ("val_acc", "test_acc", "ensemble_val_acc", "ensemble_test_acc")}
        print(json.dumps({k: round(v, 2) for k, v in shown.items() if v is not None}))
    return 0


def _names_settings(args) -> bool:
    """Whether the command line gives any run setting (setting flags appear in ``args`` only when given)."""
    control = {"out", "resume", "device", "quiet", "handler", "config", "model_option", "teacher_option"}
    given = set(vars(args)) - control
    if args.handler is _train:
        given.discard("method")  # set by the subcommand itself
    return bool(given or args.config or args.model_option or getattr(args, "teacher_option", []))


def _train(args) -> int:
    return _run(args, config_from_args(args))


def _distill(args) -> int:
    return _run(args, config_from_args(args))


def _eval(args) -> int:
    from fspkd.training.inference import evaluate_checkpoints

    results = evaluate_checkpoints(
        args.weights, data=args.data, split=args.split, model=args.model,
        model_options=dict(_option_pairs(args.model_option)), normalize=args.normalize,
        val_split=args.val_split, seed=args.seed, image_size=args.image_size,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for item in results["networks"]:
        print(f"{item['accuracy']:6.2f}%  {item['weights']}")
    if "ensemble_accuracy" in results:
        print(f"{results['ensemble_accuracy']:6.2f}%  ensemble of {len(results['networks'])} (averaged softmax)")
        print(f"{results['disagreement']:6.2f}%  of the images on which two members disagree (mean over pairs)")
    return 0


def _option_pairs(items):
    data: dict = {}
    _merge_options(data, "options", items)
    return data.get("options", {}).items()


def _demo(args) -> int:
    from fspkd.experiments.demo import run_demo

    run_demo(Path(args.out), scale=args.scale, data=args.data, teacher=args.teacher,
             teacher_model=args.teacher_model, seed=args.seed, cpus=args.cpus)
    return 0


def _bench(args) -> int:
    import torch

    from fspkd.experiments.bench import format_table, run_bench
    from fspkd.models import list_models

    pairs = [tuple(p.split(":")) for p in args.pairs.split(",") if p]
    if not pairs or any(len(p) != 2 or not all(p) for p in pairs):
        raise FspkdError(f"--pairs expects 'teacher:student,teacher:student', got {args.pairs!r}")
    unknown = sorted({name for pair in pairs for name in pair} - set(list_models()))
    if unknown:
        raise FspkdError(f"--pairs: unknown model {unknown[0]!r}; see 'fspkd models'")
    for flag in ("batch_size", "repeats", "steps", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise FspkdError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_bench(pairs, batch_size=args.batch_size, repeats=args.repeats, steps=args.steps,
                        channels_last=args.channels_last, compare_layouts=args.compare_layouts,
                        compile_teacher=args.compile, device=args.device,
                        thread_counts=_thread_counts(args.compare_threads), fsp_first=args.fsp_first,
                        log=lambda text: print(text, file=sys.stderr))
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _thread_counts(text: str) -> list[int]:
    try:
        counts = [int(v) for v in text.split(",") if v]
    except ValueError:
        counts = [0]
    if any(c < 1 for c in counts):
        raise FspkdError(f"--compare-threads expects positive integers such as '1,2', got {text!r}")
    return counts


def _models(args) -> int:
    from fspkd.models.summary import found_sections, model_table

    print(found_sections(args.pairs, args.image_size) if args.pairs else model_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
