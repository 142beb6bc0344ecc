"""The Maildir mail store: one standard Maildir per user, written durably.

Layout: ``<data_dir>/mail/<domain>/<local part>/{tmp,new,cur}``, readable by Dovecot, mutt,
notmuch and rsync. Delivery follows the Maildir protocol (write elsewhere, then link into
``new/``) with fsyncs added, done in batches by the group committer: the spooled file is
written and fsync'd, then hard-linked into each recipient's ``new/``, and each ``new/``
directory is fsync'd before the delivery is reported done. Several recipients of one message
share one file through hard links.

Unique names are ``<seconds>.M<microseconds>P<pid>Q<counter>.<host>,S=<size>``: the size in
the name lets a reader list a mailbox without a stat per message.

A message that also goes to other servers is queued in the same batch
(:class:`mailserver.queue.store.QueueStore`): the same flushed file is linked into the queue
beside its record, so one acknowledgement covers every local copy and the queued one.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver import durable
from mailserver.committer import Committer, Published
from mailserver.interfaces import IMailStore, StorageFull
from mailserver.queue.record import QueueRecord
from mailserver.queue.store import QueueStore
from mailserver.spool import Spool

MAILDIR_SUBDIRECTORIES = ("tmp", "new", "cur")


def maildir_path(data_dir: Path, address: str) -> Path:
    """Where the Maildir of the normalised address ``local@domain`` lives.

    Both parts are used as they appear in the normalised address (the domain in A-label
    form), so other tools find it (Dovecot's ``%d/%n``). A local part that cannot name a
    directory (containing ``/``, or ``.`` or ``..``) raises ValueError; the admin command
    refuses to create such users.
    """
    local_part, _, domain = address.rpartition("@")
    if not local_part or not domain or "/" in address or local_part in {".", ".."}:
        raise ValueError(f"not a normalised mailbox address: {address!r}")
    return data_dir / "mail" / domain / local_part


def create_maildir(path: Path) -> None:
    """Create a Maildir and its three folders durably (blocking)."""
    for sub in MAILDIR_SUBDIRECTORIES:
        durable.ensure_directory(path / sub)


def _host_for_names(hostname: str) -> str:
    # The Maildir specification reserves "/" and ":" in unique names.
    return hostname.replace("/", "\\057").replace(":", "\\072")


class UniqueNames:
    """Maildir unique names for this process (thread-safe: ``next`` on a count is atomic)."""

    def __init__(self, hostname: str) -> None:
        self._host = _host_for_names(hostname)
        self._counter = itertools.count(1)
        self._pid = os.getpid()

    def new(self, size: int) -> str:
        now = time.time()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        return f"{seconds}.M{micros}P{self._pid}Q{next(self._counter)}.{self._host},S={size}"


class _Delivery:
    """One message for a set of mailboxes, as a :class:`~mailserver.committer.Job`."""

    def __init__(
        self,
        store: MaildirStore,
        spool: Spool,
        mailboxes: tuple[str, ...],
        queued: QueueRecord | None,
    ) -> None:
        self._store = store
        self._spool = spool
        self._mailboxes = mailboxes
        self._queued = queued
        self._source: Path | None = None
        self._staged: tuple[Path, int] | None = None

    def write(self) -> list[int]:
        self._source, fd = self._spool.finish()
        if self._queued is None:
            return [fd]
        self._staged = self._store.queue.stage(self._queued)
        return [fd, self._staged[1]]

    def publish(self) -> Published[str]:
        assert self._source is not None
        name = self._store.names.new(self._spool.size)
        linked: list[Path] = []

        queued = self._queued

        def undo() -> None:
            for path in linked:
                durable.remove_quietly(path)
            if queued is not None:
                self._store.queue.withdraw(queued.id)

        directories = []
        try:
            for address in self._mailboxes:
                linked.append(self._store.link_into_new(self._source, address, name))
            directories = [path.parent for path in linked]
            if queued is not None and self._staged is not None:
                directories.append(self._store.queue.publish(self._source, queued, self._staged[0]))
        except BaseException:
            undo()  # whatever went wrong, no copy stays visible (IMailStore.deliver)
            raise
        return Published(result=name, directories=directories, undo=undo)

    def cleanup(self) -> None:
        self._spool.discard()
        if self._staged is not None:
            path, fd = self._staged
            os.close(fd)
            durable.remove_quietly(path)  # gone already once published
            self._staged = None


@implementer(IMailStore)
class MaildirStore:
    """Delivers into Maildirs under ``data_dir``; durability comes from the group committer."""

    def __init__(
        self, data_dir: Path, hostname: str, committer: Committer, queue: QueueStore | None = None
    ) -> None:
        self._data_dir = data_dir
        self._committer = committer
        self.names = UniqueNames(hostname)
        self.queue = queue if queue is not None else QueueStore(data_dir, committer=committer)
        self._known_maildirs: set[Path] = set()
        # Told of each message once it is queued durably (the queue runner, in the process
        # that runs one).
        self.queued_observer: Callable[[QueueRecord], None] | None = None

    def deliver(
        self, spool: Spool, mailboxes: Sequence[str], queued: QueueRecord | None = None
    ) -> Deferred[str]:
        delivery = _Delivery(self, spool, tuple(mailboxes), queued)
        done = self._committer.submit(delivery).addErrback(_storage_full)
        if queued is not None:
            done.addCallback(self._announce, queued)
        return done

    def _announce(self, name: str, queued: QueueRecord) -> str:
        if self.queued_observer is not None:
            self.queued_observer(queued)
        return name

    def link_into_new(self, source: Path, address: str, name: str) -> Path:
        """Link ``source`` into the ``new/`` of ``address``'s Maildir (blocking)."""
        maildir = self.ensure_maildir(address)
        target = maildir / "new" / name
        try:
            durable.link(source, target)
        except FileNotFoundError:
            # The Maildir was removed while we ran (or never was): make it afresh, once.
            self._known_maildirs.discard(maildir)
            durable.link(source, self.ensure_maildir(address) / "new" / name)
        return target

    def ensure_maildir(self, address: str) -> Path:
        """The Maildir of ``address``, created durably the first time (blocking)."""
        path = maildir_path(self._data_dir, address)
        if path not in self._known_maildirs:
            create_maildir(path)
            self._known_maildirs.add(path)
        return path


def _storage_full(failure: Failure) -> Failure:
    """ENOSPC or EDQUOT, wherever they happened, mean "try again later" (452 4.3.1)."""
    error = failure.value
    if error is not None and durable.is_full(error):
        return Failure(StorageFull(str(error)))
    return failure
