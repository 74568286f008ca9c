"""A read-only view of the files in a folder or a tar archive, so readers need not care which it is."""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path
from typing import Callable

from fspkd.core.errors import FspkdError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class FileTree:
    """Regular files under a root, keyed by '/'-separated relative path; `read(name)` returns the bytes."""

    def __init__(self, origin: Path, readers: dict[str, Callable[[], bytes]]):
        self.origin = origin
        self._readers = readers

    def names(self) -> list[str]:
        """All relative file paths, sorted."""
        return sorted(self._readers)

    def __contains__(self, name: str) -> bool:
        return name in self._readers

    def read(self, name: str) -> bytes:
        """The contents of file `name`; FspkdError naming it if it is absent or unreadable."""
        if name not in self._readers:
            raise FspkdError(f"{self.describe(name)}: missing")
        try:
            return self._readers[name]()
        except OSError as err:
            raise FspkdError(f"{self.describe(name)}: cannot read ({err})") from None

    def describe(self, name: str) -> str:
        """How to name file `name` in a message: 'folder/name' or 'archive.tar.gz:name'."""
        if self.origin.is_dir():
            return str(self.origin / name)
        return f"{self.origin}:{name}"


def is_archive(path: Path) -> bool:
    """Whether `path` names a tar archive by its suffix."""
    return path.name.endswith(ARCHIVE_SUFFIXES)


def open_tree(path: Path) -> FileTree:
    """A FileTree for folder or tar archive `path`; FspkdError if it is missing or not readable as either."""
    if not path.exists():
        raise FspkdError(f"{path}: no such file or folder")
    if path.is_dir():
        return _folder_tree(path)
    if is_archive(path):
        return _archive_tree(path)
    raise FspkdError(f"{path}: expected a folder or a {'/'.join(ARCHIVE_SUFFIXES)} archive")


def walk_folder(root: Path):
    """(folder, file names) under `root`, following symlinked folders: users link `train/` or a class folder to
    where the images live. A link back to a folder on its own path is skipped, so a cycle cannot loop."""
    chains = {str(root): (os.path.realpath(root),)}  # each folder's real path and its ancestors'
    for folder, subfolders, files in os.walk(root, followlinks=True):
        chain = chains.pop(folder)
        kept = []
        for name in sorted(subfolders):
            real = os.path.realpath(os.path.join(folder, name))
            if real not in chain:
                kept.append(name)
                chains[os.path.join(folder, name)] = chain + (real,)
        subfolders[:] = kept
        yield folder, files


def _folder_tree(root: Path) -> FileTree:
    readers = {}
    for folder, files in walk_folder(root):
        relative_folder = Path(folder).relative_to(root).as_posix()
        prefix = "" if relative_folder == "." else relative_folder + "/"
        for file in files:
            full_path = Path(folder) / file
            readers[prefix + file] = full_path.read_bytes
    return FileTree(root, readers)


def _archive_tree(archive: Path) -> FileTree:
    """Read every regular file of `archive` into memory in one sequential pass (gzip cannot seek cheaply)."""
    contents = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    contents[_clean_member_name(member.name)] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise FspkdError(f"{archive}: truncated or corrupt archive ({type(err).__name__}: {err})") from None
    return FileTree(archive, {name: (lambda data=data: data) for name, data in contents.items()})


def _clean_member_name(name: str) -> str:
    """A member path without leading './' (names are only used as keys, never to write files)."""
    while name.startswith("./"):
        name = name[2:]
    return name


def find_root(tree: FileTree, marker: str, depth: int = 2) -> str:
    """The prefix ('' or 'a/' or 'a/b/') under which `marker` (a file or folder path) appears, shallowest first.

    Lets users point at either the data folder itself or a folder/archive wrapping it.
    """
    candidates = set()
    for name in tree.names():
        parts = name.split("/")
        for level in range(min(depth, len(parts) - 1) + 1):
            prefix = "/".join(parts[:level]) + ("/" if level else "")
            rest = name[len(prefix):]
            if rest == marker or rest.startswith(marker.rstrip("/") + "/"):
                candidates.add(prefix)
    if not candidates:
        raise FspkdError(f"{tree.origin}: found no '{marker}' in it (nor in a top-level folder)")
    return min(candidates, key=lambda prefix: (prefix.count("/"), prefix))
