"""Atomic file writes: a crash leaves the old file or the new one, never a torn one.

The temporary file sits beside its target as ``.<name>.<host>-<pid>.<random>.tmp``, so that one left by a process
killed mid-write (kill -9, power loss) is recognised and removed at the next start (``remove_stale_temporaries``)
while a live writer's file is left alone.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from fspkd.core.errors import FspkdError

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
_TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None], what: str = "the file") -> None:
    """Call ``write`` on a temporary path beside ``target``, fsync it, rename it over ``target``, fsync the folder.

    A write that fails for a reason of the file system (disk full, no permission, read-only) becomes an
    FspkdError naming ``target``, ``what`` it holds and the cause; ``target`` keeps its previous content and no
    temporary file is left. Library writers that report such a failure as a RuntimeError (``torch.save``,
    safetensors) are recognised by the OSError they were handling, or else named with their own message.
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise FspkdError(f"cannot write {what} {target}: folder {target.parent} does not exist")
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{_HOST}-{os.getpid()}.",
                                             suffix=".tmp")
        os.close(handle)
        write(Path(temporary))
        _fsync(temporary, os.O_RDONLY)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600
        os.replace(temporary, target)
        _fsync(target.parent, os.O_RDONLY)
    except (OSError, RuntimeError) as err:
        _remove(temporary)
        if isinstance(err, RuntimeError) and _os_error(err) is None and not _is_writer_error(err):
            raise  # a RuntimeError of the payload itself, not of the disk
        raise FspkdError(f"{target}: cannot write {what} ({write_failure(err, target.parent)})") from None
    except BaseException:
        _remove(temporary)
        raise


def write_failure(err: BaseException, folder: Path) -> str:
    """The cause of a failed write in a few words: the OSError behind ``err`` if any (with a hint for a full
    disk), else ``err``'s first line with the free space left in ``folder``."""
    cause = _os_error(err)
    if cause is not None:
        text = f"{cause.strerror or cause}" if cause.errno else str(cause)
        if cause.errno in (errno.ENOSPC, errno.EDQUOT):
            text += f"; {_free_space(folder)}"
        elif cause.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            text += f" in {folder}"
        return text
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{type(err).__name__}: {first}; {_free_space(folder)}"


def _os_error(err: BaseException | None) -> OSError | None:
    """``err`` if an OSError, else the OSError it was raised while handling (its cause or context), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _is_writer_error(err: RuntimeError) -> bool:
    """A torch / safetensors writer's report of a failed write (they raise RuntimeError without the OSError)."""
    text = str(err)
    return any(words in text for words in ("unexpected pos", "file write failed", "PytorchStreamWriter",
                                           "No space left", "Read-only file system", "Permission denied",
                                           "Disk quota", "os error"))


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free there" + (" (the disk is full?)" if free < 2**26 else "")


def _remove(temporary: str | None) -> None:
    if temporary is not None:
        try:
            Path(temporary).unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: nothing was written into it either


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that ``atomic_write`` left in ``folder`` from processes of this host that no
    longer run (killed mid-write); return them. Another host's files and a live process's are left alone."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if match and match["host"] == _HOST and not _is_running(int(match["pid"])):
            path = Path(folder) / name
            try:
                path.unlink()
            except OSError:
                continue
            removed.append(path)
    return removed


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _fsync(path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomic(target: str | os.PathLike, text: str, what: str = "the file") -> None:
    """``target`` holding ``text``, written whole or not at all."""
    atomic_write(target, lambda path: path.write_text(text), what)
