"""BatchLoader: shuffled, whole-epoch-augmented, normalised, optionally sharded batches from uint8 tensors."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from fspkd.core.errors import FspkdError
from fspkd.data.augment import FixedViews, grouped_crops, random_flips, random_offsets


class BatchLoader:
    """Batches `(x float32 (B, C, H, W), y int64 (B,))` from uint8 images and their labels.

    Training (`train=True`): iterates forever, epoch after epoch. Each epoch draws a permutation from a
    generator seeded by (seed, epoch), so any epoch can be recreated on its own (resumable). With `augment`,
    the whole epoch is augmented at once: a random crop of the image zero-padded by `pad` (same size as
    the input), plus a random horizontal flip if `flip`. The last incomplete global batch is dropped.
    Evaluation (`train=False`): one ordered pass without augmentation, keeping the last partial batch.

    `batch_size` is the GLOBAL batch. With `world_size > 1` rank `rank` gets its own disjoint slice of
    batch_size // world_size samples of each global batch (batch_size must divide evenly), so in training
    the ranks together see each sample once per epoch, and the samples' crops and flips do not depend on
    world_size. In evaluation the last partial batch is split as evenly as possible, so ranks' last batches
    may differ in size by one and a rank whose share is empty gets one batch fewer than the others.
    Normalisation is (x / 255 - mean) / std per channel, folded into one multiply-add.

    With `use_views(views)` (stored teacher FSP targets), training crops and flips each sample as one of its
    fixed views, chosen uniformly per sample and epoch, and `last_batch_keys` tells which (images, views) the
    latest batch holds.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 mean: Sequence[float], std: Sequence[float], train: bool, augment: bool, flip: bool = False,
                 pad: int = 4, seed: int = 0, rank: int = 0, world_size: int = 1, channels_last: bool = False):
        _check_data(images, labels)
        _check_sharding(batch_size, rank, world_size)
        _check_nonnegative_int("pad", pad)
        _check_nonnegative_int("seed", seed)
        if train and len(labels) < batch_size:
            raise FspkdError(f"batch_size {batch_size}: larger than the {len(labels)} training images")
        self.images, self.labels = images.contiguous(), labels.to(torch.int64)
        self.batch_size, self.local_batch_size = batch_size, batch_size // world_size
        self.train, self.augment, self.flip, self.pad = train, augment, flip, pad
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.channels_last = channels_last
        self._scale, self._shift = _affine_normalisation(mean, std, images.shape[1])
        self._epoch, self._batch = 0, 0
        self._prepared_epoch: tuple | None = None
        self._crops: torch.Tensor | None = None  # the epoch's crops, overwritten by the next epoch's
        self.views: FixedViews | None = None
        self.last_batch_keys: tuple[torch.Tensor, torch.Tensor] | None = None

    # ---- public API ----

    def __len__(self) -> int:
        """Batches per epoch for this rank (training), or in the single pass (evaluation)."""
        if self.train:
            return len(self.labels) // self.batch_size
        return len(self._eval_pieces())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training: continue from the current position, forever. Evaluation: one ordered pass."""
        return self._train_batches() if self.train else self._eval_batches()

    def state_dict(self) -> dict:
        """The position of the next training batch, {'epoch': int, 'batch': int}."""
        return {"epoch": self._epoch, "batch": self._batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position returned by `state_dict` (the same future batches follow)."""
        try:
            epoch, batch = int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError):
            raise FspkdError(f"loader state {state!r}: expected {{'epoch': int, 'batch': int}}") from None
        if epoch < 0 or not 0 <= batch <= len(self):
            raise FspkdError(f"loader state {state!r}: batch must lie in [0, {len(self)}] and epoch be >= 0")
        self._epoch, self._batch = epoch, batch

    def use_views(self, views: FixedViews) -> None:
        """Train on these fixed views (one per image and row of `views`) instead of fresh random crops."""
        if views.offset_y.shape[0] != len(self.labels) or views.pad != self.pad:
            raise FspkdError(f"views for {views.offset_y.shape[0]} images with pad {views.pad}: this loader has "
                             f"{len(self.labels)} images and pad {self.pad}")
        self.views, self._prepared_epoch = views, None

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """float32 network input from a uint8 batch: this loader's normalisation (and memory format)."""
        return self._normalise(batch)

    # ---- training ----

    def _train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches_per_epoch = len(self)
        while True:
            if self._batch >= batches_per_epoch:
                self._epoch, self._batch = self._epoch + 1, 0
            source, where, epoch_labels, keys = self._epoch_tensors(self._epoch)
            rows = slice(self._batch * self.local_batch_size, (self._batch + 1) * self.local_batch_size)
            self._batch += 1
            self.last_batch_keys = (keys[0][rows], keys[1][rows]) if keys is not None else None
            yield self._normalise(source.index_select(0, where[rows])), epoch_labels[rows]

    def _epoch_tensors(self, epoch: int) -> tuple:
        """For the whole of `epoch` on this rank: uint8 images `source`, int64 `where` (sample j of the epoch is
        source[where[j]]), labels and view keys (or None)."""
        if self._prepared_epoch is None or self._prepared_epoch[0] != epoch:
            self._prepared_epoch = (epoch, *self._prepare_epoch(epoch))
        return self._prepared_epoch[1:]

    def _prepare_epoch(self, epoch: int) -> tuple:
        """Draw the epoch's order and augmentation (the views' if `use_views`); crop the whole epoch."""
        count = len(self.labels)
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        # Drawn for every position of the global order, so a sample's augmentation ignores world_size.
        order = torch.randperm(count, generator=generator)
        positions = self._rank_positions(len(self))
        indices = order[positions]
        labels = self.labels[indices]
        if self.views is not None:
            chosen = torch.randint(0, self.views.count, (count,), generator=generator)[positions]
            offset_y, offset_x, flips = self.views.select(indices, chosen)
            self._crops, where = grouped_crops(self.images, indices, offset_y, offset_x, self.pad, flips, self._crops)
            return self._crops, where, labels, (indices, chosen)
        offset_y, offset_x = random_offsets(count, self.pad, generator)
        flips = random_flips(count, generator)
        if not self.augment:
            return self.images, indices, labels, None
        self._crops, where = grouped_crops(self.images, indices, offset_y[positions], offset_x[positions], self.pad,
                                           flips[positions] if self.flip else None, self._crops)
        return self._crops, where, labels, None

    def _rank_positions(self, num_batches: int) -> torch.Tensor:
        """Positions in the global epoch order of this rank's samples, batch after batch."""
        batch_starts = torch.arange(num_batches)[:, None] * self.batch_size
        within = self.rank * self.local_batch_size + torch.arange(self.local_batch_size)
        return (batch_starts + within).flatten()

    # ---- evaluation ----

    def _eval_pieces(self) -> list[torch.Tensor]:
        """This rank's sample indices for each batch of the ordered pass (empty shares left out)."""
        pieces = []
        for start in range(0, len(self.labels), self.batch_size):
            batch = torch.arange(start, min(start + self.batch_size, len(self.labels)))
            share = torch.tensor_split(batch, self.world_size)[self.rank]
            if len(share):
                pieces.append(share)
        return pieces

    def _eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for piece in self._eval_pieces():
            first, last = int(piece[0]), int(piece[-1]) + 1  # shares are contiguous: slice, don't gather
            yield self._normalise(self.images[first:last]), self.labels[first:last]

    # ---- shared ----

    def _normalise(self, batch: torch.Tensor) -> torch.Tensor:
        floats = batch.to(torch.float32).mul_(self._scale).add_(self._shift)  # in place, no temporaries
        if self.channels_last:
            floats = floats.contiguous(memory_format=torch.channels_last)
        return floats


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit generator seed from (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]) >> 1


def _affine_normalisation(mean, std, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of shape (1, C, 1, 1) with (x / 255 - mean) / std == x * scale + shift."""
    mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
    std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
    if mean_t.numel() != channels or std_t.numel() != channels or bool((std_t <= 0).any()):
        raise FspkdError(f"mean {tuple(mean)} / std {tuple(std)}: expected {channels} values each, std > 0")
    scale = 1.0 / (255.0 * std_t)
    shift = -mean_t / std_t
    return scale.float().view(1, -1, 1, 1), shift.float().view(1, -1, 1, 1)


def _check_data(images: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise FspkdError("images: expected a uint8 tensor of shape (N, C, H, W)")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or len(labels) != len(images):
        raise FspkdError(f"labels: expected a 1-D tensor of {len(images)} labels (one per image)")


def _check_sharding(batch_size: int, rank: int, world_size: int) -> None:
    for name, value in (("batch_size", batch_size), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FspkdError(f"{name} {value!r}: expected a positive integer")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise FspkdError(f"rank {rank!r}: expected an integer in [0, {world_size - 1}]")
    if batch_size % world_size:
        raise FspkdError(f"batch_size {batch_size}: the global batch must divide evenly "
                         f"among world_size {world_size} ranks")


def _check_nonnegative_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FspkdError(f"{name} {value!r}: expected a non-negative integer")
