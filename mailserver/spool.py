"""A message being received, on its way to the mailboxes.

The spool keeps a small message in memory and moves a larger one to a file as it arrives, so
memory stays bounded whatever the message size. The file lives in the data directory's
``spool/`` folder, on the same filesystem as the mailboxes, so delivery can hard-link it into
place; nothing in ``spool/`` is ever visible to mail readers.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from mailserver import durable

SPILL_THRESHOLD = 256 * 1024
STALE_AFTER = 24 * 3600  # seconds; older spool files are debris of a crash


class Spool:
    """Bytes of one message: :meth:`write` from the reactor, :meth:`finish` from a worker."""

    def __init__(self, directory: Path, spill_threshold: int = SPILL_THRESHOLD) -> None:
        self._directory = directory
        self._spill_threshold = spill_threshold
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._fd: int | None = None
        self._path: Path | None = None
        self._insertion: tuple[int, bytes] | None = None
        self._discarded = False
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append data; past the threshold, the buffer moves to the spool file."""
        self.size += len(data)
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= self._spill_threshold:
            self._flush()

    def insert(self, offset: int, data: bytes) -> None:
        """Put ``data`` at ``offset`` (header fields known only once the whole message has
        arrived: signatures, check results). A message still in memory takes it at once; one
        already in its file is rewritten by :meth:`finish`, off the reactor, the copy made by
        the kernel."""
        if not data:
            return
        if self._discarded:
            raise ValueError("the message was discarded")
        if self._insertion is not None:
            raise ValueError("one insertion per message")
        self.size += len(data)
        if self._fd is None:
            whole = b"".join(self._buffer)
            self._buffer[:] = [whole[:offset], data, whole[offset:]]
            self._buffered += len(data)
        else:
            self._insertion = (offset, data)

    def finish(self) -> tuple[Path, int]:
        """Write out what is buffered (blocking); returns the file and its open descriptor,
        for the caller to fsync once it has linked the file where it belongs."""
        if self._discarded:
            raise ValueError("the message was discarded")
        self._flush()
        if self._insertion is not None:
            self._rewrite(*self._insertion)
            self._insertion = None
        assert self._fd is not None and self._path is not None
        return self._path, self._fd

    def _rewrite(self, offset: int, data: bytes) -> None:
        """A new spool file: the first ``offset`` octets, ``data``, then the rest."""
        old_fd, old_path = self._fd, self._path
        assert old_fd is not None and old_path is not None
        self._open()
        assert self._fd is not None
        try:
            _write_all(self._fd, os.pread(old_fd, offset, 0) + data)
            _copy_rest(old_fd, self._fd, offset)
        finally:
            os.close(old_fd)
            durable.remove_quietly(old_path)

    def discard(self) -> None:
        """Close and remove the spool file, if any; safe to call more than once."""
        self._discarded = True
        self._buffer.clear()
        self._buffered = 0
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._path is not None:
            durable.remove_quietly(self._path)
            self._path = None

    def _flush(self) -> None:
        if self._fd is None:
            self._open()
        assert self._fd is not None
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        _write_all(self._fd, data)

    def _open(self) -> None:
        path = self._directory / f"{time.time_ns()}.{os.getpid()}.{secrets.token_hex(6)}"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._path = path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_rest(source: int, target: int, offset: int) -> None:
    """Append ``source`` from ``offset`` to its end to ``target``, in the kernel where it can."""
    position = offset
    while True:
        try:
            copied = os.copy_file_range(source, target, 1 << 24, position)
        except OSError:  # not this filesystem or kernel: copy through a buffer
            break
        if copied == 0:
            return
        position += copied
    while chunk := os.pread(source, 1 << 20, position):
        _write_all(target, chunk)
        position += len(chunk)


def clean_stale(directory: Path, now: float) -> int:
    """Remove spool files left behind by a crash; returns how many were removed."""
    removed = 0
    for entry in os.scandir(directory):
        if entry.is_file() and now - entry.stat().st_mtime > STALE_AFTER:
            durable.remove_quietly(Path(entry.path))
            removed += 1
    return removed
