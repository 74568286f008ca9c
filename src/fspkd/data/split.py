"""Holding a validation set out of the training images."""

from __future__ import annotations

import torch

from fspkd.core.errors import FspkdError
from fspkd.data.sets import ImageSet


def check_val_split(val_split: float) -> float:
    """Return `val_split` if it is 0 (no split) or in (0, 1); FspkdError otherwise."""
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or \
            not (val_split == 0 or 0 < val_split < 1):
        raise FspkdError(f"val_split {val_split!r}: expected 0 (no validation set) or a fraction in (0, 1)")
    return float(val_split)


def split_off_val(train: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split `train` into (rest, val): a seeded, stratified draw of `fraction` of each class.

    Each class gives round(fraction * its size) images, at least one if it has two or more, so small
    classes are represented; both parts keep the original order.
    """
    generator = torch.Generator().manual_seed(seed)
    val_indices = []
    for label in torch.unique(train.labels).tolist():
        members = torch.nonzero(train.labels == label).flatten()
        take = round(fraction * len(members))
        if len(members) >= 2:
            take = min(max(take, 1), len(members) - 1)
        val_indices.append(members[torch.randperm(len(members), generator=generator)[:take]])
    in_val = torch.zeros(len(train), dtype=torch.bool)
    in_val[torch.cat(val_indices)] = True
    if in_val.all() or not in_val.any():
        raise FspkdError(f"val_split {fraction}: leaves no training or no validation images "
                         f"out of {len(train)}")
    return train.subset(torch.nonzero(~in_val).flatten()), train.subset(torch.nonzero(in_val).flatten())
