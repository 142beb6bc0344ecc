"""The outbound queue on disk: ``<data_dir>/queue/<id>.msg`` and ``<id>.json``.

The message file is the spooled message itself, hard-linked into place like a Maildir
delivery; the record (:mod:`mailserver.queue.record`) is written beside it. Both are made
durable in the same batch as any local delivery of the same message (see
:class:`mailserver.maildir.MaildirStore`), before the client hears 250: a message is queued
once and for all, or not at all. Afterwards the record is replaced atomically after each
attempt, and removed (before the message file) once no recipient is pending. With a group
committer (:mod:`mailserver.committer`) these saves and removals are flushed in batches, so
a busy queue costs a few disk flushes per batch rather than two per message.

At start-up :meth:`QueueStore.load_blocking` reads every record back. A record that cannot
be read, or whose message file is missing, and a message file without a record, are moved
to ``queue/corrupt/`` and reported: the rest of the queue keeps flowing, and nothing an
operator might want is deleted. Entries younger than :data:`SETTLING_TIME` are left alone:
other processes (the SMTP workers, or this one's listeners, already accepting mail) may be
in the middle of writing them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from mailserver import durable
from mailserver.committer import Committer, Published
from mailserver.queue.record import QueueRecord, RecordError

_P = ParamSpec("_P")
_T = TypeVar("_T")

SETTLING_TIME = 3600.0  # seconds after which a half-written entry is surely abandoned
MESSAGE_SUFFIX = ".msg"
RECORD_SUFFIX = ".json"


def queue_directory(data_dir: Path) -> Path:
    return data_dir / "queue"


@dataclass
class LoadResult:
    """What was found at start-up: the records, and one line per problem set aside."""

    records: list[QueueRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class QueueStore:
    """Files of the outbound queue. Methods ending in ``_blocking`` block (call them from a
    worker thread, or from the admin command); the others return Deferreds."""

    def __init__(
        self,
        data_dir: Path,
        reactor: IReactorFromThreads | None = None,
        pool: ThreadPool | None = None,
        committer: Committer | None = None,
    ) -> None:
        self.directory = queue_directory(data_dir)
        self.corrupt_directory = self.directory / "corrupt"
        self._reactor = reactor
        self._pool = pool
        self._committer = committer

    def message_path(self, id: str) -> Path:
        return self.directory / f"{id}{MESSAGE_SUFFIX}"

    def record_path(self, id: str) -> Path:
        return self.directory / f"{id}{RECORD_SUFFIX}"

    # -- queuing, inside a committer job (blocking) ---------------------------------------

    def stage(self, record: QueueRecord) -> tuple[Path, int]:
        """Write the record under a temporary name; the committer flushes the descriptor."""
        durable.ensure_directory(self.directory)
        return durable.write_temporary(self.record_path(record.id), record.to_json())

    def publish(self, source: Path, record: QueueRecord, staged: Path) -> Path:
        """Link the flushed message into the queue and give the staged record its name; the
        message first, so a record never names a missing file. Returns the directory to flush."""
        message = self.message_path(record.id)
        durable.link(source, message)
        try:
            durable.replace(staged, self.record_path(record.id))
        except BaseException:
            durable.remove_quietly(message)
            raise
        return self.directory

    def withdraw(self, id: str) -> None:
        """Take back a message whose queuing failed before it was acknowledged."""
        durable.remove_quietly(self.record_path(id))
        durable.remove_quietly(self.message_path(id))

    # -- the runner's side --------------------------------------------------------------------

    def load(self) -> Deferred[LoadResult]:
        return self._in_thread(self.load_blocking)

    def save(self, record: QueueRecord) -> Deferred[None]:
        """Replace the record on disk with its present state (taken now, in this thread)."""
        if self._committer is not None:
            return self._committer.submit(_Save(self.record_path(record.id), record.to_json()))
        return self._in_thread(self.save_blocking, record)

    def remove(self, id: str) -> Deferred[None]:
        if self._committer is not None:
            return self._committer.submit(_Remove(self.record_path(id), self.message_path(id)))
        return self._in_thread(self.remove_blocking, id)

    def read_new(self, known: frozenset[str]) -> Deferred[list[QueueRecord]]:
        """The records whose ids are not in ``known``; one not readable yet (being written,
        or damaged) is left for a later look, or for the next start-up."""

        def read() -> list[QueueRecord]:
            records = []
            for id in self.ids_blocking():
                if id not in known and self.message_path(id).exists():
                    try:
                        records.append(self.read_blocking(id))
                    except (OSError, RecordError):
                        continue
            return records

        return self._in_thread(read)

    def load_blocking(self) -> LoadResult:
        result = LoadResult()
        durable.ensure_directory(self.directory)
        now = time.time()
        ages = {
            entry.name: now - entry.stat().st_mtime
            for entry in os.scandir(self.directory)
            if entry.is_file()
        }
        names = set(ages)

        def settled(name: str) -> bool:
            return ages[name] > SETTLING_TIME

        for name in sorted(names):
            if name.startswith(".") and name.endswith(".tmp") and settled(name):
                durable.remove_quietly(self.directory / name)  # a record never published
        for name in sorted(names):
            id, suffix = os.path.splitext(name)
            if suffix == MESSAGE_SUFFIX and f"{id}{RECORD_SUFFIX}" not in names:
                if settled(name):
                    result.problems.append(self._set_aside(id, "message file without a record"))
            elif suffix == RECORD_SUFFIX:
                if f"{id}{MESSAGE_SUFFIX}" not in names:
                    if settled(name):
                        problem = self._set_aside(id, "record without a message file")
                        result.problems.append(problem)
                    continue
                try:
                    record = self.read_blocking(id)
                except (OSError, RecordError) as error:
                    result.problems.append(self._set_aside(id, str(error)))
                    continue
                result.records.append(record)
        result.records.sort(key=lambda record: record.created)
        return result

    def read_blocking(self, id: str) -> QueueRecord:
        record = QueueRecord.from_json(self.record_path(id).read_bytes())
        if record.id != id:
            raise RecordError(f"record names message {record.id!r}, not {id!r}")
        return record

    def ids_blocking(self) -> list[str]:
        """The ids of the queued messages, oldest name first."""
        if not self.directory.is_dir():
            return []
        return sorted(
            name[: -len(RECORD_SUFFIX)]
            for name in os.listdir(self.directory)
            if name.endswith(RECORD_SUFFIX) and not name.startswith(".")
        )

    def save_blocking(self, record: QueueRecord) -> None:
        durable.write_atomically(self.record_path(record.id), record.to_json())

    def remove_blocking(self, id: str) -> None:
        # The record goes first: a message file left alone by a crash is set aside at start-up,
        # never delivered a second time.
        durable.remove_durably([self.record_path(id), self.message_path(id)])

    def _set_aside(self, id: str, reason: str) -> str:
        durable.ensure_directory(self.corrupt_directory)
        for path in (self.record_path(id), self.message_path(id)):
            if path.exists():
                durable.replace(path, self.corrupt_directory / path.name)
        durable.fsync_directories([self.directory, self.corrupt_directory])
        return f"queue entry {id} moved to {self.corrupt_directory}: {reason}"

    def _in_thread(
        self, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> Deferred[_T]:
        assert self._reactor is not None and self._pool is not None, "no thread pool given"
        return deferToThreadPool(self._reactor, self._pool, function, *args, **kwargs)


class _Save:
    """A record save as a committer job: written and flushed, then renamed into place."""

    def __init__(self, path: Path, data: bytes) -> None:
        self._path = path
        self._data = data
        self._temporary: Path | None = None
        self._fd: int | None = None

    def write(self) -> list[int]:
        self._temporary, self._fd = durable.write_temporary(self._path, self._data)
        return [self._fd]

    def publish(self) -> Published[None]:
        assert self._temporary is not None
        durable.replace(self._temporary, self._path)
        self._temporary = None
        return Published(None, [self._path.parent])

    def cleanup(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._temporary is not None:
            durable.remove_quietly(self._temporary)


class _Remove:
    """A finished entry's removal as a committer job: the record first, then the message."""

    def __init__(self, record: Path, message: Path) -> None:
        self._paths = (record, message)

    def write(self) -> list[int]:
        return []

    def publish(self) -> Published[None]:
        for path in self._paths:
            durable.remove_quietly(path)
        return Published(None, [self._paths[0].parent])

    def cleanup(self) -> None:
        pass
