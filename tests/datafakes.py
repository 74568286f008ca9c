"""Tiny data sets in the real on-disk formats, written into temporary folders for the data tests."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def shared_data_dir() -> Path | None:
    """The shared real-data folder (../shared/data next to the repo, else $FSPKD_SHARED), or None if absent."""
    candidates = [Path(__file__).resolve().parents[1].parent / "shared" / "data"]
    if os.environ.get("FSPKD_SHARED"):
        candidates.append(Path(os.environ["FSPKD_SHARED"]))
    return next((path for path in candidates if path.is_dir()), None)


def random_pixels(count: int, seed: int, side: int = 32) -> np.ndarray:
    """uint8 (count, 3, side, side) random images."""
    return np.random.default_rng(seed).integers(0, 256, (count, 3, side, side), dtype=np.uint8)


def cifar_batch(pixels: np.ndarray, labels: list[int], label_key: bytes) -> dict:
    """A dict shaped like an official CIFAR batch: b'data' uint8 (N, 3072), labels as a list of ints."""
    return {b"batch_label": b"fake batch", label_key: list(labels),
            b"data": pixels.reshape(len(pixels), -1), b"filenames": [b"x.png"] * len(pixels)}


def write_cifar10_folder(root: Path, per_batch: int = 4, test_count: int = 6) -> dict:
    """cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} under root; returns the arrays."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_pixels, train_labels = random_pixels(5 * per_batch, 1), [i % 10 for i in range(5 * per_batch)]
    for part in range(5):
        rows = slice(part * per_batch, (part + 1) * per_batch)
        _dump(folder / f"data_batch_{part + 1}", cifar_batch(train_pixels[rows], train_labels[rows], b"labels"))
    test_pixels, test_labels = random_pixels(test_count, 2), [(3 * i) % 10 for i in range(test_count)]
    _dump(folder / "test_batch", cifar_batch(test_pixels, test_labels, b"labels"))
    _dump(folder / "batches.meta", {b"label_names": [name.encode() for name in CIFAR10_CLASSES],
                                    b"num_vis": 3072, b"num_cases_per_batch": per_batch})
    return {"train": (train_pixels, train_labels), "test": (test_pixels, test_labels), "folder": folder}


def write_cifar100_folder(root: Path, train_count: int = 200, test_count: int = 100) -> dict:
    """cifar-100-python/{train, test, meta} under root with b'fine_labels'; returns the arrays."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train_pixels, train_labels = random_pixels(train_count, 3), [i % 100 for i in range(train_count)]
    test_pixels, test_labels = random_pixels(test_count, 4), [(7 * i) % 100 for i in range(test_count)]
    for name, pixels, labels in (("train", train_pixels, train_labels), ("test", test_pixels, test_labels)):
        batch = cifar_batch(pixels, labels, b"fine_labels")
        batch[b"coarse_labels"] = [label // 5 for label in labels]
        _dump(folder / name, batch)
    _dump(folder / "meta", {b"fine_label_names": [f"class{i:03d}".encode() for i in range(100)],
                            b"coarse_label_names": [f"super{i:02d}".encode() for i in range(20)]})
    return {"train": (train_pixels, train_labels), "test": (test_pixels, test_labels), "folder": folder}


def _dump(path: Path, content) -> None:
    """Pickle like the official files: numpy arrays under the numpy 1.x module name numpy.core.multiarray.

    Protocol 3 names globals in plain text (protocol 2 from Python 3 would also need _codecs.encode,
    which the Python 2 originals do not).
    """
    data = pickle.dumps(content, protocol=3)
    path.write_bytes(data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def make_tar_gz(source: Path, archive: Path) -> Path:
    """Archive folder `source` as `archive` with `source.name` as its top-level entry."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    return archive


def make_tar_gz_of_contents(source: Path, archive: Path) -> Path:
    """Archive the entries inside `source` (no wrapping folder), like the shared CIFAR JPEG archive."""
    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(source.iterdir()):
            tar.add(entry, arcname=entry.name)
    return archive


def save_image(path: Path, pixels_hwc: np.ndarray) -> None:
    """Write an RGB uint8 (H, W, 3) array as an image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels_hwc).save(path)


def write_image_folder(root: Path, classes: list[str], per_class: int, split: str = "train",
                       size: tuple[int, int] = (32, 32), suffix: str = ".png", seed: int = 0) -> None:
    """root/split/<class>/NNNN.suffix images of size (width, height), each a flat colour per class."""
    rng = np.random.default_rng(seed)
    width, height = size
    for label, name in enumerate(classes):
        for index in range(per_class):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            save_image(root / split / name / f"{index:04d}{suffix}", pixels)


def crafted_pickle(marker: Path) -> bytes:
    """A pickle whose loading would run a shell command creating `marker`."""
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    return pickle.dumps({b"data": Exploit()}, protocol=4)


def jpeg_bytes(pixels_hwc: np.ndarray) -> bytes:
    """The JPEG encoding of an RGB uint8 (H, W, 3) array."""
    buffer = io.BytesIO()
    Image.fromarray(pixels_hwc).save(buffer, format="JPEG")
    return buffer.getvalue()
