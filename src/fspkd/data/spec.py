"""`load_dataset`: from a spec string ('cifar10:PATH', 'synthetic', ...) to ready-to-train Splits."""

from __future__ import annotations

from pathlib import Path

from fspkd.core.errors import FspkdError
from fspkd.data.cache import cached_decode
from fspkd.data.cifar import read_cifar, resize_decoded
from fspkd.data.cub200 import read_cub200
from fspkd.data.filetree import ARCHIVE_SUFFIXES, open_tree
from fspkd.data.imagefolder import read_image_folder
from fspkd.data.python_source import read_python_dataset
from fspkd.data.sets import DecodedDataset, Splits
from fspkd.data.split import check_val_split, split_off_val
from fspkd.data.stats import channel_stats
from fspkd.data.synthetic import DEFAULT_TEST, DEFAULT_TRAIN, make_synthetic

BUILTIN_NAMES = ("", "builtin", "synthetic")
DEFAULT_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "imagefolder": 64, "cub200": 64, "synthetic": 32}
READERS = {
    "cifar10": lambda tree, size: read_cifar(tree, "cifar10", size),
    "cifar100": lambda tree, size: read_cifar(tree, "cifar100", size),
    "imagefolder": read_image_folder,
    "cub200": read_cub200,
}
NOT_AUGMENTED = ("cifar100",)  # the paper trains CIFAR-100 without augmentation
SPEC_USAGE = ("expected 'KIND:PATH' with KIND one of cifar10, cifar100, imagefolder, cub200, "
              "'python:package.module:attribute', or 'synthetic' / 'synthetic:TRAIN[,TEST]' / 'builtin' / ''")


def load_dataset(spec: str, *, val_split: float = 0.0, seed: int = 0, image_size: int | None = None,
                 cache_dir: str | Path | None = None) -> Splits:
    """Load the data set named by `spec` and hold out a validation split.

    spec: 'cifar10:PATH' / 'cifar100:PATH' (official python .tar.gz or its folder, or an image folder with
    train/<class>/ and optional test/<class>/, or a .tar.gz of one), 'imagefolder:PATH' (train/<class>/
    plus optional test/<class>/, or val/<class>/ when there is no test/; folder or .tar.gz), 'cub200:PATH'
    (official CUB-200-2011 folder or archive, official train/test split), or the built-in procedurally
    generated set: 'synthetic', 'builtin' or '' (10,000 train / 2,000 test images), 'synthetic:TRAIN' or
    'synthetic:TRAIN,TEST' for other sizes, or 'python:package.module:attribute' (any Dataset of (image, label),
    see ``fspkd.data.python_source``). The layout may also sit inside one or two wrapping folders.
    Class labels are the indices of the sorted class-folder names (CIFAR, CUB: the official order).
    `name` is the kind ('cifar10', 'synthetic', ...), for imagefolder the folder/archive name.
    val_split: fraction of each training class held out as `val` (seeded by `seed`); 0 for none.
    image_size: side of the square images; default 32 for CIFAR and synthetic, 64 for imagefolder and
    cub200. Image files get their shorter side resized to it, then a centre crop; the already square
    CIFAR pickles and synthetic images are resized with antialiased bilinear interpolation.
    cache_dir: where decoded tensors are cached (default $FSPKD_CACHE or ~/.cache/fspkd); the
    synthetic set is not cached.
    """
    val_split = check_val_split(val_split)
    kind, argument = parse_spec(spec)
    if kind == "python":  # a user's Dataset: its own image size unless one is asked for; not cached
        decoded = read_python_dataset(argument)
        if image_size is not None:
            decoded = resize_decoded(decoded, _check_image_size(image_size))
        return build_splits(decoded, argument.rpartition(":")[2], True, val_split, seed)
    size = _check_image_size(image_size if image_size is not None else DEFAULT_IMAGE_SIZE[kind])
    if kind == "synthetic":
        decoded, name = resize_decoded(make_synthetic(*_synthetic_sizes(argument)), size), "synthetic"
    else:
        path = _existing_path(argument, spec)
        decoded = cached_decode(path, kind, size, cache_dir, lambda: READERS[kind](open_tree(path), size))
        name = _archive_stem(path) if kind == "imagefolder" else kind
    return build_splits(decoded, name, kind not in NOT_AUGMENTED, val_split, seed)


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (kind, argument): 'synthetic' with its size option, or a reader kind with a path."""
    if not isinstance(spec, str):
        raise FspkdError(f"data set spec {spec!r}: {SPEC_USAGE}")
    text = spec.strip()
    if text.lower() in BUILTIN_NAMES:
        return "synthetic", ""
    kind, separator, argument = text.partition(":")
    kind = kind.lower()
    if not separator or (kind not in READERS and kind not in ("synthetic", "python")):
        raise FspkdError(f"data set spec {spec!r}: {SPEC_USAGE}")
    return kind, argument.strip()


def _synthetic_sizes(argument: str) -> tuple[int, int]:
    if not argument:
        return DEFAULT_TRAIN, DEFAULT_TEST
    parts = argument.split(",")
    if len(parts) > 2 or not all(part.strip().isdigit() for part in parts):
        raise FspkdError(f"synthetic size {argument!r}: expected TRAIN or TRAIN,TEST image counts")
    train = int(parts[0])
    test = int(parts[1]) if len(parts) == 2 else max(1, train // 5)
    if train < 10:
        raise FspkdError(f"synthetic size {argument!r}: need at least 10 training images (one per class)")
    return train, test


def _check_image_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise FspkdError(f"image_size {size!r}: expected a positive integer")
    return size


def _existing_path(argument: str, spec: str) -> Path:
    if not argument:
        raise FspkdError(f"data set spec {spec!r}: the path after ':' is empty")
    path = Path(argument).expanduser()
    if not path.exists():
        raise FspkdError(f"{path}: no such file or folder (from data set spec {spec!r})")
    return path


def _archive_stem(path: Path) -> str:
    name = path.resolve().name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def build_splits(decoded: DecodedDataset, name: str, default_augment: bool, val_split: float,
                 seed: int) -> Splits:
    """Splits from decoded data: hold out `val_split` of train (seeded) and measure the train statistics."""
    train, val = decoded.train, None
    if val_split:
        train, val = split_off_val(train, val_split, seed)
    mean, std = channel_stats(train.images)
    return Splits(train=train, val=val, test=decoded.test, num_classes=len(decoded.classes),
                  classes=list(decoded.classes), name=name, default_augment=default_augment,
                  mean=mean, std=std)
