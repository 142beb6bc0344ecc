"""The one place that makes files durable: fsync, link and rename happen here and nowhere else.

Every helper either completes with the result on stable storage or raises ``OSError``;
callers decide what a failure means for the client. These functions block: call them from a
worker thread, never from the reactor thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from pathlib import Path

_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_full(error: BaseException) -> bool:
    """Whether ``error`` means the disk or a quota is full: worth trying again later."""
    return isinstance(error, OSError) and error.errno in _FULL_ERRNOS


def fsync_file(fd: int) -> None:
    """Flush a file's data and metadata to stable storage."""
    os.fsync(fd)


def fsync_directory(path: Path) -> None:
    """Flush a directory's entries (new links, renames, unlinks) to stable storage."""
    fd = os.open(path, _DIRECTORY_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directories(paths: Iterable[Path]) -> None:
    for path in dict.fromkeys(paths):
        fsync_directory(path)


def ensure_directory(path: Path, mode: int = 0o700) -> None:
    """Create ``path`` and missing parents, making each new entry durable in its parent."""
    if path.is_dir():
        return
    ensure_directory(path.parent, mode)
    try:
        path.mkdir(mode)
    except FileExistsError:
        if path.is_dir():
            return  # made meanwhile by another thread or process
        raise
    fsync_directory(path.parent)


def link(source: Path, target: Path) -> None:
    """Give ``source`` a second name; the caller fsyncs ``target``'s directory afterwards."""
    os.link(source, target)


def remove_quietly(path: Path) -> None:
    """Remove a file if it exists; used to clean up after a failure, so errors are ignored."""
    with contextlib.suppress(OSError):
        os.unlink(path)
