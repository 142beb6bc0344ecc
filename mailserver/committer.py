"""Group commit: durable writes in batches, on a few threads of their own.

Making one message durable costs a flush of the disk (an fsync of the file and of its
directory). A disk completes a flush in about the same time whether it carries one message or
fifty, so instead of one fsync per message on its own thread, a committer thread takes every
job that is waiting, stages them all (writes and links, no flush), then fsyncs each file and
each distinct directory once: the first fsync commits the filesystem journal for the whole
batch and the rest find little left to do. Few threads also means little contention for the
interpreter lock with the reactor thread.

A job is durable only when its own files and directories were fsync'd without error; a job
whose flush failed is undone (what it made visible is removed) and fails alone.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

from mailserver import durable

T = TypeVar("T")

MAX_BATCH = 64


@dataclass
class Staged(Generic[T]):
    """What a job made visible, to be flushed: the files (as open descriptors) and the
    directories whose entries changed, and how to take it back if the flush fails."""

    result: T
    files: list[int] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)
    undo: Callable[[], None] = lambda: None


class Job(Protocol[T]):
    def stage(self) -> Staged[T]:
        """Write and link without flushing (blocking); raise OSError on failure."""

    def cleanup(self) -> None:
        """Release temporary resources; called once, after success or failure; never raises
        for a job that succeeded (it is durable by then)."""


@dataclass
class _Pending:
    job: Job[Any]
    deferred: Deferred[Any]
    staged: Staged[Any] | None = None
    failure: Failure | None = None


_STOP = object()


class GroupCommitter:
    """Runs :class:`Job` instances in batches on ``threads`` threads; see the module docstring."""

    def __init__(self, reactor: IReactorFromThreads, threads: int = 2) -> None:
        self._reactor = reactor
        self._thread_count = threads
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self._thread_count):
            thread = threading.Thread(
                target=self._run, name=f"mailserver-commit-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Finish every job already submitted, then end the threads."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def submit(self, job: Job[T]) -> Deferred[T]:
        """Fires, in the reactor thread, with the job's result once it is durable."""
        deferred: Deferred[T] = Deferred()
        self._queue.put(_Pending(job, deferred))
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
            pending = [item for item in batch if isinstance(item, _Pending)]
            try:
                commit_batch(pending)
            except Exception:  # a bug of ours: fail the batch, keep the thread alive
                failure = Failure()
                for item in pending:
                    item.failure = item.failure or failure
            self._reactor.callFromThread(_fire_all, pending)
            if stop_after:
                return


def commit_batch(batch: list[_Pending]) -> None:
    """Stage every job, flush files then directories, undo the jobs whose flush failed."""
    for item in batch:
        try:
            item.staged = item.job.stage()
        except Exception:
            item.failure = Failure()
    staged = [item for item in batch if item.staged is not None]
    for item in staged:
        assert item.staged is not None
        try:
            for fd in item.staged.files:
                durable.fsync_file(fd)
        except OSError:
            item.failure = Failure()
    directories: dict[Path, None] = {}
    for item in staged:
        if item.failure is None and item.staged is not None:
            directories.update(dict.fromkeys(item.staged.directories))
    directory_errors: dict[Path, Failure] = {}
    for directory in directories:
        try:
            durable.fsync_directory(directory)
        except OSError:
            directory_errors[directory] = Failure()
    for item in staged:
        assert item.staged is not None
        if item.failure is None:
            for directory in item.staged.directories:
                if directory in directory_errors:
                    item.failure = directory_errors[directory]
                    break
        if item.failure is not None:
            item.staged.undo()
    for item in batch:
        item.job.cleanup()


def _fire_all(batch: list[_Pending]) -> None:
    for item in batch:
        if item.failure is not None:
            item.deferred.errback(item.failure)
        else:
            assert item.staged is not None
            item.deferred.callback(item.staged.result)
