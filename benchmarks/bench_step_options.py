"""Training speed of the step options side by side: fp32, bf16 autocast, and the batch in two micro-batches.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_step_options.py --model resnet20 --iterations 30

Each option trains the same plain run (synthetic data, fixed seed) for a few iterations; the options take turns
for ``--repeats`` rounds so that a machine shared with other work slows them alike. Prints the median seconds per
100 iterations of each and its ratio to fp32 (measured here, in this process: compare ratios, not seconds).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from fspkd.core.config import RunConfig, Schedule
from fspkd.training.run import train

OPTIONS = {"fp32": {}, "bf16": {"precision": "bf16"}, "micro_batches=2": {"micro_batches": 2}}


def seconds_per_100(config: RunConfig, folder: Path) -> float:
    summary = train(config, folder, progress=False)
    return summary["stages"]["task"]["s_per_100_it"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {name: [] for name in OPTIONS}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for name, options in OPTIONS.items():
                config = RunConfig(model=args.model, data="synthetic:2560,100", batch_size=args.batch_size,
                                   eval_every=args.iterations, task=Schedule(iterations=args.iterations, lr=0.05),
                                   **options)
                times[name].append(seconds_per_100(config, Path(scratch) / f"{name}-{repeat}"))
    base = statistics.median(times["fp32"])
    print(f"{args.model}, batch {args.batch_size}, {args.iterations} iterations x {args.repeats} rounds, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'option':<16} {'s / 100 it':>10} {'vs fp32':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<16} {median:>10.2f} {median / base:>7.2f}x")


if __name__ == "__main__":
    main()
