"""Tests for mailserver.committer: group commit of durable writes."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from mailserver import durable
from mailserver.committer import (
    CommitterStopped,
    GroupCommitter,
    PendingJob,
    Published,
    commit_batch,
)


class FakeJob:
    """A job that records what the committer asks of it; each step can be made to fail."""

    def __init__(self, name: str, directory: Path, log: list[str], fail: str = "") -> None:
        self.name = name
        self.directory = directory
        self.log = log
        self.fail = fail
        self.fd = os.open(directory / f"{name}.data", os.O_WRONLY | os.O_CREAT, 0o600)

    def write(self) -> list[int]:
        self.log.append(f"write {self.name}")
        if self.fail == "write":
            raise OSError("write failed")
        return [self.fd]

    def publish(self) -> Published[str]:
        self.log.append(f"publish {self.name}")
        if self.fail == "publish":
            raise OSError("publish failed")
        return Published(
            result=self.name,
            directories=[self.directory],
            undo=lambda: self.log.append(f"undo {self.name}"),
        )

    def cleanup(self) -> None:
        self.log.append(f"cleanup {self.name}")
        os.close(self.fd)


def outcome(pending: PendingJob) -> Any:
    results: list[Any] = []
    pending.deferred.addBoth(results.append)
    pending.fire()
    return results[0]


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every fsync the committer makes, in order (files by descriptor, directories by path)."""
    calls: list[object] = []
    monkeypatch.setattr(durable, "fsync_file", calls.append)
    monkeypatch.setattr(durable, "fsync_directory", calls.append)
    return calls


def test_batch_flushes_files_before_publishing_and_each_directory_once(
    tmp_path: Path, synced: list[object]
) -> None:
    """All files are fsync'd before any job is published, and a directory shared by the whole
    batch is fsync'd once after every job was published."""
    log: list[str] = []
    jobs = [FakeJob(name, tmp_path, log) for name in ("a", "b", "c")]
    batch = [PendingJob(job, Deferred()) for job in jobs]
    commit_batch(batch)
    assert synced == [job.fd for job in jobs] + [tmp_path]
    assert log == [
        "write a", "write b", "write c",
        "publish a", "publish b", "publish c",
        "cleanup a", "cleanup b", "cleanup c",
    ]  # fmt: skip
    assert [outcome(item) for item in batch] == ["a", "b", "c"]


@pytest.mark.parametrize("step", ["write", "publish"])
def test_a_failing_job_fails_alone(tmp_path: Path, synced: list[object], step: str) -> None:
    """A job whose write or publish fails gets its error; the others are committed."""
    log: list[str] = []
    good, bad = FakeJob("good", tmp_path, log), FakeJob("bad", tmp_path, log, fail=step)
    batch = [PendingJob(good, Deferred()), PendingJob(bad, Deferred())]
    commit_batch(batch)
    assert outcome(batch[0]) == "good"
    failure = outcome(batch[1])
    assert failure.check(OSError)
    assert "undo good" not in log
    assert "cleanup bad" in log and "cleanup good" in log
    if step == "write":
        assert "publish bad" not in log  # nothing unflushed is ever published


def test_failed_file_flush_is_never_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When fsync of a job's file fails, that job is not published (no half-written file gets
    a visible name) and fails with the error."""
    log: list[str] = []
    job = FakeJob("j", tmp_path, log)

    def broken(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(durable, "fsync_file", broken)
    pending = PendingJob(job, Deferred())
    commit_batch([pending])
    assert outcome(pending).check(OSError)
    assert log == ["write j", "cleanup j"]


def test_failed_directory_flush_undoes_only_its_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory that cannot be fsync'd fails and undoes the jobs published into it; a job
    in another directory is unaffected."""
    bad_dir, good_dir = tmp_path / "bad", tmp_path / "good"
    bad_dir.mkdir()
    good_dir.mkdir()
    log: list[str] = []

    def fsync_directory(path: Path) -> None:
        if path == bad_dir:
            raise OSError(5, "I/O error")

    monkeypatch.setattr(durable, "fsync_file", lambda fd: None)
    monkeypatch.setattr(durable, "fsync_directory", fsync_directory)
    batch = [
        PendingJob(FakeJob("x", bad_dir, log), Deferred()),
        PendingJob(FakeJob("y", good_dir, log), Deferred()),
    ]
    commit_batch(batch)
    assert outcome(batch[0]).check(OSError)
    assert outcome(batch[1]) == "y"
    assert "undo x" in log and "undo y" not in log


class CallingReactor:
    """Stands in for the reactor's callFromThread: runs the call in the committer's thread,
    under a lock, and lets a test wait for results."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        with self.lock:
            f(*args)


def test_threads_commit_every_submitted_job_before_stopping(
    tmp_path: Path, synced: list[object]
) -> None:
    """Jobs waiting together are committed in a few batches (one directory flush per batch,
    not per job); every job completes and stop() waits for them."""
    reactor = CallingReactor()
    committer = GroupCommitter(reactor, threads=2)  # type: ignore[arg-type]
    log: list[str] = []
    results: list[str] = []
    for index in range(50):
        committer.submit(FakeJob(str(index), tmp_path, log)).addBoth(results.append)
    committer.start()
    committer.stop()
    assert sorted(results, key=int) == [str(index) for index in range(50)]
    assert synced.count(tmp_path) < 10


def test_a_job_after_stop_fails_at_once(tmp_path: Path) -> None:
    """Once the committer has stopped (the server is shutting down), a new job fails at once
    with CommitterStopped, after its cleanup, instead of waiting forever."""
    committer = GroupCommitter(CallingReactor(), threads=1)  # type: ignore[arg-type]
    committer.start()
    committer.stop()
    log: list[str] = []
    results: list[Any] = []
    committer.submit(FakeJob("late", tmp_path, log)).addBoth(results.append)
    [failure] = results
    assert failure.check(CommitterStopped)
    assert log == ["cleanup late"]
