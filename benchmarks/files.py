"""Atomic file writes shared by records and checkpoints: never a partial file, never a leftover temporary file,
the process umask honoured, and a failed write (disk full, permissions) as one line naming the file.

A write goes to a temporary file in the target's folder (created with mode 0666 minus the umask, as ``open``
would, so a results folder shared with a group stays readable by it), is fsynced, and replaces the target with
``os.replace``; on any failure the temporary file is removed and the target is the old file (or absent).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteError(OSError):
    """A file could not be written; ``str()`` is one line naming the file and the cause."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_error(exc: OSError, path: Path) -> WriteError:
    """``exc`` as a one-line ``WriteError`` about ``path`` ("no space left on device while writing FILE")."""
    if exc.errno in DISK_FULL:
        message = f"no space left on device while writing {path}; free space (or use another --out DIR) and rerun"
    else:
        message = f"cannot write {path} ({exc.strerror or type(exc).__name__})"
    return WriteError(exc.errno or 0, message)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX needs the directory entry flushed too)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. platforms without directory fds; the data itself is already fsynced
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def temporary_name(path: Path) -> Path:
    """A sibling name no other writer uses (``.NAME.PID.RANDOM.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); ``WriteError`` when it cannot."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        # Any failure (KeyboardInterrupt included) removes the temporary file and re-raises.
        with contextlib.suppress(OSError):   # (never hides the original error)
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise write_error(exc, path) from exc
        raise
    fsync_dir(path.parent)
    return path
