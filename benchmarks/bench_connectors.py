"""Cost of each FSP connector design alone: forward and backward of the student's connected FSP matrices.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_connectors.py --student resnet20 --teacher-width 2

The student runs once; its tapped maps are then fed to each design's connectors (built as a run builds them, from
the fast recipe's tap points) and the matrices' sum is back-propagated, ``--repeats`` times per design, taking
turns so that a machine shared with other work slows them alike. Prints the median milliseconds per design.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fspkd.core.connectors import DESIGNS
from fspkd.core.settings import resolve_config
from fspkd.methods.fsp import FSP
from fspkd.models import create


def connected(student: str, teacher_width: int, design: str) -> FSP:
    """An FSP method of a student and a teacher ``teacher_width`` times as wide, checked: with its connectors."""
    torch.manual_seed(0)
    config = resolve_config(method="fsp", model=student, teacher="unused", fsp_connector=design)
    method = FSP(create(student, num_classes=10), create(student, num_classes=10, width=teacher_width), config)
    method.check(torch.randn(2, 3, 32, 32))
    return method


def time_once(method: FSP, features: dict) -> float:
    started = time.perf_counter()
    matrices = method.connectors.matrices(features, method.student_pairs, method.teacher_pairs)
    sum(g.sum() for g in matrices).backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--teacher-width", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    methods = {design: connected(args.student, args.teacher_width, design) for design in DESIGNS}
    first = next(iter(methods.values()))
    with torch.no_grad():
        first.student(torch.randn(args.batch_size, 3, 32, 32))
    features = {tap: x.detach().requires_grad_() for tap, x in first.student_taps.features.items()}
    times = {design: [] for design in methods}
    for _ in range(args.repeats + 1):  # the first round warms up
        for design, method in methods.items():
            times[design].append(time_once(method, features))
    for design, seconds in times.items():
        print(f"{design:8s} {1000 * statistics.median(seconds[1:]):8.1f} ms  "
              f"({len(methods[design].connectors.links)} connectors)")
    for method in methods.values():
        method.close()


if __name__ == "__main__":
    main()
