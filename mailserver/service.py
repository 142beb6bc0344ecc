"""The composition root: builds every running part of the server from the configuration.

This is the only module that names the concrete storage and protocol classes; the twistd
plugin calls :func:`make_service` and nothing else.
"""

from __future__ import annotations

import ctypes
import gc
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mailserver import durable
from mailserver.committer import GroupCommitter
from mailserver.config import EMBEDDED_DEFAULT, Config
from mailserver.interfaces import IUserDatabase
from mailserver.limits import ConnectionLimiter
from mailserver.listeners import ListenerService
from mailserver.maildir import MaildirStore
from mailserver.smtp.server import SMTPServerFactory, Timeouts
from mailserver.smtp.session import SessionPolicy
from mailserver.spool import clean_stale
from mailserver.userdb import AccountError, SQLiteUserDatabase, database_path

log = Logger()


def spool_directory(data_dir: Path) -> Path:
    return data_dir / "spool"


class DataDirectoryService(Service):
    """Prepares the data directory and opens the user database at start-up, after twistd
    has dropped privileges, so that everything created belongs to the server's user."""

    def __init__(self, data_dir: Path, users: SQLiteUserDatabase, reactor: Any) -> None:
        self._data_dir = data_dir
        self._users = users
        self._reactor = reactor

    def startService(self) -> None:
        try:
            for path in (self._data_dir / "mail", spool_directory(self._data_dir)):
                durable.ensure_directory(path)
            self._users.open()
            removed = clean_stale(spool_directory(self._data_dir), self._reactor.seconds())
        except (OSError, AccountError) as error:
            # A one-line reason, not a traceback: usually a data_dir the user cannot write.
            print(
                f"mailserver: cannot use data directory {self._data_dir}: {error}", file=sys.stderr
            )
            raise SystemExit(1) from None
        if removed:
            log.info("removed {count} stale spool files", count=removed)
        super().startService()


class CommitterService(Service):
    """Runs the group committer's threads; on stop, every submitted delivery finishes."""

    def __init__(self, committer: GroupCommitter) -> None:
        self.committer = committer

    def startService(self) -> None:
        self.committer.start()
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        self.committer.stop()


class ThreadPoolService(Service):
    """Runs the worker threads for blocking work (fsync, SQLite, password hashing)."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        self.pool.start()
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


def _listen(
    parent: MultiService, reactor: Any, descriptions: tuple[str, ...], factory: Factory
) -> list[ListenerService]:
    listeners = []
    for description in descriptions:
        listener = ListenerService(serverFromString(reactor, description), factory)
        listener.setServiceParent(parent)
        listeners.append(listener)
    return listeners


def _smtp_receiving(
    config: Config, reactor: Any, top: MultiService
) -> tuple[SMTPServerFactory, ThreadPool]:
    """The SMTP factory and what it needs (thread pool, user database, committer, store),
    as the twistd process and every SMTP worker process build it; and the thread pool."""
    data_dir = config.server.data_dir
    pool = ThreadPool(minthreads=0, maxthreads=config.server.worker_threads, name="mailserver")
    ThreadPoolService(pool).setServiceParent(top)
    users = SQLiteUserDatabase(
        database_path(data_dir),
        reactor,
        pool,
        recipient_delimiter=config.accounts.recipient_delimiter,
    )
    DataDirectoryService(data_dir, users, reactor).setServiceParent(top)
    committer = GroupCommitter(reactor)
    CommitterService(committer).setServiceParent(top)
    smtp = config.smtp
    factory = SMTPServerFactory(
        policy=SessionPolicy(
            hostname=config.server.hostname,
            max_message_size=smtp.max_message_size,
            max_recipients=smtp.max_recipients,
            max_received_headers=smtp.max_received_headers,
            max_errors=smtp.max_errors,
            postmaster=config.accounts.postmaster or f"postmaster@{config.server.hostname}",
        ),
        timeouts=Timeouts(command=smtp.command_timeout, data=smtp.data_timeout),
        users=users,
        store=MaildirStore(data_dir, config.server.hostname, committer),
        spool_directory=spool_directory(data_dir),
        limiter=ConnectionLimiter(smtp.max_connections, smtp.max_connections_per_client),
        reactor=reactor,
    )
    return factory, pool


def make_worker_service(config: Config, reactor: Any) -> tuple[MultiService, SMTPServerFactory]:
    """What an SMTP worker process runs: SMTP receiving on listeners it inherits."""
    top = MultiService()
    factory, _ = _smtp_receiving(config, reactor, top)
    return top, factory


def release_free_memory() -> None:
    """Hand the memory freed during start-up (imports, configuration) back to the system.

    glibc keeps freed heap pages for reuse; once the server is up they would only inflate its
    resident size. Elsewhere (no ``malloc_trim``) this does nothing.
    """
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class MemoryTrimService(Service):
    """Runs :func:`release_free_memory` once the reactor is up."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(release_free_memory)


def make_service(config: Config, reactor: Any) -> MultiService:
    """Every service of the mail server, ready for ``twistd`` to start.

    The POP3 and worker-process modules are imported only when the configuration uses them,
    which keeps an SMTP-only server smaller in memory.
    """
    top = MultiService()
    MemoryTrimService(reactor).setServiceParent(top)
    smtp_factory, pool = _smtp_receiving(config, reactor, top)
    smtp_listeners = _listen(top, reactor, config.smtp.listen, smtp_factory)
    if config.smtp.processes > 1 and smtp_listeners:
        from mailserver.workers import WorkerProcesses

        config_path = None if config.source == EMBEDDED_DEFAULT else config.source
        WorkerProcesses(
            reactor, config.smtp.processes - 1, config_path, smtp_listeners
        ).setServiceParent(top)
    if config.pop3.listen:
        _pop3_retrieval(config, reactor, top, smtp_factory.users, pool)
    return top


def _pop3_retrieval(
    config: Config, reactor: Any, top: MultiService, users: IUserDatabase, pool: ThreadPool
) -> None:
    from mailserver.authlimit import LoginThrottle
    from mailserver.mailbox import MaildirMailboxStore
    from mailserver.pop3.server import POP3ServerFactory
    from mailserver.pop3.session import SessionPolicy as POP3SessionPolicy

    pop3 = config.pop3
    factory = POP3ServerFactory(
        policy=POP3SessionPolicy(hostname=config.server.hostname),
        idle_timeout=pop3.idle_timeout,
        plaintext_auth=pop3.plaintext_auth,
        users=users,
        store=MaildirMailboxStore(config.server.data_dir, reactor, pool),
        limiter=ConnectionLimiter(pop3.max_connections, pop3.max_connections_per_client),
        throttle=LoginThrottle(reactor),
        reactor=reactor,
    )
    _listen(top, reactor, pop3.listen, factory)
