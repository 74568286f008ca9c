"""``--data python:package.module:attribute``: any map-style Dataset of (image, label) pairs, read once into memory.

The attribute is a Dataset, a function returning one, or a ``(train, test)`` pair / ``{"train": ..., "test": ...}``
mapping of them. Images may be PIL images, uint8 or float (0 to 1) tensors in CHW layout, or HWC uint8 arrays;
gray images are repeated to three channels. All images of a set need one size (resize them in the Dataset or with
``--image-size``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fspkd.core.errors import FspkdError
from fspkd.core.imports import load_object
from fspkd.data.sets import DecodedDataset, ImageSet


def read_python_dataset(argument: str) -> DecodedDataset:
    """The train (and optional test) images of the object ``argument`` names, as uint8 tensors."""
    spec = f"python:{argument}"
    source = load_object(argument, "data set")
    if callable(source) and not hasattr(source, "__getitem__"):
        source = source()
    if isinstance(source, Mapping):
        train, test = source.get("train"), source.get("test")
    elif isinstance(source, (tuple, list)) and len(source) == 2 and hasattr(source[0], "__getitem__"):
        train, test = source
    else:
        train, test = source, None
    if train is None or not hasattr(train, "__getitem__") or not hasattr(train, "__len__"):
        raise FspkdError(f"data set {spec!r}: expected a Dataset of (image, label), a function returning one, or a "
                         f"(train, test) pair, got {type(train).__name__}")
    train_set = _read(train, spec, "train")
    test_set = _read(test, spec, "test") if test is not None else None
    count = int(train_set.labels.max()) + 1
    classes = list(getattr(train, "classes", None) or [str(i) for i in range(count)])
    return DecodedDataset(train_set, test_set, classes)


def _read(dataset, spec: str, split: str) -> ImageSet:
    if len(dataset) == 0:
        raise FspkdError(f"data set {spec!r}: the {split} set is empty")
    images, labels = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise FspkdError(f"data set {spec!r}: {split} item {index} is a {type(item).__name__}, expected a pair "
                             "(image, label)")
        images.append(_uint8_chw(item[0], spec, f"{split} item {index}"))
        labels.append(int(item[1]))
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise FspkdError(f"data set {spec!r}: {split} images have different sizes {sorted(shapes)[:3]}; resize them "
                         "to one size in the Dataset")
    return ImageSet(torch.stack(images).contiguous(), torch.tensor(labels, dtype=torch.long))


def _uint8_chw(image, spec: str, where: str) -> torch.Tensor:
    """A (3, H, W) uint8 tensor from a PIL image, a CHW tensor (uint8, or float in [0, 1]) or an HWC array."""
    if hasattr(image, "convert"):  # PIL
        image = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    elif isinstance(image, np.ndarray):
        image = torch.from_numpy(image.copy())
        image = image.permute(2, 0, 1) if image.ndim == 3 and image.shape[-1] in (1, 3) else image
    if not isinstance(image, torch.Tensor) or image.ndim not in (2, 3):
        raise FspkdError(f"data set {spec!r}: {where}: the image is a {type(image).__name__}, expected a PIL image, "
                         "a CHW tensor or an HWC array")
    image = image[None] if image.ndim == 2 else image
    if image.is_floating_point():
        image = (image * 255).round().clamp(0, 255)
    image = image.to(torch.uint8)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.shape[0] != 3:
        raise FspkdError(f"data set {spec!r}: {where}: {image.shape[0]} channels; expected 1 or 3")
    return image.contiguous()
