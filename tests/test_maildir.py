"""Tests for mailserver.maildir (MaildirStore, UniqueNames, maildir_path) and the in-memory
mail store twin in mailserver.memory.

MaildirStore hands its blocking work to a group committer. The tests use
:class:`SynchronousCommitter`, which runs each job at once in the test's thread through the
committer's real batch logic (:func:`mailserver.committer.commit_batch`), so each Deferred has
fired by the time ``deliver`` returns.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from mailserver import durable
from mailserver.interfaces import IMailStore, OutboundRecipient, StorageFull
from mailserver.maildir import MaildirStore, UniqueNames, maildir_path
from mailserver.memory import MemoryMailStore
from mailserver.queue.record import QueueRecord
from mailserver.spool import Spool
from tests.immediate import SynchronousCommitter

HOSTNAME = "mx.ours.example"
MESSAGE = b"Return-Path: <a@b.example>\r\nSubject: hi\r\n\r\nHello.\r\n"
NAME = re.compile(r"(\d+)\.M(\d{1,6})P(\d+)Q(\d+)\.(.+),S=(\d+)")


def result_of(deferred: Deferred[Any]) -> Any:
    """The result of an already-fired Deferred (a Failure if it failed)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def store(data_dir: Path) -> MaildirStore:
    return MaildirStore(data_dir, HOSTNAME, SynchronousCommitter())


def spooled(spool_dir: Path, content: bytes = MESSAGE, threshold: int = 1024) -> Spool:
    spool = Spool(spool_dir, spill_threshold=threshold)
    spool.write(content)
    return spool


def new_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "mail").glob("*/*/new/*"))


MAILBOXES = ["alice@ours.example", "bob@ours.example", "carol@other.example"]


# --- MaildirStore ---------------------------------------------------------------------------


def test_provides_the_interface(store: MaildirStore) -> None:
    """MaildirStore provides IMailStore."""
    assert verifyObject(IMailStore, store)


def test_delivers_hard_links(store: MaildirStore, data_dir: Path, spool_dir: Path) -> None:
    """One message for several mailboxes is one file linked into each new/ under one name:
    same inode, exact content, ",S=<size>" in the name; the spool's own name is gone."""
    name = result_of(store.deliver(spooled(spool_dir), MAILBOXES))
    assert isinstance(name, str)
    targets = [maildir_path(data_dir, address) / "new" / name for address in MAILBOXES]
    assert new_files(data_dir) == sorted(targets)
    assert {target.read_bytes() for target in targets} == {MESSAGE}
    assert len({target.stat().st_ino for target in targets}) == 1
    assert targets[0].stat().st_nlink == len(MAILBOXES)
    assert name.endswith(f",S={len(MESSAGE)}")
    assert list(spool_dir.iterdir()) == []


def test_large_spilled_message(store: MaildirStore, data_dir: Path, spool_dir: Path) -> None:
    """A message that spilled to the spool file in pieces is stored whole, size in the name."""
    content = b"x" * 998 + b"\r\n"
    spool = Spool(spool_dir, spill_threshold=4096)
    for _ in range(100):
        spool.write(content)
    name = result_of(store.deliver(spool, ["bob@ours.example"]))
    [stored] = new_files(data_dir)
    assert stored.read_bytes() == content * 100
    assert stored.name == name
    assert name.endswith(",S=100000")


def test_creates_the_maildir_on_first_delivery(
    store: MaildirStore, data_dir: Path, spool_dir: Path
) -> None:
    """A mailbox without a Maildir gets one (tmp, new, cur) at its first delivery, at
    mail/<domain>/<local part>."""
    maildir = data_dir / "mail" / "ours.example" / "bob"
    assert not maildir.exists()
    result_of(store.deliver(spooled(spool_dir), ["bob@ours.example"]))
    assert sorted(path.name for path in maildir.iterdir()) == ["cur", "new", "tmp"]
    result_of(store.deliver(spooled(spool_dir), ["bob@ours.example"]))
    assert len(list((maildir / "new").iterdir())) == 2


def test_new_directories_are_fsynced(
    store: MaildirStore, data_dir: Path, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the delivery is reported, the file is fsync'd before it is linked anywhere,
    then each recipient's new/ directory is fsync'd once."""
    events: list[object] = []
    real_link = durable.link
    monkeypatch.setattr(durable, "fsync_file", lambda fd: events.append("file"))
    monkeypatch.setattr(durable, "fsync_directory", events.append)
    monkeypatch.setattr(
        durable, "link", lambda source, target: (events.append("link"), real_link(source, target))
    )
    result_of(store.deliver(spooled(spool_dir), MAILBOXES))
    new_dirs = [maildir_path(data_dir, address) / "new" for address in MAILBOXES]
    # (Creating the Maildirs on first delivery fsyncs their parents too: not counted here.)
    ordered = [event for event in events if event in ("file", "link") or event in new_dirs]
    assert ordered == ["file", *["link"] * len(MAILBOXES), *new_dirs]


def failing_link(failure: OSError, after: int) -> Callable[[Path, Path], None]:
    """A durable.link that makes ``after`` real links, then raises ``failure``."""
    made = [0]
    real_link = durable.link

    def link(source: Path, target: Path) -> None:
        if made[0] >= after:
            raise failure
        made[0] += 1
        real_link(source, target)

    return link


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_is_storage_full(
    store: MaildirStore,
    data_dir: Path,
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    """A full disk or quota at the third mailbox fails with StorageFull, and the copies
    already linked into the first two new/ are removed, as is the spool file."""
    monkeypatch.setattr(durable, "link", failing_link(OSError(code, os.strerror(code)), 2))
    failure = result_of(store.deliver(spooled(spool_dir), MAILBOXES))
    assert isinstance(failure, Failure)
    assert failure.check(StorageFull)
    assert new_files(data_dir) == []
    assert list(spool_dir.iterdir()) == []


def test_full_disk_while_writing_the_spool(
    store: MaildirStore, data_dir: Path, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No space to make the spooled file durable is StorageFull too; nothing is linked."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable, "fsync_file", full)
    failure = result_of(store.deliver(spooled(spool_dir), MAILBOXES))
    assert isinstance(failure, Failure) and failure.check(StorageFull)
    assert not (data_dir / "mail").exists() or new_files(data_dir) == []
    assert list(spool_dir.iterdir()) == []


def test_other_os_errors_pass_through(
    store: MaildirStore, data_dir: Path, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any other OSError is passed on as it is (not StorageFull), after removing every copy
    and the spool file."""
    monkeypatch.setattr(durable, "link", failing_link(OSError(errno.EIO, "I/O error"), 1))
    failure = result_of(store.deliver(spooled(spool_dir), MAILBOXES))
    assert isinstance(failure, Failure)
    assert failure.check(OSError) and not failure.check(StorageFull)
    assert isinstance(failure.value, OSError) and failure.value.errno == errno.EIO
    assert new_files(data_dir) == []
    assert list(spool_dir.iterdir()) == []


def test_failed_directory_fsync_removes_copies(
    store: MaildirStore, data_dir: Path, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the new/ directories cannot be made durable, the links made are removed."""

    def broken(paths: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(durable, "fsync_directory", broken)
    failure = result_of(store.deliver(spooled(spool_dir), MAILBOXES))
    assert isinstance(failure, Failure) and failure.check(OSError)
    assert new_files(data_dir) == []
    assert list(spool_dir.iterdir()) == []


def test_unexpected_error_removes_copies(
    store: MaildirStore, data_dir: Path, spool_dir: Path
) -> None:
    """An error that is not an OSError (here a mailbox address that cannot name a directory)
    also removes the copies already made: nothing half-delivered stays visible."""
    failure = result_of(store.deliver(spooled(spool_dir), ["bob@ours.example", "a/b@ours.example"]))
    assert isinstance(failure, Failure) and failure.check(ValueError)
    assert new_files(data_dir) == []
    assert list(spool_dir.iterdir()) == []


def queued_record(size: int = len(MESSAGE)) -> QueueRecord:
    return QueueRecord.for_transaction(
        id="Q1",
        sender="alice@ours.example",
        recipients=[OutboundRecipient("bob@elsewhere.example")],
        created=1.0,
        size=size,
    )


def test_local_copies_and_the_queued_one_in_one_step(
    store: MaildirStore, data_dir: Path, spool_dir: Path
) -> None:
    """A message for a local mailbox and for another domain is one file: linked into new/
    and into the queue beside its record, and the store's observer hears of it."""
    heard: list[QueueRecord] = []
    store.queued_observer = heard.append
    record = queued_record()
    result_of(store.deliver(spooled(spool_dir), ["alice@ours.example"], record))
    [local] = new_files(data_dir)
    queued = store.queue.message_path("Q1")
    assert queued.stat().st_ino == local.stat().st_ino
    assert store.queue.read_blocking("Q1") == record
    assert heard == [record]
    assert sorted(path.name for path in store.queue.directory.iterdir()) == ["Q1.json", "Q1.msg"]


def test_failed_flush_takes_the_queued_copy_back(
    store: MaildirStore, data_dir: Path, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the directories cannot be made durable, neither the local copy nor the queued one
    stays, and nobody is told of the queued message."""
    heard: list[QueueRecord] = []
    store.queued_observer = heard.append

    def broken(paths: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(durable, "fsync_directory", broken)
    failure = result_of(store.deliver(spooled(spool_dir), ["alice@ours.example"], queued_record()))
    assert isinstance(failure, Failure) and failure.check(OSError)
    assert new_files(data_dir) == []
    assert list(store.queue.directory.iterdir()) == []
    assert heard == []


def test_names_are_unique_per_delivery(
    store: MaildirStore, data_dir: Path, spool_dir: Path
) -> None:
    """Each delivery gets a fresh name, even within the same microsecond."""
    names = [result_of(store.deliver(spooled(spool_dir), ["bob@ours.example"])) for _ in range(20)]
    assert len(set(names)) == 20
    assert len(new_files(data_dir)) == 20


# --- UniqueNames and maildir_path -------------------------------------------------------------


def test_unique_name_format() -> None:
    """Names are <seconds>.M<micros>P<pid>Q<counter>.<host>,S=<size>, the counter from 1."""
    names = UniqueNames(HOSTNAME)
    match = NAME.fullmatch(names.new(1234))
    assert match is not None
    assert int(match[3]) == os.getpid()
    assert (match[4], match[5], match[6]) == ("1", HOSTNAME, "1234")
    assert int(match[2]) < 1_000_000


def test_unique_name_escapes_reserved_characters() -> None:
    """ "/" and ":" in the host name are written as \\057 and \\072 (Maildir specification)."""
    name = UniqueNames("odd/host:name").new(1)
    assert name.endswith(".odd\\057host\\072name,S=1")
    assert "/" not in name and ":" not in name


def test_unique_names_across_many_calls() -> None:
    """Many names in a row are all different."""
    names = UniqueNames(HOSTNAME)
    made = [names.new(10) for _ in range(10_000)]
    assert len(set(made)) == len(made)


def test_unique_names_across_threads() -> None:
    """Names made at the same time by several threads are all different."""
    names = UniqueNames(HOSTNAME)
    made: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(made))

    def work(out: list[str]) -> None:
        start.wait()
        out.extend(names.new(10) for _ in range(2000))

    threads = [threading.Thread(target=work, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [name for out in made for name in out]
    assert len(everything) == 16_000
    assert len(set(everything)) == len(everything)


def test_maildir_path(tmp_path: Path) -> None:
    """A normalised address maps to <data>/mail/<domain>/<local part>, parts as given."""
    assert maildir_path(tmp_path, "bob@ours.example") == tmp_path / "mail" / "ours.example" / "bob"
    assert maildir_path(tmp_path, "a b@xn--bcher-kva.example") == (
        tmp_path / "mail" / "xn--bcher-kva.example" / "a b"
    )


@pytest.mark.parametrize(
    "address",
    [
        "a/b@ours.example",
        "bob@ours/example",
        ".@ours.example",
        "..@ours.example",
        "bob",
        "@x",
        "x@",
    ],
)
def test_maildir_path_refusals(tmp_path: Path, address: str) -> None:
    """Addresses that cannot name a directory below mail/ are refused with ValueError."""
    with pytest.raises(ValueError):
        maildir_path(tmp_path, address)


# --- The in-memory twin -----------------------------------------------------------------------


def test_twin_provides_the_interface() -> None:
    """MemoryMailStore provides IMailStore."""
    assert verifyObject(IMailStore, MemoryMailStore())


def test_twin_stores_the_spooled_bytes(spool_dir: Path) -> None:
    """The twin keeps the spooled bytes per mailbox, returns a name with the size, and
    removes the spool file, as the Maildir store does."""
    twin = MemoryMailStore()
    name = result_of(twin.deliver(spooled(spool_dir, threshold=1), MAILBOXES[:2]))
    assert twin.mailboxes == {address: [MESSAGE] for address in MAILBOXES[:2]}
    assert twin.names == [name]
    assert isinstance(name, str) and name.endswith(f",S={len(MESSAGE)}")
    assert list(spool_dir.iterdir()) == []


@pytest.mark.parametrize("error", [StorageFull("full"), OSError(errno.EIO, "I/O"), KeyError("x")])
def test_twin_fails_the_next_delivery(spool_dir: Path, error: Exception) -> None:
    """fail_next makes exactly the next delivery fail with the error, storing nothing and
    still removing the spool file; the one after succeeds."""
    twin = MemoryMailStore()
    twin.fail_next(error)
    failure = result_of(twin.deliver(spooled(spool_dir, threshold=1), ["bob@ours.example"]))
    assert isinstance(failure, Failure) and failure.value is error
    assert twin.mailboxes == {}
    assert list(spool_dir.iterdir()) == []
    assert isinstance(result_of(twin.deliver(spooled(spool_dir), ["bob@ours.example"])), str)


def test_twin_holds_a_delivery(spool_dir: Path) -> None:
    """hold_next keeps the next delivery's Deferred unfired, and its spool, until release()."""
    twin = MemoryMailStore()
    twin.hold_next()
    deferred = twin.deliver(spooled(spool_dir, threshold=1), ["bob@ours.example"])
    fired: list[object] = []
    deferred.addBoth(fired.append)
    assert fired == [] and twin.holding
    assert len(list(spool_dir.iterdir())) == 1
    twin.release()
    assert not twin.holding
    assert fired == twin.names
    assert twin.mailboxes == {"bob@ours.example": [MESSAGE]}
    assert list(spool_dir.iterdir()) == []


def test_twin_fails_a_held_delivery(spool_dir: Path) -> None:
    """release(error) fails the held delivery instead, storing nothing."""
    twin = MemoryMailStore()
    twin.hold_next()
    deferred = twin.deliver(spooled(spool_dir), ["bob@ours.example"])
    twin.release(StorageFull("full"))
    failure = result_of(deferred)
    assert isinstance(failure, Failure) and failure.check(StorageFull)
    assert twin.mailboxes == {}
    assert list(spool_dir.iterdir()) == []
