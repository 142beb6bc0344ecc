"""The one place that makes files durable: fsync, link and rename happen here and nowhere else.

Every helper either completes with the result on stable storage or raises ``OSError``;
callers decide what a failure means for the client. These functions block: call them from a
worker thread, never from the reactor thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
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


def replace(source: Path, target: Path) -> None:
    """Give ``source`` the name ``target`` in one step, replacing any file there; the caller
    fsyncs the directory afterwards."""
    os.replace(source, target)


def write_temporary(path: Path, data: bytes) -> tuple[Path, int]:
    """Write ``data`` to a new temporary file beside ``path``, not yet flushed; returns its
    name and open descriptor, for the caller to fsync and then :func:`replace` into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        remove_quietly(temporary)
        raise
    return temporary, fd


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with a file holding ``data``, durably: a reader sees the old file or
    the new one, never a part of either, and the new one survives a crash once this returns."""
    temporary, fd = write_temporary(path, data)
    try:
        fsync_file(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(temporary)
        raise
    os.close(fd)
    try:
        replace(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise
    fsync_directory(path.parent)


def remove_durably(paths: Iterable[Path]) -> None:
    """Remove files (missing ones are fine) and flush their directories."""
    directories = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        directories.append(path.parent)
    fsync_directories(directories)
