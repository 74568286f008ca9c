"""The containers every data source produces: labelled uint8 image tensors and a data set's splits."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageSet:
    """Labelled images: `images` uint8 (N, 3, H, W) contiguous, `labels` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """Return the images at `indices` (a new, contiguous copy)."""
        return ImageSet(self.images[indices].contiguous(), self.labels[indices].contiguous())


@dataclass
class DecodedDataset:
    """What a reader decodes from disk (and the cache stores): train and optional test images plus class names."""

    train: ImageSet
    test: ImageSet | None
    classes: list[str]


@dataclass
class Splits:
    """A data set ready for training.

    `val` is held out of the original training images (None when no split was asked for); `test` is the
    source's own test split (None when it has none). `mean`/`std` are per-channel statistics of `train`
    in [0, 1]. `default_augment` says whether the paper's recipe augments this data set.
    """

    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    num_classes: int
    classes: list[str]
    name: str
    default_augment: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
