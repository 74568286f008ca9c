"""Whole-batch augmentation on uint8 tensors: random shifted crops of a zero-padded image, horizontal flips.

A crop of the image padded by `pad` at offset (oy, ox) in [0, 2*pad] equals the image shifted by
(pad - oy, pad - ox) with zeros filling in. There are only (2*pad + 1)^2 offsets, so images are grouped by
offset and each group is copied with one strided slice: no padded copy, no per-image Python loop.
"""

from __future__ import annotations

import torch


def random_offsets(count: int, pad: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets (oy, ox) into the padded image, each int64 (count,) uniform in [0, 2*pad]."""
    offset_y = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
    offset_x = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
    return offset_y, offset_x


def shifted_crops(images: torch.Tensor, indices: torch.Tensor, offset_y: torch.Tensor, offset_x: torch.Tensor,
                  pad: int) -> torch.Tensor:
    """Crops out[j] = window (offset_y[j], offset_x[j]) of size (H, W) of images[indices[j]] zero-padded by `pad`.

    `images` is (N, C, H, W); the result is (len(indices), C, H, W), same dtype.
    """
    height, width = images.shape[-2:]
    out = torch.zeros((len(indices), *images.shape[1:]), dtype=images.dtype)
    side = 2 * pad + 1
    group_of = offset_y * side + offset_x
    order = torch.argsort(group_of)
    counts = torch.bincount(group_of, minlength=side * side).tolist()
    start = 0
    for group, count in enumerate(counts):
        if count == 0:
            continue
        positions = order[start:start + count]
        start += count
        shift_y, shift_x = group // side - pad, group % side - pad  # out row r shows image row r + shift_y
        top, bottom = max(0, -shift_y), min(height, height - shift_y)
        left, right = max(0, -shift_x), min(width, width - shift_x)
        if top >= bottom or left >= right:  # pad >= size: the window is all padding
            continue
        out[positions, :, top:bottom, left:right] = \
            images[indices[positions], :, top + shift_y:bottom + shift_y, left + shift_x:right + shift_x]
    return out


def random_flips(count: int, generator: torch.Generator) -> torch.Tensor:
    """A bool (count,) mask, each entry True with probability 1/2."""
    return torch.rand(count, generator=generator) < 0.5


def flip_where(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror images[mask] left-right, in place; returns `images`."""
    chosen = torch.nonzero(mask).flatten()
    if len(chosen):
        images[chosen] = images[chosen].flip(-1)
    return images
