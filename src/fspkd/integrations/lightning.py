"""A LightningModule around ``fspkd.Distiller``: FSP, KD or FitNet inside a Lightning ``Trainer``.

    module = DistillationModule(fspkd.Distiller(student, teacher, "fsp", example=images))
    lightning.Trainer(max_steps=500).fit(module, loader)          # stage 1: FSP matrices
    module.distiller.stage = "task"
    lightning.Trainer(max_steps=500).fit(module, loader)          # the task stage, from the stage-1 weights

Each ``fit`` trains the distiller's current stage with that stage's optimiser and lr schedule as ``fspkd
distill`` sets them (``Distiller.make_optimizer``, ``Distiller.schedule``), its progress read from the trainer's
``max_steps``. Needs ``pip install 'fspkd[lightning]'``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fspkd.distiller import Distiller
from fspkd.integrations import require

L = require("lightning", "lightning")


class DistillationModule(L.LightningModule):
    """Trains ``distiller``'s student (and extra modules) in the distiller's current stage; logs each loss part
    as ``train/<name>``, and ``val/loss`` and ``val/acc`` of the student on validation batches."""

    def __init__(self, distiller: Distiller):
        super().__init__()
        self.distiller = distiller  # registered: Lightning moves it (and with it the teacher) to the device

    def training_step(self, batch, batch_idx):
        images, labels = batch
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else None
        self.distiller.progress = min(self.global_step / max(total - 1, 1), 1.0) if total else 0.0
        _, losses = self.distiller(images, labels)
        self.log_dict({f"train/{name}": value.detach() for name, value in losses.items()}, prog_bar=True)
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.distiller.student(images)
        self.log_dict({"val/loss": F.cross_entropy(logits, labels),
                       "val/acc": (logits.argmax(1) == labels).float().mean() * 100})

    def configure_optimizers(self):
        """The stage's optimiser, with its multi-step lr schedule stepped once per optimiser step."""
        schedule = self.distiller.schedule
        optimizer = self.distiller.make_optimizer()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.lr_at(step) / schedule.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
