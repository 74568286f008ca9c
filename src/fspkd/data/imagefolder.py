"""Reading 'image folder' data sets: ROOT/train/<class>/<image> and optionally ROOT/test/ or ROOT/val/."""

from __future__ import annotations

import numpy as np
import torch

from fspkd.core.errors import FspkdError
from fspkd.data.decode import decode_image, is_image_name
from fspkd.data.filetree import FileTree, find_root
from fspkd.data.sets import DecodedDataset, ImageSet

TEST_FOLDER_NAMES = ("test", "val")  # the first one present is the test split


def has_image_folder_layout(tree: FileTree) -> bool:
    """Whether the tree has a 'train/<class>/<image>' layout (possibly inside a top-level folder)."""
    try:
        prefix = find_root(tree, "train/")
    except FspkdError:
        return False
    return bool(_images_by_class(tree, prefix + "train/"))


def read_image_folder(tree: FileTree, size: int) -> DecodedDataset:
    """Decode all images of an image-folder tree to `size`x`size`; classes are the sorted train sub-folders."""
    prefix = find_root(tree, "train/")
    train_files = _images_by_class(tree, prefix + "train/")
    if not train_files:
        raise FspkdError(f"{tree.describe(prefix + 'train')}: no class sub-folders with images in it")
    classes = sorted(train_files)
    train = decode_files(tree, train_files, classes, size)
    test = None
    for folder in TEST_FOLDER_NAMES:
        test_files = _images_by_class(tree, f"{prefix}{folder}/")
        if test_files:
            _check_known_classes(tree, f"{prefix}{folder}", test_files, classes)
            test = decode_files(tree, test_files, classes, size)
            break
    return DecodedDataset(train, test, classes)


def _images_by_class(tree: FileTree, split_prefix: str) -> dict[str, list[str]]:
    """Image file names under split_prefix/<class>/, grouped by class (files directly in the split are ignored)."""
    by_class: dict[str, list[str]] = {}
    for name in tree.names():
        if not name.startswith(split_prefix) or not is_image_name(name):
            continue
        parts = name[len(split_prefix):].split("/")
        if len(parts) >= 2:
            by_class.setdefault(parts[0], []).append(name)
    return by_class


def _check_known_classes(tree: FileTree, split: str, files: dict[str, list[str]], classes: list[str]) -> None:
    unknown = sorted(set(files) - set(classes))
    if unknown:
        raise FspkdError(f"{tree.describe(split)}: class folders {unknown} do not exist under train/")


def decode_files(tree: FileTree, files: dict[str, list[str]], classes: list[str], size: int) -> ImageSet:
    """Decode the files of each class (label = index in `classes`), class by class, into one ImageSet."""
    labelled = [(name, label) for label, cls in enumerate(classes) for name in sorted(files.get(cls, []))]
    return decode_labelled(tree, labelled, size)


def decode_labelled(tree: FileTree, labelled: list[tuple[str, int]], size: int) -> ImageSet:
    """Decode (file name, label) pairs, in order, into one ImageSet of `size`x`size` images."""
    pixels = np.empty((len(labelled), size, size, 3), dtype=np.uint8)
    for index, (name, _) in enumerate(labelled):
        pixels[index] = decode_image(tree.read(name), size, tree.describe(name))
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in labelled], dtype=torch.int64)
    return ImageSet(images, labels)
