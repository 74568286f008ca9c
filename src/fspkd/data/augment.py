"""Whole-batch augmentation on uint8 tensors: random shifted crops of a zero-padded image, horizontal flips.

A crop of the image padded by `pad` at offset (oy, ox) in [0, 2*pad] equals the image shifted by
(pad - oy, pad - ox) with zeros filling in. There are only (2*pad + 1)^2 offsets (twice that with flips), so
images are grouped by offset and flip, and each group is shifted at once. The hot path is a copy of the
flattened images: in row-major order a 2-D shift by (dy, dx) is a 1-D shift by dy*W + dx, whose only
errors are the rows and columns that wrapped around, zeroed by one multiply with the crop window's mask.
That copies each image in whole planes instead of short rows (faster than a strided slice per group; see
``fspkd bench``'s data-path case), with no padded copy and no per-image Python loop.
"""

from __future__ import annotations

import torch


def random_offsets(count: int, pad: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets (oy, ox) into the padded image, each int64 (count,) uniform in [0, 2*pad]."""
    offset_y = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
    offset_x = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
    return offset_y, offset_x


def random_flips(count: int, generator: torch.Generator) -> torch.Tensor:
    """A bool (count,) mask, each entry True with probability 1/2."""
    return torch.rand(count, generator=generator) < 0.5


def shifted_crops(images: torch.Tensor, indices: torch.Tensor, offset_y: torch.Tensor, offset_x: torch.Tensor,
                  pad: int, flips: torch.Tensor | None = None) -> torch.Tensor:
    """Crops out[j] = window (offset_y[j], offset_x[j]) of size (H, W) of images[indices[j]] zero-padded by `pad`,
    mirrored left-right where `flips[j]` is True.

    `images` is (N, C, H, W); the result is (len(indices), C, H, W), same dtype.
    """
    crops, where = grouped_crops(images, indices, offset_y, offset_x, pad, flips)
    return crops.index_select(0, where)


def grouped_crops(images: torch.Tensor, indices: torch.Tensor, offset_y: torch.Tensor, offset_x: torch.Tensor,
                  pad: int, flips: torch.Tensor | None = None, out: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The crops of `shifted_crops` in the order they are made: (crops, where), crops[where[j]] is crop j.

    Writes into `out` when it has the right shape and dtype. A caller that crops every epoch should pass the
    previous epoch's crops: a fresh tensor this large costs more in first-touch page faults than the cropping.
    """
    _, channels, height, width = images.shape
    size = channels * height * width
    side = 2 * pad + 1
    group_of = offset_y * side + offset_x
    if flips is not None:
        group_of = group_of + flips.long() * side * side
    order = torch.argsort(group_of)
    counts = torch.bincount(group_of, minlength=side * side).tolist()
    source = images.reshape(len(images), size)
    shape = (len(indices), channels, height, width)
    if out is None or out.shape != shape or out.dtype != images.dtype or not out.is_contiguous():
        out = torch.empty(shape, dtype=images.dtype)
    crops = out.view(len(indices), size)
    start = 0
    for group, members in enumerate(counts):
        if members == 0:
            continue
        rows = slice(start, start + members)
        start += members
        flipped, offset = divmod(group, side * side)
        shift_y, shift_x = offset // side - pad, offset % side - pad  # out row r shows image row r + shift_y
        picked = source.index_select(0, indices[order[rows]])
        if flipped:  # mirror(crop at shift_x) == crop of the mirrored image at -shift_x
            picked = picked.view(members, channels, height, width).flip(-1).reshape(members, size)
            shift_x = -shift_x
        _shift_flat(crops[rows], picked, shift_y * width + shift_x)
        crops[rows].mul_(_window_mask(channels, height, width, shift_y, shift_x).to(images.dtype))
    where = torch.empty_like(order)
    where[order] = torch.arange(len(order))
    return out, where


def _shift_flat(out: torch.Tensor, rows: torch.Tensor, shift: int) -> None:
    """out[:, i] = rows[:, i + shift] where that index exists, else 0 (both (n, L))."""
    length = rows.shape[1]
    if abs(shift) >= length:
        out.zero_()
    elif shift >= 0:
        out[:, :length - shift] = rows[:, shift:]
        out[:, length - shift:] = 0
    else:
        out[:, -shift:] = rows[:, :length + shift]
        out[:, :-shift] = 0


def _window_mask(channels: int, height: int, width: int, shift_y: int, shift_x: int) -> torch.Tensor:
    """A flat (C*H*W,) bool mask of the pixels that a shift by (shift_y, shift_x) fills from the image."""
    mask = torch.zeros(channels, height, width, dtype=torch.bool)
    top, bottom = max(0, -shift_y), max(0, min(height, height - shift_y))  # max(0, .): no negative slice ends
    left, right = max(0, -shift_x), max(0, min(width, width - shift_x))
    mask[:, top:bottom, left:right] = True
    return mask.flatten()


class FixedViews:
    """A fixed set of `count` augmented views per image: crop offsets (oy, ox) and a flip flag, each (N, count).

    Stored teacher FSP targets (``fspkd.accel.fsp_store``) exist for these views only, so a loader that uses them
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

    def select(self, indices: torch.Tensor, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(offset_y, offset_x, flips) of view views[j] of image indices[j]."""
        return self.offset_y[indices, views], self.offset_x[indices, views], self.flips[indices, views]

    def render(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """uint8 crops of images[indices[j]] as view views[j] (shape (len(indices), C, H, W))."""
        offset_y, offset_x, flips = self.select(indices, views)
        return shifted_crops(images, indices, offset_y, offset_x, self.pad, flips)
