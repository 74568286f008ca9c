"""Metrics rows sent to an experiment tracker besides ``metrics.csv``: ``log: tensorboard | wandb`` (``--log``).

``metrics.csv`` stays the run's record (resume and reports read it); a tracker gets a copy of each row as scalars
tagged ``<stage>/<name>`` (``student<K>/<stage>/<name>`` with several students), at the row's iteration. Each tracker
is an optional extra: ``pip install 'fspkd[tensorboard]'`` or ``'fspkd[wandb]'``.
"""

from __future__ import annotations

from pathlib import Path

from fspkd.core.config import RunConfig
from fspkd.core.errors import FspkdError

LABELS = ("student", "stage", "iteration")  # what places a row; not scalars


class Tracker:
    """Sends metrics rows to a tracker's ``scalar(tag, value, step)``."""

    def __init__(self, students: int):
        self.students = students

    def log(self, row: dict) -> None:
        prefix = f"{row['stage']}/" if self.students == 1 else f"student{row['student'] + 1}/{row['stage']}/"
        values = {prefix + k: float(v) for k, v in row.items()
                  if k not in LABELS and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.scalars(values, int(row["iteration"]))

    def scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release the tracker."""


class TensorBoard(Tracker):
    def __init__(self, out: Path, students: int):
        super().__init__(students)
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def scalars(self, values, step):
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a killed run keeps its rows, as metrics.csv does

    def close(self):
        self.writer.close()


class WandB(Tracker):
    def __init__(self, out: Path, config: RunConfig):
        super().__init__(config.students)
        self.wandb = _require("wandb", "wandb")
        # one run folder is one W&B run: a resumed run continues it (WANDB_MODE=offline works without an account)
        self.run = self.wandb.init(project="fspkd", name=out.name, dir=str(out), config=config.to_dict(),
                                   id=_run_id(out), resume="allow")

    def scalars(self, values, step):
        self.run.log(values)

    def close(self):
        self.run.finish()


def open_tracker(config: RunConfig, out: Path) -> Tracker | None:
    """The tracker ``config.log`` names, or None for ``csv`` (metrics.csv only)."""
    if config.log == "csv":
        return None
    if config.log == "tensorboard":
        return TensorBoard(out, config.students)
    return WandB(out, config)


def check_tracker(config: RunConfig) -> None:
    """Fail before anything is written when ``config.log`` names a tracker that is not installed."""
    if config.log != "csv":
        _require(config.log, config.log)


def _require(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FspkdError(f"log {extra!r} needs {module!r}: pip install 'fspkd[{extra}]'") from None


def _run_id(out: Path) -> str:
    """A W&B run id kept in the run folder, so a resumed run logs to the same W&B run."""
    path = out / "wandb-run-id"
    if not path.exists():
        import uuid

        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()
