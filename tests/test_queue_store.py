"""Tests for mailserver.queue.store: the queue's files, durable and recoverable."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mailserver.queue.record import RecipientState
from mailserver.queue.store import SETTLING_TIME, QueueStore
from tests.immediate import ImmediateReactor, ImmediateThreadPool, SynchronousCommitter
from tests.queue_helpers import MESSAGE, files, queue_message


def store_in(tmp_path: Path) -> QueueStore:
    return QueueStore(tmp_path, ImmediateReactor(), ImmediateThreadPool())  # type: ignore[arg-type]


def test_queued_message_and_record_side_by_side(tmp_path: Path) -> None:
    """Queuing leaves the message file and its record, and no temporary file."""
    store = store_in(tmp_path)
    queue_message(store, "A1", ["bob@elsewhere.example"])
    assert files(store.directory) == ["A1.json", "A1.msg"]
    assert store.message_path("A1").read_bytes() == MESSAGE
    assert store.ids_blocking() == ["A1"]


def test_load_reads_every_record_oldest_first(tmp_path: Path) -> None:
    """At start-up every record comes back, in the order the messages arrived."""
    store = store_in(tmp_path)
    queue_message(store, "B2", ["x@e.example"], created=2000.0)
    queue_message(store, "A1", ["y@e.example"], created=1000.0)
    result = store.load_blocking()
    assert [record.id for record in result.records] == ["A1", "B2"]
    assert result.problems == []


def test_damaged_and_orphaned_entries_are_set_aside(tmp_path: Path) -> None:
    """A record that cannot be read, a record without its message and a message without its
    record go to queue/corrupt/ and are reported; the good entries still load."""
    store = store_in(tmp_path)
    queue_message(store, "GOOD", ["x@e.example"])
    queue_message(store, "BAD", ["x@e.example"])
    store.record_path("BAD").write_text("{ damaged")
    queue_message(store, "NOMSG", ["x@e.example"])
    store.message_path("NOMSG").unlink()
    queue_message(store, "NOREC", ["x@e.example"])
    store.record_path("NOREC").unlink()
    (store.directory / ".X.json.1.2.tmp").write_text("half")
    long_ago = time.time() - SETTLING_TIME - 1
    for name in ("NOMSG.json", "NOREC.msg", ".X.json.1.2.tmp"):
        os.utime(store.directory / name, (long_ago, long_ago))
    result = store.load_blocking()
    assert [record.id for record in result.records] == ["GOOD"]
    assert len(result.problems) == 3
    assert files(store.directory) == ["GOOD.json", "GOOD.msg"]
    assert files(store.corrupt_directory) == ["BAD.json", "BAD.msg", "NOMSG.json", "NOREC.msg"]


def test_save_replaces_the_record(tmp_path: Path) -> None:
    """Saving writes the new state in place of the old, atomically."""
    store = store_in(tmp_path)
    record = queue_message(store, "A1", ["x@e.example"])
    record.recipients[0].state = RecipientState.DELIVERED
    store.save(record)
    assert store.read_blocking("A1").recipients[0].state is RecipientState.DELIVERED
    assert files(store.directory) == ["A1.json", "A1.msg"]


def test_remove_takes_both_files(tmp_path: Path) -> None:
    """A finished message leaves nothing behind."""
    store = store_in(tmp_path)
    queue_message(store, "A1", ["x@e.example"])
    store.remove("A1")
    assert files(store.directory) == []


def test_withdraw_after_failed_queuing(tmp_path: Path) -> None:
    """Queuing that failed before the client was answered is taken back."""
    store = store_in(tmp_path)
    queue_message(store, "A1", ["x@e.example"])
    store.withdraw("A1")
    assert store.ids_blocking() == []
    assert files(store.directory) == []


def test_saves_and_removals_through_the_committer(tmp_path: Path) -> None:
    """With a group committer, a save is a flushed temporary file renamed into place and a
    removal takes both files; no temporary file is left either way."""
    store = QueueStore(tmp_path, committer=SynchronousCommitter())
    record = queue_message(store, "A1", ["x@e.example"])
    record.recipients[0].attempts = 4
    store.save(record)
    assert store.read_blocking("A1").recipients[0].attempts == 4
    assert files(store.directory) == ["A1.json", "A1.msg"]
    store.remove("A1")
    assert files(store.directory) == []


def test_entries_being_written_are_left_alone(tmp_path: Path) -> None:
    """A message file whose record is not there yet, and a record being staged, may belong to
    a delivery in progress in another process: left alone until they are an hour old."""
    store = store_in(tmp_path)
    queue_message(store, "NEW", ["x@e.example"])
    store.record_path("NEW").unlink()
    (store.directory / ".Y.json.1.2.tmp").write_text("half")
    result = store.load_blocking()
    assert (result.records, result.problems) == ([], [])
    assert files(store.directory) == [".Y.json.1.2.tmp", "NEW.msg"]
