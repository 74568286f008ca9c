"""What a run leaves behind as it goes: ``metrics.csv`` rows and a progress display."""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

from fspkd.core.atomic import atomic_write, write_failure
from fspkd.core.errors import FspkdError

METRIC_COLUMNS = [
    "student", "stage", "iteration", "wall_s", "lr", "loss",
    "task_loss", "fsp_loss", "kd_loss", "hint_loss", "grad_norm", "train_acc", "val_acc", "test_acc",
    "probe_loss", "images_per_s", "eval_images",
]


class MetricsFile:
    """Append-only CSV of training metrics; on resume, rows past the checkpoint are dropped first."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, keep) -> None:
        """Keep only the rows for which ``keep(row)`` is true (rows written after the last checkpoint go), and
        drop a row torn by a crash mid-write; the file is replaced atomically."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if None not in row.values() and keep(row)]
        header = self._header()

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path, write, "the training metrics")

    def append(self, row: dict) -> None:
        try:
            new = not self.path.exists() or self.path.stat().st_size == 0
            with self.path.open("a", newline="") as f:
                # a file written by an older version keeps its own columns (a resumed run stays one table)
                writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS if new else self._header(),
                                        extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow({k: _fmt(v) for k, v in row.items()})
        except OSError as err:
            raise FspkdError(f"{self.path}: cannot write the training metrics "
                             f"({write_failure(err, self.path.parent)})") from None

    def _header(self) -> list[str]:
        with self.path.open(newline="") as f:
            return next(csv.reader(f), None) or METRIC_COLUMNS


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.csv`` with numbers as floats (empty cells as None)."""
    with Path(path).open(newline="") as f:
        return [{k: _parse(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _parse(key, value):
    if value in ("", None):
        return None
    if key == "stage":
        return value
    number = float(value)
    return int(number) if key in ("student", "iteration") else number


class Progress:
    """A tqdm bar on a terminal; plain periodic lines otherwise (CI logs, files)."""

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True, every: int = 100):
        self.enabled = enabled
        self.every = every
        self.desc = desc
        self.total = total
        self.bar = None
        self.last_time = time.perf_counter()
        self.last_iteration = initial
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)

    def update(self, iteration: int, loss: float, lr: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(iteration - self.bar.n)
            if iteration % 10 == 0 or iteration == self.total:
                self.bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2g}")
            return
        if iteration % self.every == 0 or iteration == self.total:
            now = time.perf_counter()
            rate = (iteration - self.last_iteration) / max(now - self.last_time, 1e-9)
            self.last_time, self.last_iteration = now, iteration
            loss_text = f"{loss:.4g}" if math.isfinite(loss) else str(loss)
            print(f"{self.desc} {iteration}/{self.total} loss {loss_text} lr {lr:.3g} {rate:.1f} it/s",
                  file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
