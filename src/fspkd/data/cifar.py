"""Reading CIFAR-10/100 from the official python archive/folder or from an image-folder export of it."""

from __future__ import annotations

import numpy as np
import torch

from fspkd.core.errors import FspkdError
from fspkd.data.filetree import FileTree, find_root
from fspkd.data.imagefolder import has_image_folder_layout, read_image_folder
from fspkd.data.safe_pickle import load_pickle
from fspkd.data.sets import DecodedDataset, ImageSet

# Per variant: marker file of the python layout, train files, test file, meta file, label key, names key.
LAYOUTS = {
    "cifar10": dict(train=[f"data_batch_{i}" for i in range(1, 6)], test="test_batch",
                    meta="batches.meta", labels=b"labels", names=b"label_names", num_classes=10),
    "cifar100": dict(train=["train"], test="test", meta="meta",
                     labels=b"fine_labels", names=b"fine_label_names", num_classes=100),
}
SIDE = 32


def read_cifar(tree: FileTree, variant: str, size: int) -> DecodedDataset:
    """Decode CIFAR `variant` ('cifar10'/'cifar100') from a python-format or image-folder tree."""
    layout = LAYOUTS[variant]
    if _has_python_layout(tree, layout):
        decoded = _read_python_layout(tree, layout)
        decoded = resize_decoded(decoded, size)
    elif has_image_folder_layout(tree):
        decoded = read_image_folder(tree, size)
    else:
        raise FspkdError(f"{tree.origin}: expected the official {variant} python files "
                         f"({layout['meta']}, {layout['test']}, ...) or a train/<class>/ image folder")
    if len(decoded.classes) != layout["num_classes"]:
        raise FspkdError(f"{tree.origin}: {variant} needs {layout['num_classes']} classes, "
                         f"found {len(decoded.classes)}")
    return decoded


def _has_python_layout(tree: FileTree, layout: dict) -> bool:
    try:
        find_root(tree, layout["meta"])
    except FspkdError:
        return False
    return True


def _read_python_layout(tree: FileTree, layout: dict) -> DecodedDataset:
    prefix = find_root(tree, layout["meta"])
    meta = _load_dict(tree, prefix + layout["meta"])
    classes = _class_names(tree, prefix + layout["meta"], meta, layout["names"])
    train_parts = [_read_batch(tree, prefix + name, layout["labels"], len(classes)) for name in layout["train"]]
    train = ImageSet(torch.cat([part.images for part in train_parts]), torch.cat([part.labels for part in train_parts]))
    test = None
    if prefix + layout["test"] in tree:
        test = _read_batch(tree, prefix + layout["test"], layout["labels"], len(classes))
    return DecodedDataset(train, test, classes)


def _load_dict(tree: FileTree, name: str) -> dict:
    content = load_pickle(tree.read(name), tree.describe(name))
    if not isinstance(content, dict):
        raise FspkdError(f"{tree.describe(name)}: expected a pickled dict, got {type(content).__name__}")
    # keys as the official (Python 2) files have them, b'data'; a file written by Python 3 may have 'data'
    return {key.encode() if isinstance(key, str) else key: value for key, value in content.items()}


def _class_names(tree: FileTree, name: str, meta: dict, key: bytes) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, list) or not all(isinstance(item, (bytes, str)) for item in names):
        raise FspkdError(f"{tree.describe(name)}: expected a list of class names under {key!r}")
    return [item.decode() if isinstance(item, bytes) else item for item in names]


def _read_batch(tree: FileTree, name: str, label_key: bytes, num_classes: int) -> ImageSet:
    """One official batch file: b'data' uint8 (N, 3072) in CHW order, labels a list of N ints."""
    batch = _load_dict(tree, name)
    data, labels = batch.get(b"data"), batch.get(label_key)
    where = tree.describe(name)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE**2:
        raise FspkdError(f"{where}: expected b'data' as a uint8 array of shape (N, 3072)")
    if not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise FspkdError(f"{where}: expected {label_key!r} as a list of {data.shape[0]} labels")
    for index, label in enumerate(labels):
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise FspkdError(f"{where}: expected {label_key!r} as integer class indices, found {label!r} "
                             f"({type(label).__name__}) at position {index}")
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    if len(labels) and (label_tensor.min() < 0 or label_tensor.max() >= num_classes):
        raise FspkdError(f"{where}: labels must lie in [0, {num_classes - 1}]")
    images = torch.from_numpy(data.copy()).reshape(-1, 3, SIDE, SIDE)
    return ImageSet(images, label_tensor)


def resize_decoded(decoded: DecodedDataset, size: int) -> DecodedDataset:
    """Resize the square images of both splits to `size` (a no-op at the native size)."""
    def resize(image_set: ImageSet | None) -> ImageSet | None:
        if image_set is None or image_set.images.shape[-1] == size:
            return image_set
        floats = image_set.images.float()
        resized = torch.nn.functional.interpolate(floats, size=(size, size), mode="bilinear",
                                                  antialias=True, align_corners=False)
        return ImageSet(resized.round().clamp(0, 255).to(torch.uint8).contiguous(), image_set.labels)
    return DecodedDataset(resize(decoded.train), resize(decoded.test), decoded.classes)
