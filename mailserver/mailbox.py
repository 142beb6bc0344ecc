"""The reading side of the Maildir store, for POP3: locking, listing, reading, committing.

**Lock.** Opening a mailbox takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<maildir>/.pop3.lock``
for the whole session. flock locks belong to an open file, so the lock holds against a second
session in this process and against any other process (a second server on the same data
directory); the kernel drops it when the process dies, so a crash leaves no stale lock. The
lock file itself is never removed (removing it would let two sessions lock two different
files).

**Listing.** ``new/`` and ``cur/`` are read with ``os.scandir`` and no ``stat`` per message:
the size is the ``,S=<size>`` field of the unique name (our delivery writes it; a file without
it is stat'ed). Files are stored with CRLF line endings exactly as received, so that size is
what RETR sends (RFC 1939 §11). Messages are numbered oldest first by the time in their name.
A listing is cached per mailbox against the ``st_mtime_ns`` and inode of ``new/`` and
``cur/``: any file created, renamed or removed there changes the directory's mtime. Because
timestamps have a coarse granularity (two changes within one tick can leave the same mtime),
a listing is cached only when both directories were last modified a little before the scan
began: :data:`FINE_MTIME_SETTLE` for nanosecond timestamps, :data:`MTIME_SETTLE` for
whole-second ones.

**UIDL.** The unique-id of a message is its Maildir unique name: the file name up to the
``:2,`` info part, so it is the same in ``new/`` and ``cur/`` whatever the flags, across
sessions and restarts, and never reused (Maildir unique names are unique by construction).
A name that is not a valid RFC 1939 §7 unique-id (1 to 70 characters in 0x21-0x7E: a very
long host name, say) is replaced by a digest of it, which is just as stable.

**End of session.** Only QUIT changes the mailbox (RFC 1939 §6): the deleted messages are
unlinked, and the messages retrieved with RETR and kept are given the Maildir "seen" flag by
moving them to ``cur/<unique>:2,S`` (other flags kept), the way every Maildir reader (Dovecot,
mutt, notmuch) understands. Moving at QUIT rather than at RETR means a session that drops
changes nothing at all, and that the moves are batched: a session that downloads 2,000
messages pays for one fsync per directory instead of two fsyncs per message. The move is a
hard link into ``cur/`` then an unlink from ``new/`` (the primitives :mod:`mailserver.durable`
offers without an fsync each); a crash between the two leaves both names, which the listing
folds into one message (the ``cur/`` one). Messages that were never retrieved stay in
``new/``. Only messages of the session's snapshot are touched: mail that arrived during the
session waits in ``new/`` for the next one.

**Threads.** Locking, listing and committing block and run on the thread pool. Reading a
message is done in the reactor thread in chunks of at most 64 KiB, like Twisted's
``FileSender``: a read from a local file costs far less than a thread hop per chunk. Each
chunk is an ``open``/``pread``/``close``, so nothing stays open when a client goes away, and
a message of up to one chunk (most mail) costs one open and one read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailserver import durable
from mailserver.interfaces import (
    IMailbox,
    IMailboxStore,
    MailboxInUse,
    MailboxUnavailable,
    MessageGone,
    MessageInfo,
)
from mailserver.maildir import create_maildir, maildir_path

log = Logger()

LOCK_FILE = ".pop3.lock"
# Seconds a directory must have been unchanged for its listing to be cached: for mtimes in
# whole seconds, and for nanosecond mtimes (well above the kernel's clock tick of 1-10 ms).
MTIME_SETTLE = 2.0
FINE_MTIME_SETTLE = 0.05
MAX_CACHED_MESSAGES = 1_000_000  # entries over all cached listings, before the oldest go
SEEN_FLAG = "S"
_INFO_SEPARATOR = ":2,"
_LEADING_DIGITS = re.compile(r"\d+")
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


# --- Names ----------------------------------------------------------------------------------


def unique_name(filename: str) -> str:
    """The Maildir unique name of a file in ``new/`` or ``cur/``: the part before ``:``."""
    return filename.partition(":")[0]


def uid_for(unique: str) -> str:
    """The RFC 1939 §7 unique-id for a Maildir unique name."""
    # 1 to 70 characters in 0x21-0x7E (printable ASCII without the space).
    if 0 < len(unique) <= 70 and unique.isascii() and unique.isprintable() and " " not in unique:
        return unique
    # Not usable as is: a digest is as stable, 1-70 characters of 0x21-0x7E, and "~" marks
    # it, as no unique name of ours starts with one.
    return "~" + hashlib.sha256(unique.encode("utf-8", "surrogateescape")).hexdigest()


def size_from_name(unique: str) -> int | None:
    """The ``S=<size>`` field of a unique name (``<base>,S=<size>[,...]``), if there is one."""
    start = unique.find(",S=")
    if start < 0:
        return None
    start += 3
    end = unique.find(",", start)
    digits = unique[start:] if end < 0 else unique[start:end]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def seen_name(filename: str) -> str:
    """The ``cur/`` name of a message with the seen flag added to its existing flags."""
    unique, separator, info = filename.partition(":")
    flags = info[2:] if separator and info.startswith("2,") else ""
    if SEEN_FLAG in flags:
        return filename
    # Maildir flags are kept in ASCII order.
    return f"{unique}{_INFO_SEPARATOR}{''.join(sorted(flags + SEEN_FLAG))}"


def _delivery_time(unique: str) -> tuple[int, int]:
    """Seconds and microseconds of a ``<seconds>.M<microseconds>...`` name, for ordering;
    other names give their leading digits, or 0."""
    seconds, _, rest = unique.partition(".")
    if seconds.isascii() and seconds.isdigit():
        if rest.startswith("M"):
            match = _LEADING_DIGITS.match(rest, 1)
            if match:
                return int(seconds), int(match[0])
        return int(seconds), 0
    match = _LEADING_DIGITS.match(unique)
    return (int(match[0]) if match else 0), 0


# --- Listing ---------------------------------------------------------------------------------


class StoredMessage(NamedTuple):
    """Where one message file was when the mailbox was listed."""

    subdir: str  # "new" or "cur"
    filename: str

    @property
    def unique(self) -> str:
        return unique_name(self.filename)


def scan_maildir(path: Path) -> Listing:
    """Every message in ``cur/`` and ``new/``, oldest first (blocking). This is the cost of a
    first login, so it does the least per file: no stat (the size is in the name), plain
    tuples, one sort."""
    rows: list[tuple[int, int, str, str, str, int]] = []
    in_cur: set[str] = set()
    for subdir in ("cur", "new"):
        with os.scandir(path / subdir) as entries:
            for entry in entries:
                name = entry.name
                if name[:1] == ".":
                    continue
                unique = name.partition(":")[0]
                if unique in in_cur:
                    continue  # a crash mid-move left it in new/ too: the cur/ one counts
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    size = size_from_name(unique)
                    if size is None:
                        size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # moved or removed by another reader while we looked
                if subdir == "cur":
                    in_cur.add(unique)
                seconds, micros = _delivery_time(unique)
                rows.append((seconds, micros, unique, subdir, name, size))
    rows.sort()
    return Listing(
        tuple(StoredMessage(row[3], row[4]) for row in rows),
        tuple(MessageInfo(uid_for(row[2]), row[5]) for row in rows),
    )


_DirectoryKey = tuple[int, int, int, int]


@dataclass(frozen=True)
class Listing:
    """A Maildir's messages, oldest first, and what POP3 lists for each (shared, immutable)."""

    stored: tuple[StoredMessage, ...]
    infos: tuple[MessageInfo, ...]


@dataclass(frozen=True)
class _CachedListing:
    key: _DirectoryKey
    listing: Listing


class ListingCache:
    """Listings of mailboxes, valid while ``new/`` and ``cur/`` keep their mtimes (thread-safe).

    Bounded by the number of messages held over all mailboxes; the least recently used
    listings are dropped first.
    """

    def __init__(
        self,
        max_messages: int = MAX_CACHED_MESSAGES,
        settle: float = MTIME_SETTLE,
        fine_settle: float = FINE_MTIME_SETTLE,
    ) -> None:
        self._max_messages = max_messages
        self._settle = settle
        self._fine_settle = fine_settle
        self._listings: OrderedDict[Path, _CachedListing] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def listing(self, path: Path) -> Listing:
        """The messages of the Maildir at ``path``, from the cache when it is still valid."""
        started = time.time()
        new = os.stat(path / "new")
        cur = os.stat(path / "cur")
        key = (new.st_mtime_ns, new.st_ino, cur.st_mtime_ns, cur.st_ino)
        with self._lock:
            cached = self._listings.get(path)
            if cached is not None and cached.key == key:
                self._listings.move_to_end(path)
                return cached.listing
        listing = scan_maildir(path)
        # Trust the key only if no later change could leave the same mtime: the directories
        # must have been quiet for longer than the timestamp granularity before we looked.
        # Nanosecond mtimes (ext4, xfs, btrfs, tmpfs) tick with the kernel clock, a few ms;
        # mtimes in whole seconds (ext3, some network filesystems) need whole seconds.
        fine = new.st_mtime_ns % 1_000_000_000 and cur.st_mtime_ns % 1_000_000_000
        settle = self._fine_settle if fine else self._settle
        if max(new.st_mtime, cur.st_mtime) < started - settle:
            self._store(path, _CachedListing(key, listing))
        return listing

    def _store(self, path: Path, listing: _CachedListing) -> None:
        size = len(listing.listing.stored)
        if size > self._max_messages:
            return
        with self._lock:
            old = self._listings.pop(path, None)
            if old is not None:
                self._held -= len(old.listing.stored)
            self._listings[path] = listing
            self._held += size
            while self._held > self._max_messages:
                _, dropped = self._listings.popitem(last=False)
                self._held -= len(dropped.listing.stored)


# --- The store and its mailboxes ----------------------------------------------------------------


@implementer(IMailboxStore)
class MaildirMailboxStore:
    """Opens the Maildirs under ``data_dir`` (as :class:`mailserver.maildir.MaildirStore`
    delivers them) for POP3 sessions."""

    def __init__(
        self,
        data_dir: Path,
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
        cache: ListingCache | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._reactor = reactor
        self._threadpool = threadpool
        self._cache = cache if cache is not None else ListingCache()

    def open_mailbox(self, address: str) -> Deferred[IMailbox]:
        return deferToThreadPool(
            self._reactor, self._threadpool, self.open_mailbox_blocking, address
        )

    def open_mailbox_blocking(self, address: str) -> MaildirMailbox:
        """:meth:`open_mailbox`, in the calling thread."""
        try:
            path = maildir_path(self._data_dir, address)
        except ValueError as error:
            raise MailboxUnavailable(str(error)) from error
        create_maildir(path)  # a user whose Maildir is missing has an empty mailbox
        lock_fd = _lock(path / LOCK_FILE)
        try:
            listing = self._cache.listing(path)
        except BaseException:
            os.close(lock_fd)
            raise
        return MaildirMailbox(path, lock_fd, listing, self._reactor, self._threadpool)


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise MailboxInUse(str(path.parent)) from error
        raise
    return fd


@implementer(IMailbox)
class MaildirMailbox:
    """One locked Maildir and the snapshot its session works on."""

    def __init__(
        self,
        path: Path,
        lock_fd: int,
        listing: Listing,
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
    ) -> None:
        self.path = path
        self._directory = str(path)
        self._paths: dict[int, str] = {}  # where messages moved by other readers are now
        self._lock_fd: int | None = lock_fd
        self._stored = listing.stored
        self.messages: Sequence[MessageInfo] = listing.infos
        self._reactor = reactor
        self._threadpool = threadpool

    def read_message(self, index: int, offset: int, size: int) -> Deferred[bytes]:
        try:
            return defer.succeed(self._read(self._path_of(index), offset, size))
        except FileNotFoundError:
            # Moved by another Maildir reader? Finding it may scan all of cur/: not here, in
            # the reactor thread, but on the thread pool.
            return deferToThreadPool(
                self._reactor, self._threadpool, self._read_moved, index, offset, size
            )
        except OSError:
            return defer.fail()

    def _path_of(self, index: int) -> str:
        path = self._paths.get(index)
        if path is None:
            message = self._stored[index]
            path = f"{self._directory}/{message.subdir}/{message.filename}"
        return path

    def _read_moved(self, index: int, offset: int, size: int) -> bytes:
        moved = self._locate(self._stored[index])
        if moved is None:
            raise MessageGone(self._stored[index].unique)
        self._paths[index] = str(moved)
        try:
            return self._read(str(moved), offset, size)
        except FileNotFoundError:
            raise MessageGone(self._stored[index].unique) from None

    @staticmethod
    def _read(path: str, offset: int, size: int) -> bytes:
        # The hot path of RETR: plain os calls on a string path, no stat, no pathlib.
        fd = os.open(path, _READ_FLAGS)
        try:
            # POSIX: a read from a regular file returns fewer octets than asked only at the
            # end of the file, which is what IMailbox.read_message promises.
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def commit(self, deleted: Sequence[int], seen: Sequence[int]) -> Deferred[None]:
        return deferToThreadPool(
            self._reactor, self._threadpool, self.commit_blocking, deleted, seen
        )

    def commit_blocking(self, deleted: Sequence[int], seen: Sequence[int]) -> None:
        """:meth:`commit`, in the calling thread."""
        touched: set[Path] = set()
        failed: list[str] = []
        for index in deleted:
            message = self._stored[index]
            path = self._locate(message)
            if path is None:
                continue  # already gone: what DELE asked for
            # A crash during an earlier move to cur/ can have left the new/ name too: both go,
            # or the message would come back.
            for name in dict.fromkeys((path, self.path / "new" / message.unique)):
                durable.remove_quietly(name)
                if os.path.lexists(name):
                    failed.append(message.unique)
                touched.add(name.parent)
        for index in seen:
            with contextlib.suppress(OSError):
                moved = self._mark_seen(self._stored[index])
                touched.update(moved)
        durable.fsync_directories(sorted(touched))
        if failed:
            raise OSError(errno.EIO, f"could not remove {len(failed)} messages: {failed[:5]}")

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the last descriptor releases the flock
            self._lock_fd = None

    def _locate(self, message: StoredMessage) -> Path | None:
        """Where a message of the snapshot is now: where it was listed, or in ``cur/`` under
        other flags if another Maildir reader moved it meanwhile; None if it is gone."""
        listed = self.path / message.subdir / message.filename
        if os.path.lexists(listed):
            return listed
        cur = self.path / "cur"
        for candidate in (message.unique, *_possible_flags(message.unique)):
            if os.path.lexists(cur / candidate):
                return cur / candidate
        with os.scandir(cur) as entries:
            for entry in entries:
                if unique_name(entry.name) == message.unique:
                    return cur / entry.name
        return None

    def _mark_seen(self, message: StoredMessage) -> Iterable[Path]:
        """Give a message the seen flag in ``cur/``; the directories it changed."""
        if (
            message.subdir == "cur"
            and seen_name(message.filename) == message.filename
            and os.path.lexists(f"{self._directory}/cur/{message.filename}")
        ):
            # Listed as seen already and still there: nothing to do. This is every message
            # of a mailbox read before, so it costs one lstat and no Path objects.
            return ()
        source = self._locate(message)
        if source is None:
            return ()
        target = self.path / "cur" / seen_name(source.name)
        if target == source:
            return ()
        try:
            durable.link(source, target)
        except FileExistsError:
            if not os.path.samefile(source, target):
                return ()
        durable.remove_quietly(source)
        return (target.parent, source.parent)


def _possible_flags(unique: str) -> Iterable[str]:
    """The usual ``cur/`` names of a message, tried before a scan of the whole directory."""
    return (f"{unique}:2,", f"{unique}:2,S")
