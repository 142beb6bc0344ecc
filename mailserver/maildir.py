"""The Maildir mail store: one standard Maildir per user, written durably.

Layout: ``<data_dir>/mail/<domain>/<local part>/{tmp,new,cur}``, readable by Dovecot, mutt,
notmuch and rsync. Delivery follows the Maildir protocol (write elsewhere, then link into
``new/``) with fsyncs added: the spooled file is fsync'd, hard-linked into each recipient's
``new/`` and each ``new/`` directory fsync'd before the delivery is reported done. Several
recipients of one message share one file through hard links.

Unique names are ``<seconds>.M<microseconds>P<pid>Q<counter>.<host>,S=<size>``: the size in
the name lets a reader list a mailbox without a stat per message.
"""

from __future__ import annotations

import errno
import itertools
import os
import time
from collections.abc import Sequence
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailserver import durable
from mailserver.interfaces import IMailStore, StorageFull
from mailserver.spool import Spool

_FULL_ERRORS = {errno.ENOSPC, errno.EDQUOT}
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


@implementer(IMailStore)
class MaildirStore:
    """Delivers into Maildirs under ``data_dir`` using a thread pool for the blocking work."""

    def __init__(
        self,
        data_dir: Path,
        hostname: str,
        reactor: IReactorThreads,
        threadpool: ThreadPool,
    ) -> None:
        self._data_dir = data_dir
        self._reactor = reactor
        self._threadpool = threadpool
        self._names = UniqueNames(hostname)
        self._known_maildirs: set[Path] = set()

    def deliver(self, spool: Spool, mailboxes: Sequence[str]) -> Deferred[str]:
        return deferToThreadPool(
            self._reactor, self._threadpool, self._deliver_blocking, spool, tuple(mailboxes)
        )

    def _deliver_blocking(self, spool: Spool, mailboxes: tuple[str, ...]) -> str:
        name = self._names.new(spool.size)
        linked: list[Path] = []
        try:
            source = spool.commit()
            for address in mailboxes:
                maildir = self._ensure_maildir(address)
                target = maildir / "new" / name
                durable.link(source, target)
                linked.append(target)
            durable.fsync_directories(path.parent for path in linked)
        except BaseException as error:
            # Whatever went wrong, no copy stays visible (IMailStore.deliver's promise).
            for path in linked:
                durable.remove_quietly(path)
            if isinstance(error, OSError) and error.errno in _FULL_ERRORS:
                raise StorageFull(str(error)) from error
            raise
        finally:
            spool.discard()
        return name

    def _ensure_maildir(self, address: str) -> Path:
        path = maildir_path(self._data_dir, address)
        if path not in self._known_maildirs:
            create_maildir(path)
            self._known_maildirs.add(path)
        return path
