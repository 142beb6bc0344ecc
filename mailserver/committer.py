"""Group commit: durable writes in batches, on a few threads of their own.

Making one message durable costs two flushes of the disk: its file's data before the file is
given a visible name (so a crash never exposes a half-written file), then the directory that
holds that name. A disk completes a flush in about the same time whether it carries one
message or fifty, so instead of fsyncs per message on a thread each, a committer thread takes
every job that is waiting and works in two phases: write every job's data and fsync each file,
then publish every job (link it into place) and fsync each distinct directory once. The first
fsync of a phase commits the filesystem journal for the whole batch and the rest find little
left to do. Few threads also means little contention for the interpreter lock with the
reactor thread.

A job is durable only when its own files and directories were fsync'd without error; a job
that failed is undone (what it made visible is removed) and fails alone.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from mailserver import durable

T = TypeVar("T")

MAX_BATCH = 64


@dataclass
class Published(Generic[T]):
    """What a job made visible: the directories whose entries changed, to be flushed, and how
    to take it back if that flush fails."""

    result: T
    directories: list[Path] = field(default_factory=list)
    undo: Callable[[], None] = lambda: None


class Job(Protocol[T]):
    def write(self) -> list[int]:
        """Write the data without flushing (blocking); returns the descriptors to fsync."""

    def publish(self) -> Published[T]:
        """Give the flushed data its visible names (blocking), removing any it made if it
        fails part way."""

    def cleanup(self) -> None:
        """Release temporary resources; called once, after success or failure; never raises
        for a job that succeeded (it is durable by then)."""


class Committer(Protocol):
    """What a store needs from a committer (the tests use a synchronous one)."""

    def submit(self, job: Job[T]) -> Deferred[T]: ...


@dataclass
class PendingJob:
    """A submitted job, its Deferred, and how far it got."""

    job: Job[Any]
    deferred: Deferred[Any]
    published: Published[Any] | None = None
    failure: Failure | None = None

    def fire(self) -> None:
        """Report the outcome (in the reactor thread)."""
        if self.failure is not None:
            self.deferred.errback(self.failure)
        else:
            assert self.published is not None
            self.deferred.callback(self.published.result)

    def attempt(self, step: Callable[[PendingJob], None]) -> None:
        """Run one step of a job that has not failed yet, recording its failure."""
        if self.failure is None:
            try:
                step(self)
            except Exception:
                self.failure = Failure()


_STOP = object()


class CommitterStopped(Exception):
    """A job came after the committer stopped: nothing was written."""


class GroupCommitter:
    """Runs :class:`Job` instances in batches on ``threads`` threads; see the module docstring."""

    def __init__(self, reactor: IReactorFromThreads, threads: int = 2) -> None:
        self._reactor = reactor
        self._thread_count = threads
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def start(self) -> None:
        for index in range(self._thread_count):
            thread = threading.Thread(
                target=self._run, name=f"mailserver-commit-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Finish every job already submitted, then end the threads; later jobs fail."""
        self._stopped = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def submit(self, job: Job[T]) -> Deferred[T]:
        """Fires, in the reactor thread, with the job's result once it is durable."""
        if self._stopped:
            # The server is shutting down: answer at once (the client hears 451, try later).
            job.cleanup()
            return fail(CommitterStopped("the server is shutting down"))
        deferred: Deferred[T] = Deferred()
        self._queue.put(PendingJob(job, deferred))
        return deferred

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop_after = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True
                    break
                batch.append(item)
            pending = [item for item in batch if isinstance(item, PendingJob)]
            try:
                commit_batch(pending)
            except Exception:  # a bug of ours: fail the batch, keep the thread alive
                failure = Failure()
                for item in pending:
                    item.failure = item.failure or failure
            self._reactor.callFromThread(_fire_all, pending)
            if stop_after:
                return


def commit_batch(batch: list[PendingJob]) -> None:
    """Write and flush every job's files, publish them, flush the directories."""
    descriptors: dict[int, list[PendingJob]] = {}
    for item in batch:
        item.attempt(partial(_add_files, descriptors))
    for fd, owners in descriptors.items():
        try:
            durable.fsync_file(fd)
        except OSError:
            failure = Failure()
            for owner in owners:
                owner.failure = owner.failure or failure
    directories: dict[Path, list[PendingJob]] = {}
    for item in batch:
        item.attempt(partial(_publish, directories))
    for directory, owners in directories.items():
        try:
            durable.fsync_directory(directory)
        except OSError:
            failure = Failure()
            for owner in owners:
                owner.failure = owner.failure or failure
    for item in batch:
        if item.failure is not None and item.published is not None:
            item.published.undo()
        item.job.cleanup()


def _add_files(descriptors: dict[int, list[PendingJob]], item: PendingJob) -> None:
    for fd in item.job.write():
        descriptors.setdefault(fd, []).append(item)


def _publish(directories: dict[Path, list[PendingJob]], item: PendingJob) -> None:
    item.published = item.job.publish()
    for directory in item.published.directories:
        directories.setdefault(directory, []).append(item)


def _fire_all(batch: list[PendingJob]) -> None:
    for item in batch:
        item.fire()
