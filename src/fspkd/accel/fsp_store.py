"""Stored teacher FSP targets: the teacher's FSP matrices computed once, so stage 1 runs no teacher at all.

How augmentation and stored targets go together: each training image gets a fixed set of ``views`` augmented
views (a pad-4 crop offset and, with ``flip``, a flip flag), drawn once from a fixed seed (``VIEW_SEED``, not
the run's seed, so one store serves every run). The store holds the teacher's FSP matrices of every image in
every view; in stage 1 the loader renders each sample as one of its views, chosen uniformly afresh every epoch
(from the run's epoch generator), and the method reads that view's matrices. The targets are therefore exactly
the live teacher's for the image the student sees; what the store costs is augmentation variety: ``views``
crops per image instead of 81 (or 162 with flips). Per-epoch storage (the exact crops of epochs 0..E-1) would
have tied the store to one seed and batch order; views keep it reusable across students, seeds and batch sizes.
Without augmentation there is one view, the image itself, and nothing is lost.

On disk (``<cache>/fsp-targets/<key>.*``, ``$FSPKD_CACHE`` or ~/.cache/fspkd): ``.npy`` holds the matrices as
one (N, views, D) array, every pair's m*n entries side by side, read memory-mapped (so several processes share
one copy in the page cache); ``.views.npy`` the views (N, views, 3: oy, ox, flip); ``.json`` a description. The
key hashes the teacher's weights and buffers, the training images, the tap pairs, the normalisation, the views
and the storage dtype: changing any of them makes a new store. Files are written to a temporary name and
renamed, the targets last, so a crash or a concurrent writer never leaves a store that looks complete. Under
``torch.distributed`` rank 0 builds and the other ranks wait at a barrier, then all map the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from fspkd.core.atomic import atomic_write, remove_stale_temporaries
from fspkd.core.errors import FspkdError
from fspkd.data.augment import FixedViews
from fspkd.data.cache import default_cache_dir

FORMAT_VERSION = 1
VIEW_SEED = 20170721  # fixed, so that the store does not depend on the run's seed
DTYPES = {"float16": np.float16, "float32": np.float32}
BUILD_CHUNK = 500  # images per teacher forward pass while building

TeacherFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]  # normalised images -> one (B, m, n) per pair


class FspStore:
    """A built store, memory-mapped: ``matrices(indices, views)`` returns the teacher's FSP matrices."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.meta = json.loads(path.with_suffix(".json").read_text())
            self.targets = np.load(path.with_suffix(".npy"), mmap_mode="r")
            view_table = torch.from_numpy(np.load(path.with_suffix(".views.npy")).astype(np.int64))
        except (OSError, ValueError) as err:
            raise FspkdError(f"{path}: cannot read the stored FSP targets ({err}); delete the files to rebuild") \
                from None
        self.shapes = [tuple(s) for s in self.meta["shapes"]]
        self.views = FixedViews(view_table[..., 0], view_table[..., 1], view_table[..., 2].bool(), self.meta["pad"])

    def matrices(self, indices: torch.Tensor, views: torch.Tensor) -> list[torch.Tensor]:
        """float32 (B, m, n) teacher FSP matrices, one per pair, of images ``indices`` seen as ``views``."""
        rows = self.targets[indices.numpy(), views.numpy()]  # one gather from the mapped file
        flat = torch.from_numpy(np.ascontiguousarray(rows)).float()
        sizes = [m * n for m, n in self.shapes]
        return [part.reshape(len(flat), m, n) for part, (m, n) in zip(flat.split(sizes, dim=1), self.shapes)]


class StoredTargets:
    """Stage-1 target provider: the stored teacher FSP of the batch the loader yielded last."""

    def __init__(self, store: FspStore, loader):
        self.store, self.loader = store, loader

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        keys = self.loader.last_batch_keys
        if keys is None or len(keys[0]) != len(images):
            raise FspkdError("stored FSP targets: the batch does not come from the loader bound to the store")
        return [g.to(images.device, non_blocking=True) for g in self.store.matrices(*keys)]


def stored_targets(teacher: torch.nn.Module, teacher_fn: TeacherFn, pairs, loader, *, views: int = 4,
                   dtype: str = "float16", folder: str | Path | None = None) -> StoredTargets:
    """Open (building it first if needed) the store of ``teacher`` on ``loader``'s data and bind the loader to
    its views. ``teacher_fn`` gives the unshuffled teacher FSP matrices of a normalised batch."""
    stem, fixed = store_stem(teacher, pairs, loader, views=views, dtype=dtype, folder=folder)
    store = open_or_build(stem, teacher_fn, loader, fixed, pairs, dtype)
    loader.use_views(store.views)
    return StoredTargets(store, loader)


def store_stem(teacher: torch.nn.Module, pairs, loader, *, views: int, dtype: str,
               folder: str | Path | None = None) -> tuple[Path, FixedViews]:
    """Where the store of ``teacher`` on ``loader``'s data lives (built or not), and its fixed views."""
    if dtype not in DTYPES:
        raise FspkdError(f"stored FSP dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if views < 1:
        raise FspkdError(f"stored FSP views {views}: expected a positive number of views per image")
    fixed = (FixedViews.draw(len(loader.images), views, loader.pad, loader.flip, VIEW_SEED) if loader.augment
             else FixedViews.identity(len(loader.images), loader.pad))
    path = Path(folder) if folder is not None else default_cache_dir() / "fsp-targets"
    return path / store_key(teacher, pairs, loader, fixed, dtype), fixed


def store_pays(teacher: torch.nn.Module, teacher_fn: TeacherFn, pairs, loader, stage1_forwards: int, *,
               views: int, dtype: str, folder: str | Path | None = None) -> tuple[bool, str]:
    """``stored_fsp: auto``: whether stage 1 reads stored teacher FSP, and why, in a line for the progress output.

    Stored when a store with this run's key is already on disk (it costs nothing), or when building it costs no
    more teacher forwards than stage 1 would run live: ``stage1_forwards`` (stage-1 iterations x global batch)
    at least the training images x the views per image (one view without augmentation), and when the store
    takes at most half the free disk and half the machine's memory (stage 1 reads it at random: a store larger
    than the page cache is read from disk at every step). Otherwise live. The rule counts forwards, not
    seconds: under several processes rank 0 builds alone while the others wait, so there the store pays later
    than the rule says. Rank 0 looks for the store and at its room and tells the others, so every rank decides
    alike even where the file system differs between them.
    """
    stem, fixed = store_stem(teacher, pairs, loader, views=views, dtype=dtype, folder=folder)
    said = [stem.with_suffix(".npy").is_file(), free_bytes(stem.parent), memory_bytes()]
    if dist.is_initialized():
        dist.broadcast_object_list(said, src=0)
    exists, free, memory = said
    build = len(loader.images) * fixed.count
    if exists:
        return True, f"stage 1 reads the stored teacher FSP already in {stem.parent}"
    if stage1_forwards < build:
        return False, (f"stage 1 runs the teacher live: {stage1_forwards} teacher forwards, fewer than the {build} "
                       "that building stored FSP would take")
    size = store_bytes(pair_shapes(teacher_fn, loader), len(loader.images), fixed, dtype)
    if size > free // 2 or size > memory // 2:
        room = (f"half the {_gb(free)} free in {stem.parent}" if size > free // 2
                else f"half the machine's {_gb(memory)} of memory")
        return False, f"stage 1 runs the teacher live: stored teacher FSP would take {_gb(size)}, more than {room}"
    return True, (f"stage 1 builds and reads stored teacher FSP ({_gb(size)}): {build} teacher forwards once, "
                  f"against {stage1_forwards} live")


def check_store_room(teacher: torch.nn.Module, teacher_fn: TeacherFn, pairs, loader, *, views: int, dtype: str,
                     folder: str | Path | None = None) -> None:
    """A forced store's dry run: refuse, before a run writes anything, a store that is not built and would not fit
    its disk."""
    stem, fixed = store_stem(teacher, pairs, loader, views=views, dtype=dtype, folder=folder)
    if not stem.with_suffix(".npy").is_file():
        check_room(stem, pair_shapes(teacher_fn, loader), len(loader.images), fixed, dtype)


def check_room(stem: Path, shapes, images: int, views: FixedViews, dtype: str) -> None:
    """Refuse a store that would not fit the free disk where ``stem`` goes."""
    size, free = store_bytes(shapes, images, views, dtype), free_bytes(stem.parent)
    if size > free:
        raise FspkdError(f"{stem.parent}: stored teacher FSP needs {_gb(size)}, {_gb(free)} free there; point "
                         "$FSPKD_CACHE at a larger disk or run the teacher live (--no-stored-fsp)")


def store_bytes(shapes: Sequence[tuple[int, int]], images: int, views: FixedViews, dtype: str) -> int:
    """The size of the store's matrices: every image in every view, every pair's m*n entries."""
    return images * views.count * sum(m * n for m, n in shapes) * np.dtype(DTYPES[dtype]).itemsize


def pair_shapes(teacher_fn: TeacherFn, loader) -> list[tuple[int, int]]:
    """The (m, n) of each of the teacher's FSP matrices, from a forward pass of two images."""
    with torch.inference_mode():
        return [tuple(g.shape[1:]) for g in teacher_fn(loader.normalise(loader.images[:2].clone()))]


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds ``folder`` (or would: its nearest existing parent)."""
    existing = next(path for path in [folder, *folder.parents] if path.exists())
    return shutil.disk_usage(existing).free


def memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def store_key(teacher: torch.nn.Module, pairs, loader, views: FixedViews, dtype: str) -> str:
    """Hex digest of everything the stored targets depend on (see the module docstring)."""
    identity = {
        "format": FORMAT_VERSION,
        "teacher": [type(teacher).__name__, _state_digest(teacher)],
        "data": [list(loader.images.shape), _tensor_digest(loader.images)],
        "pairs": [list(p) for p in pairs],
        "normalisation": [loader._scale.flatten().tolist(), loader._shift.flatten().tolist()],
        "views": _tensor_digest(torch.stack([views.offset_y, views.offset_x, views.flips.long()], -1)),
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def open_or_build(stem: Path, teacher_fn: TeacherFn, loader, views: FixedViews, pairs, dtype: str) -> FspStore:
    """The store at ``stem``; built by one process (rank 0) while the others wait at a barrier."""
    main = not dist.is_initialized() or dist.get_rank() == 0
    if main:
        remove_stale_temporaries(stem.parent)  # a store torn by a process killed mid-build
    if main and not stem.with_suffix(".npy").is_file():
        build(stem, teacher_fn, loader, views, pairs, dtype)
    if dist.is_initialized():
        dist.barrier()
    return FspStore(stem)


def build(stem: Path, teacher_fn: TeacherFn, loader, views: FixedViews, pairs, dtype: str) -> None:
    """Run the teacher over every image in every view and write the store's three files."""
    started = time.perf_counter()
    images = loader.images
    shapes = pair_shapes(teacher_fn, loader)
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FspkdError(f"{stem.parent}: cannot create the FSP target store folder ({err})") from None
    check_room(stem, shapes, len(images), views, dtype)  # a memory-mapped file outgrowing its disk kills the process
    table = torch.stack([views.offset_y, views.offset_x, views.flips.long()], -1).to(torch.int16).numpy()
    _write(stem.with_suffix(".views.npy"), lambda path: _save_array(path, table))
    meta = {"format": FORMAT_VERSION, "pairs": [list(p) for p in pairs], "shapes": shapes, "pad": views.pad,
            "views": views.count, "images": len(images), "dtype": dtype}
    _write(stem.with_suffix(".json"), lambda path: path.write_text(json.dumps(meta, indent=1)))
    shape = (len(images), views.count, sum(m * n for m, n in shapes))
    _write(stem.with_suffix(".npy"), lambda path: _fill_targets(path, teacher_fn, loader, views, shape, dtype))
    meta["build_s"] = round(time.perf_counter() - started, 1)
    _write(stem.with_suffix(".json"), lambda path: path.write_text(json.dumps(meta, indent=1)))


def _fill_targets(path: Path, teacher_fn: TeacherFn, loader, views: FixedViews, shape, dtype: str) -> None:
    targets = np.lib.format.open_memmap(path, mode="w+", dtype=DTYPES[dtype], shape=shape)
    for view in range(views.count):
        for start in range(0, shape[0], BUILD_CHUNK):
            indices = torch.arange(start, min(start + BUILD_CHUNK, shape[0]))
            batch = loader.normalise(views.render(loader.images, indices, torch.full_like(indices, view)))
            with torch.inference_mode():
                flat = torch.cat([g.reshape(len(indices), -1) for g in teacher_fn(batch)], dim=1)
            values = flat.cpu().numpy().astype(DTYPES[dtype])
            if not np.isfinite(values).all():
                raise FspkdError(f"{path}: teacher FSP values of images {start}..{start + len(indices) - 1} "
                                 f"(view {view}) do not fit {dtype}; store them as float32 (--stored-fsp-dtype) or "
                                 "run the teacher live (--no-stored-fsp)")
            targets[start:start + len(indices), view] = values
    targets.flush()
    del targets


def _write(target: Path, write) -> None:
    atomic_write(target, write, "the FSP target store")


def _save_array(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as file:  # a file object: np.save would add ".npy" to a name
        np.save(file, array)


def _state_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(_bytes(tensor))
    return digest.hexdigest()


def _tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(_bytes(tensor)).hexdigest()


def _bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
