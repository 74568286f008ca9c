"""Decode once, then load a uint8 tensor cache: later runs start in seconds.

An entry is `<kind>-<key>.safetensors` (the tensors) plus `<kind>-<key>.json` (class names and which splits
exist). The key hashes the source's resolved path, its size and modification time (for a folder: those of
every file in it), the kind, the image size and FORMAT_VERSION, so editing the source or changing the
decoding invalidates the entry. Both files are written atomically (temporary file + os.replace), the
tensors last, so a crash never leaves an entry that looks complete; temporary files of a writer killed mid-write
are removed at the next start. The cache only saves time: an entry that cannot be stored (a full disk, a
read-only folder) is a warning, and the run goes on with the data in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fspkd.core.atomic import atomic_write, remove_stale_temporaries, write_failure
from fspkd.core.errors import FspkdError
from fspkd.data.filetree import walk_folder
from fspkd.data.sets import DecodedDataset, ImageSet

FORMAT_VERSION = 2  # 2: EXIF orientation applied, 16-bit greyscale scaled (decode.py)


def default_cache_dir() -> Path:
    """`$FSPKD_CACHE` if set, else ~/.cache/fspkd."""
    return Path(os.environ.get("FSPKD_CACHE") or Path.home() / ".cache" / "fspkd")


def cache_key(source: Path, kind: str, image_size: int) -> str:
    """A hex digest identifying the decoded form of `source` (see the module docstring)."""
    identity = {"path": str(source.resolve()), "fingerprint": _fingerprint(source), "kind": kind,
                "image_size": image_size, "format": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _fingerprint(source: Path) -> list:
    """(size, mtime) of a file, or of every file under a folder with its relative path."""
    if source.is_file():
        stat = source.stat()
        return [stat.st_size, stat.st_mtime_ns]
    entries = []
    for folder, files in walk_folder(source):  # into symlinked folders too, as the reader goes
        for file in sorted(files):
            path = os.path.join(folder, file)
            try:
                stat = os.stat(path)
            except OSError:  # a dangling link: the reader reports it by name
                entries.append([os.path.relpath(path, source), None, None])
                continue
            entries.append([os.path.relpath(path, source), stat.st_size, stat.st_mtime_ns])
    return entries


def cached_decode(source: Path, kind: str, image_size: int, cache_dir: str | Path | None,
                  decode: Callable[[], DecodedDataset]) -> DecodedDataset:
    """Load the decoded data set for (source, kind, image_size) from the cache, or `decode()` and store it."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = folder / f"{kind}-{cache_key(source, kind, image_size)}"
    remove_stale_temporaries(folder)  # entries torn by a process killed mid-write
    decoded = _load_entry(stem)
    if decoded is None:
        decoded = decode()
        try:
            _store_entry(stem, decoded)
        except (FspkdError, OSError, RuntimeError, SafetensorError) as err:  # the cache only saves time
            for path in (stem.with_suffix(".json"), stem.with_suffix(".safetensors")):
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
            reason = " ".join(str(err).split()) if isinstance(err, FspkdError) else write_failure(err, folder)
            print(f"fspkd: warning: the decoded data is not cached ({reason}); this run goes on from memory, "
                  "the next one decodes again (FSPKD_CACHE names another cache folder)", file=sys.stderr)
    return decoded


def _load_entry(stem: Path) -> DecodedDataset | None:
    """The cached data set at `stem`, or None if absent or unreadable (then it is simply rebuilt)."""
    tensors_path, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if not (tensors_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(tensors_path)
        train = ImageSet(tensors["train_images"], tensors["train_labels"])
        test = ImageSet(tensors["test_images"], tensors["test_labels"]) if meta["has_test"] else None
        return DecodedDataset(train, test, list(meta["classes"]))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return None


def _store_entry(stem: Path, decoded: DecodedDataset) -> None:
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FspkdError(f"{stem.parent}: cannot create the data cache folder ({err})") from None
    tensors = {"train_images": decoded.train.images, "train_labels": decoded.train.labels}
    if decoded.test is not None:
        tensors.update(test_images=decoded.test.images, test_labels=decoded.test.labels)
    meta = {"classes": decoded.classes, "has_test": decoded.test is not None, "format": FORMAT_VERSION}
    atomic_write(stem.with_suffix(".json"), lambda path: path.write_text(json.dumps(meta)), "the data cache")
    atomic_write(stem.with_suffix(".safetensors"),
                 lambda path: save_file({k: v.contiguous() for k, v in tensors.items()}, str(path)), "the data cache")
