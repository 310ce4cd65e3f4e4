"""Durable private files: atomic replace with fsync, mode 0600.

Used for key files, saved routing tables and anything else a crash must not leave half-written
or readable by other users.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` atomically (temp file, fsync, rename, fsync dir) with mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    # A leftover temp file (a crash, or planted by someone else) keeps its own mode if merely
    # truncated; remove it and create ours exclusively so the file is born 0600.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_private(path: Path, data: bytes) -> None:
    """Like `write_private`, but refuse to replace an existing file (identities are never
    overwritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a directory's entries durable (a file created, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
