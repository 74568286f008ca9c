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


class FixedViews:
    """A fixed set of `count` augmented views per image: crop offsets (oy, ox) and a flip flag, each (N, count).

    Stored teacher FSP targets (``fspkd.fsp_store``) exist for these views only, so a loader that uses them
    crops and flips each image as one of its views instead of drawing fresh parameters.
    """

    def __init__(self, offset_y: torch.Tensor, offset_x: torch.Tensor, flips: torch.Tensor, pad: int):
        if not offset_y.shape == offset_x.shape == flips.shape or offset_y.dim() != 2:
            raise ValueError("FixedViews needs offset_y, offset_x and flips of one shape (N, views)")
        self.offset_y, self.offset_x, self.flips, self.pad = offset_y.long(), offset_x.long(), flips.bool(), pad

    @property
    def count(self) -> int:
        """Views per image."""
        return self.offset_y.shape[1]

    @classmethod
    def draw(cls, num_images: int, count: int, pad: int, flip: bool, seed: int) -> "FixedViews":
        """`count` random views per image from a generator seeded by `seed` (flips only if `flip`)."""
        generator = torch.Generator().manual_seed(seed)
        offset_y = torch.randint(0, 2 * pad + 1, (num_images, count), generator=generator)
        offset_x = torch.randint(0, 2 * pad + 1, (num_images, count), generator=generator)
        flips = torch.rand(num_images, count, generator=generator) < 0.5
        return cls(offset_y, offset_x, flips & flip, pad)

    @classmethod
    def identity(cls, num_images: int, pad: int) -> "FixedViews":
        """One view per image: the image itself (no augmentation)."""
        centre = torch.full((num_images, 1), pad, dtype=torch.int64)
        return cls(centre, centre.clone(), torch.zeros(num_images, 1, dtype=torch.bool), pad)

    def render(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """uint8 crops of images[indices[j]] as view views[j] (shape (len(indices), C, H, W))."""
        out = shifted_crops(images, indices, self.offset_y[indices, views], self.offset_x[indices, views], self.pad)
        return flip_where(out, self.flips[indices, views])
