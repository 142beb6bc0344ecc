"""The reading side of the Maildir store: lock, listing, cache, reading, commit
(mailserver.mailbox)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailserver import durable, mailbox
from mailserver.interfaces import (
    IMailbox,
    IMailboxStore,
    MailboxInUse,
    MailboxUnavailable,
    MessageGone,
)
from mailserver.mailbox import (
    ListingCache,
    MaildirMailbox,
    MaildirMailboxStore,
    seen_name,
    uid_for,
)
from mailserver.maildir import UniqueNames, create_maildir, maildir_path
from tests.immediate import ImmediateReactor, ImmediateThreadPool

ADDRESS = "alice@example.org"
NAMES = UniqueNames("mx.example.org")


def make_store(data_dir: Path, cache: ListingCache | None = None) -> MaildirMailboxStore:
    return MaildirMailboxStore(
        data_dir,
        reactor=ImmediateReactor(),  # type: ignore[arg-type]
        threadpool=ImmediateThreadPool(),  # type: ignore[arg-type]
        cache=cache,
    )


def deliver(data_dir: Path, data: bytes, subdir: str = "new", name: str | None = None) -> Path:
    path = maildir_path(data_dir, ADDRESS)
    create_maildir(path)
    target = path / subdir / (name or NAMES.new(len(data)))
    target.write_bytes(data)
    return target


def age(data_dir: Path, seconds: float = 60) -> None:
    """Make new/ and cur/ look untouched for a while, so their listing may be cached."""
    past = time.time() - seconds
    for sub in ("new", "cur"):
        os.utime(maildir_path(data_dir, ADDRESS) / sub, (past, past))


def read_all(box: MaildirMailbox, index: int, size: int = 7) -> bytes:
    """Read a message in ``size``-octet pieces until a short read ends it."""
    chunks = []
    while True:
        results: list[object] = []
        box.read_message(index, sum(map(len, chunks)), size).addBoth(results.append)
        [chunk] = results
        assert isinstance(chunk, bytes), chunk
        chunks.append(chunk)
        if len(chunk) < size:
            return b"".join(chunks)


def test_interfaces(tmp_path: Path) -> None:
    """The store and an opened mailbox provide their interfaces."""
    from zope.interface.verify import verifyObject

    store = make_store(tmp_path)
    assert verifyObject(IMailboxStore, store)
    box = store.open_mailbox_blocking(ADDRESS)
    assert verifyObject(IMailbox, box)
    box.close()


def test_listing_takes_sizes_from_names_and_reads_files(tmp_path: Path) -> None:
    """The size comes from ",S=" without a stat (the file here is bigger on purpose); a name
    without it is stat'ed; reads give the file's bytes, a short read only at the end."""
    deliver(tmp_path, b"0123456789", name="1700000000.M1P1Q1.host,S=4")
    deliver(tmp_path, b"no size field\r\n", name="1700000001.M1P1Q2.host")
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    assert [m.size for m in box.messages] == [4, 15]
    assert read_all(box, 1) == b"no size field\r\n"
    assert read_all(box, 1, size=5) == b"no size field\r\n"  # 5 + 5 + 5, then b""
    assert read_all(box, 0, size=65536) == b"0123456789"
    box.close()


def test_order_is_by_delivery_time(tmp_path: Path) -> None:
    """Oldest first, comparing microseconds as numbers (M5 before M123456)."""
    deliver(tmp_path, b"c", name="1700000001.M5P1Q3.host,S=1")
    deliver(tmp_path, b"b", name="1700000000.M123456P1Q2.host,S=1")
    deliver(tmp_path, b"a", name="1700000000.M5P1Q1.host,S=1", subdir="cur")
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    assert [read_all(box, index) for index in range(3)] == [b"a", b"b", b"c"]
    box.close()


def test_uid_is_the_unique_name_without_flags(tmp_path: Path) -> None:
    """RFC 1939 §7: the UIDL is the unique name, the same in new/ and in cur/ with flags."""
    name = NAMES.new(3)
    deliver(tmp_path, b"abc", name=name)
    store = make_store(tmp_path)
    box = store.open_mailbox_blocking(ADDRESS)
    [before] = box.messages
    box.close()
    path = maildir_path(tmp_path, ADDRESS)
    os.rename(path / "new" / name, path / "cur" / f"{name}:2,FS")
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    [after] = box.messages
    box.close()
    assert before.uid == after.uid == name


def test_unusable_unique_names_get_a_stable_digest() -> None:
    """A name too long or with spaces becomes a 1-70 character id in 0x21-0x7E, stably."""
    long_name = "1700000000.M1P1Q1." + "h" * 80 + ",S=3"
    for unique in (long_name, "with space,S=3"):
        uid = uid_for(unique)
        assert 1 <= len(uid) <= 70
        assert all(0x21 <= ord(char) <= 0x7E for char in uid)
        assert uid == uid_for(unique)
    assert uid_for(long_name) != uid_for("with space,S=3")
    assert uid_for("1700000000.M1P1Q1.host,S=3") == "1700000000.M1P1Q1.host,S=3"


def test_seen_name_adds_the_flag_in_order() -> None:
    """The seen flag joins existing flags in ASCII order; a seen name stays."""
    assert seen_name("u,S=1") == "u,S=1:2,S"
    assert seen_name("u,S=1:2,RF") == "u,S=1:2,FRS"
    assert seen_name("u,S=1:2,ST") == "u,S=1:2,ST"


def test_lock_is_exclusive_until_closed(tmp_path: Path) -> None:
    """A second open of a locked mailbox fails with MailboxInUse; close releases it."""
    store = make_store(tmp_path)
    first = store.open_mailbox_blocking(ADDRESS)
    with pytest.raises(MailboxInUse):
        store.open_mailbox_blocking(ADDRESS)
    with pytest.raises(MailboxInUse):
        make_store(tmp_path).open_mailbox_blocking(ADDRESS)  # another store instance
    first.close()
    first.close()  # idempotent
    store.open_mailbox_blocking(ADDRESS).close()


def test_lock_holds_against_another_process(tmp_path: Path) -> None:
    """The lock is a flock on a file, so a second server process is kept out too."""
    path = maildir_path(tmp_path, ADDRESS)
    create_maildir(path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(path / mailbox.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        with pytest.raises(MailboxInUse):
            make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    finally:
        holder.communicate(timeout=10)
    make_store(tmp_path).open_mailbox_blocking(ADDRESS).close()  # released with the process


def test_missing_maildir_is_an_empty_mailbox(tmp_path: Path) -> None:
    """A user without a Maildir yet gets one, empty; a bad address is a permanent failure."""
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    assert list(box.messages) == []
    box.close()
    with pytest.raises(MailboxUnavailable):
        make_store(tmp_path).open_mailbox_blocking("../x@example.org")


def test_commit_deletes_and_marks_seen_only_the_snapshot(tmp_path: Path) -> None:
    """QUIT removes the deleted, moves the retrieved to cur/:2,S, leaves the rest in new/,
    and never touches mail that arrived during the session."""
    keep = deliver(tmp_path, b"keep")
    gone = deliver(tmp_path, b"gone")
    seen = deliver(tmp_path, b"seen")
    flagged = deliver(tmp_path, b"flag", subdir="cur", name=NAMES.new(4) + ":2,F")
    store = make_store(tmp_path)
    box = store.open_mailbox_blocking(ADDRESS)
    late = deliver(tmp_path, b"late")
    assert [m.uid for m in box.messages] == [
        keep.name,
        gone.name,
        seen.name,
        flagged.name.partition(":")[0],
    ]
    box.commit_blocking(deleted=[1], seen=[2, 3])
    box.close()
    maildir = maildir_path(tmp_path, ADDRESS)
    assert sorted(p.name for p in (maildir / "new").iterdir()) == sorted([keep.name, late.name])
    assert sorted(p.name for p in (maildir / "cur").iterdir()) == sorted(
        [f"{seen.name}:2,S", flagged.name.replace(":2,F", ":2,FS")]
    )
    assert (maildir / "cur" / f"{seen.name}:2,S").read_bytes() == b"seen"


def test_commit_of_messages_seen_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message listed as seen stays as it is (same file, no directory touched); one that
    another reader marked unread since then is marked seen again, its other flags kept."""
    still = deliver(tmp_path, b"still", subdir="cur", name=NAMES.new(5) + ":2,S")
    unread = deliver(tmp_path, b"unread", subdir="cur", name=NAMES.new(6) + ":2,FS")
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    inode = still.stat().st_ino
    os.rename(unread, unread.with_name(unread.name.replace(":2,FS", ":2,F")))
    synced: list[Path] = []
    monkeypatch.setattr(durable, "fsync_directories", synced.extend)
    box.commit_blocking(deleted=[], seen=[0, 1])
    box.close()
    cur = maildir_path(tmp_path, ADDRESS) / "cur"
    assert sorted(p.name for p in cur.iterdir()) == sorted([still.name, unread.name])
    assert still.stat().st_ino == inode
    assert synced == [cur]  # only for the one that moved


def test_close_without_commit_changes_nothing(tmp_path: Path) -> None:
    """A dropped session releases the lock and leaves every file where it was."""
    first = deliver(tmp_path, b"one")
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    box.close()
    assert first.exists()
    assert list((maildir_path(tmp_path, ADDRESS) / "cur").iterdir()) == []


def test_messages_moved_by_another_reader_are_still_found(tmp_path: Path) -> None:
    """A message another MUA moved to cur/ with flags is read (even mid-message) and deleted
    where it is now."""
    message = deliver(tmp_path, b"moved here")
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    first: list[object] = []
    box.read_message(0, 0, 5).addBoth(first.append)
    assert first == [b"moved"]
    moved = message.parent.parent / "cur" / f"{message.name}:2,RS"
    os.rename(message, moved)
    assert read_all(box, 0) == b"moved here"
    box.commit_blocking(deleted=[0], seen=[])
    box.close()
    assert not moved.exists()


def test_removed_message_is_gone(tmp_path: Path) -> None:
    """A message removed behind our back fails with MessageGone; deleting it is fine."""
    message = deliver(tmp_path, b"x")
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    message.unlink()
    failures: list[object] = []
    box.read_message(0, 0, 100).addErrback(lambda failure: failures.append(failure.value))
    assert isinstance(failures[0], MessageGone)
    box.commit_blocking(deleted=[0], seen=[])
    box.close()


def test_failed_removal_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If a deleted message cannot be removed, commit raises after doing the rest."""
    stuck = deliver(tmp_path, b"stuck")
    other = deliver(tmp_path, b"other")
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    real_remove = durable.remove_quietly
    monkeypatch.setattr(
        durable, "remove_quietly", lambda path: None if path == stuck else real_remove(path)
    )
    with pytest.raises(OSError):
        box.commit_blocking(deleted=[0, 1], seen=[])
    box.close()
    assert stuck.exists() and not other.exists()


def test_half_done_move_is_listed_once(tmp_path: Path) -> None:
    """A crash between link into cur/ and unlink from new/ leaves one message, not two."""
    name = NAMES.new(3)
    deliver(tmp_path, b"abc", name=name)
    deliver(tmp_path, b"abc", subdir="cur", name=f"{name}:2,S")
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    assert [m.uid for m in box.messages] == [name]
    box.close()


def test_deleting_a_half_moved_message_removes_both_names(tmp_path: Path) -> None:
    """DELE of a message left under two names by a crash during its move to cur/ removes
    both, so it does not come back in the next session."""
    name = NAMES.new(3)
    deliver(tmp_path, b"abc", name=name)
    deliver(tmp_path, b"abc", subdir="cur", name=f"{name}:2,S")
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    box.commit_blocking(deleted=[0], seen=[])
    box.close()
    again = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    assert list(again.messages) == []
    again.close()


def test_listing_cached_while_directories_unchanged(tmp_path: Path) -> None:
    """An untouched mailbox is listed from the cache; a delivery makes it list afresh."""
    deliver(tmp_path, b"one")
    age(tmp_path)
    cache = ListingCache()
    path = maildir_path(tmp_path, ADDRESS)
    first = cache.listing(path)
    assert cache.listing(path) is first
    deliver(tmp_path, b"two")
    second = cache.listing(path)
    assert len(second.infos) == 2


def test_recently_changed_directories_are_not_cached(tmp_path: Path) -> None:
    """A directory changed within the mtime granularity is listed afresh every time, so a
    second change in the same tick cannot hide behind an equal mtime."""
    deliver(tmp_path, b"one")
    cache = ListingCache(settle=30, fine_settle=30)
    path = maildir_path(tmp_path, ADDRESS)
    first = cache.listing(path)
    assert cache.listing(path) is not first


def test_whole_second_mtimes_need_the_longer_settle(tmp_path: Path) -> None:
    """An mtime one second old is trusted when it has nanoseconds (ext4), not when it is a
    whole second (a coarse filesystem, where a change a moment later keeps the same mtime)."""
    deliver(tmp_path, b"one")
    path = maildir_path(tmp_path, ADDRESS)
    cache = ListingCache(settle=10, fine_settle=0.5)
    fine = time.time_ns() - 1_000_000_000 + 123_456
    for sub in ("new", "cur"):
        os.utime(path / sub, ns=(fine, fine))
    first = cache.listing(path)
    assert cache.listing(path) is first
    coarse = (time.time_ns() // 1_000_000_000 - 1) * 1_000_000_000
    for sub in ("new", "cur"):
        os.utime(path / sub, ns=(coarse, coarse))
    second = cache.listing(path)
    assert cache.listing(path) is not second


def test_cache_is_bounded(tmp_path: Path) -> None:
    """Past max_messages over all mailboxes, the least recently used listing goes."""
    cache = ListingCache(max_messages=2)
    paths = []
    firsts = []
    for number in range(3):
        path = tmp_path / f"box{number}"
        create_maildir(path)
        (path / "new" / NAMES.new(1)).write_bytes(b"x")
        past = time.time() - 60
        for sub in ("new", "cur"):
            os.utime(path / sub, (past, past))
        paths.append(path)
        firsts.append(cache.listing(path))
    assert cache.listing(paths[2]) is firsts[2]  # still cached
    assert cache.listing(paths[0]) is not firsts[0]  # dropped, listed again


def test_uids_survive_a_new_store(tmp_path: Path) -> None:
    """The same files give the same UIDs and order to a fresh store (a restart)."""
    for data in (b"a", b"b", b"c"):
        deliver(tmp_path, data)
    first = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    uids = [m.uid for m in first.messages]
    first.close()
    second = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    assert [m.uid for m in second.messages] == uids
    second.close()


def test_dotfiles_and_lock_file_are_not_messages(tmp_path: Path) -> None:
    """Hidden files in new/ and cur/, tmp/ and the lock file are never listed."""
    deliver(tmp_path, b"real")
    maildir = maildir_path(tmp_path, ADDRESS)
    (maildir / "new" / ".hidden").write_bytes(b"x")
    (maildir / "tmp" / NAMES.new(1)).write_bytes(b"x")
    box = make_store(tmp_path).open_mailbox_blocking(ADDRESS)
    assert len(box.messages) == 1
    assert (maildir / mailbox.LOCK_FILE).exists()
    box.close()
