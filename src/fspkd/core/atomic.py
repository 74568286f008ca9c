"""Atomic file writes: a crash leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from fspkd.core.errors import FspkdError


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None], what: str = "the file") -> None:
    """Call ``write`` on a temporary path beside ``target``, fsync it, rename it over ``target``, fsync the folder.

    An OSError (disk full, no permission) becomes an FspkdError naming ``target`` and ``what`` it holds.
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise FspkdError(f"cannot write {what} {target}: folder {target.parent} does not exist")
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        _fsync(temporary, os.O_RDONLY)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600
        os.replace(temporary, target)
        _fsync(target.parent, os.O_RDONLY)
    except OSError as err:
        Path(temporary).unlink(missing_ok=True)
        raise FspkdError(f"{target}: cannot write {what} ({err})") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _fsync(path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomic(target: str | os.PathLike, text: str, what: str = "the file") -> None:
    """``target`` holding ``text``, written whole or not at all."""
    atomic_write(target, lambda path: path.write_text(text), what)
