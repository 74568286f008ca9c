"""Reading CUB-200-2011 in its official layout (images.txt, image_class_labels.txt, train_test_split.txt,
classes.txt, images/)."""

from __future__ import annotations

from fspkd.core.errors import FspkdError
from fspkd.data.filetree import FileTree, find_root
from fspkd.data.imagefolder import decode_labelled
from fspkd.data.sets import DecodedDataset


def read_cub200(tree: FileTree, size: int) -> DecodedDataset:
    """Decode CUB-200-2011 to `size`x`size`, using the official train/test split; labels become 0-based."""
    prefix = find_root(tree, "images.txt")
    paths = _read_table(tree, prefix + "images.txt")
    labels = _read_table(tree, prefix + "image_class_labels.txt")
    is_train = _read_table(tree, prefix + "train_test_split.txt")
    class_table = _read_table(tree, prefix + "classes.txt")
    classes = [class_table[key] for key in sorted(class_table, key=_numeric_id)]
    _check_same_ids(tree, prefix, paths, labels, is_train)

    splits: dict[bool, list[tuple[str, int]]] = {True: [], False: []}
    for image_id in sorted(paths, key=_numeric_id):  # keep the official image order
        label = _class_index(tree, prefix + "image_class_labels.txt", labels[image_id], len(classes))
        in_train = _flag(tree, prefix + "train_test_split.txt", is_train[image_id])
        splits[in_train].append((f"{prefix}images/{paths[image_id]}", label))
    if not splits[True]:
        raise FspkdError(f"{tree.describe(prefix + 'train_test_split.txt')}: marks no image for training")
    train = decode_labelled(tree, splits[True], size)
    test = decode_labelled(tree, splits[False], size) if splits[False] else None
    return DecodedDataset(train, test, classes)


def _numeric_id(image_id: str) -> tuple[int, str]:
    return (int(image_id), image_id) if image_id.isdigit() else (1 << 62, image_id)


def _read_table(tree: FileTree, name: str) -> dict[str, str]:
    """A whitespace-separated 'id value' text file as a dict id -> value."""
    table = {}
    for number, line in enumerate(tree.read(name).decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise FspkdError(f"{tree.describe(name)} line {number}: expected 'id value', got {line!r}")
        table[fields[0]] = fields[1].strip()
    return table


def _check_same_ids(tree: FileTree, prefix: str, paths: dict, labels: dict, is_train: dict) -> None:
    for other, name in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
        if set(other) != set(paths):
            raise FspkdError(f"{tree.describe(prefix + name)}: image ids differ from those in images.txt")
    if not paths:
        raise FspkdError(f"{tree.describe(prefix + 'images.txt')}: lists no images")


def _class_index(tree: FileTree, name: str, text: str, num_classes: int) -> int:
    if not text.isdigit() or not 1 <= int(text) <= num_classes:
        raise FspkdError(f"{tree.describe(name)}: class label {text!r} is not in 1..{num_classes}")
    return int(text) - 1


def _flag(tree: FileTree, name: str, text: str) -> bool:
    if text not in ("0", "1"):
        raise FspkdError(f"{tree.describe(name)}: is_train flag {text!r} must be 0 or 1")
    return text == "1"
