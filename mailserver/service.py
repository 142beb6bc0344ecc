"""The composition root: builds every running part of the server from the configuration.

This is the only module that names the concrete storage and protocol classes; the twistd
plugin calls :func:`make_service` and nothing else.
"""

from __future__ import annotations

import ctypes
import gc
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from mailserver import durable
from mailserver.authlimit import LoginThrottle
from mailserver.committer import GroupCommitter
from mailserver.config import EMBEDDED_DEFAULT, Config, OutboundConfig
from mailserver.limits import ConnectionLimiter
from mailserver.listeners import ListenerService, endpoint_fields, split_tls_listener
from mailserver.logins import LoginChecker
from mailserver.maildir import MaildirStore
from mailserver.queue.store import QueueStore
from mailserver.smtp.client_session import ClientSettings
from mailserver.smtp.server import SMTPServerFactory, Timeouts
from mailserver.smtp.session import SessionPolicy
from mailserver.spool import clean_stale
from mailserver.tls import ServerTLS, TLSFiles
from mailserver.userdb import AccountError, SQLiteUserDatabase, database_path

if TYPE_CHECKING:
    from mailserver.authcheck import InboundChecks
    from mailserver.dkim import SigningTable
    from mailserver.dnsquery import CachingResolver

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


class TLSContexts(Service):
    """Every TLS context of the process: the [tls] certificate's and those ssl: listeners
    name. Each reloads its files when they change; SIGHUP reloads them all at once."""

    def __init__(self, reactor: Any, default: TLSFiles | None) -> None:
        self._reactor = reactor
        self._contexts: dict[TLSFiles, ServerTLS] = {}
        self.on_hang_up: list[Callable[[], None]] = []  # also told of SIGHUP (worker processes)
        self.default = self.for_files(default) if default is not None else None
        self._previous_handler: Any = None

    def for_files(self, files: TLSFiles) -> ServerTLS:
        if files not in self._contexts:
            self._contexts[files] = ServerTLS(files)
        return self._contexts[files]

    @property
    def loaded(self) -> tuple[TLSFiles, ...]:
        return tuple(self._contexts)

    def reload(self) -> None:
        for context in self._contexts.values():
            context.reload()

    def startService(self) -> None:
        super().startService()
        if self._contexts or self.on_hang_up:
            self._previous_handler = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> None:
        super().stopService()
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None

    def _hangup(self, signum: int, frame: object) -> None:
        self._reactor.callFromThread(self.reload)
        for callback in self.on_hang_up:
            self._reactor.callFromThread(callback)


def _listen(
    parent: MultiService,
    reactor: Any,
    descriptions: tuple[str, ...],
    factory: Factory,
    tls: TLSContexts,
) -> list[ListenerService]:
    """A listener for each description; ssl: ones (implicit TLS, RFC 8314) are tcp: ports
    whose connections go through TLS first."""
    listeners = []
    for description in descriptions:
        listening: Factory[Any] = factory
        if description.startswith("ssl:"):
            description, files = split_tls_listener(description)
            context = tls.for_files(files) if files is not None else tls.default
            assert context is not None, "the configuration checks that there is a certificate"
            listening = TLSMemoryBIOFactory(context, False, factory)
        listener = ListenerService(serverFromString(reactor, description), listening)
        listener.setServiceParent(parent)
        listeners.append(listener)
    return listeners


def _smtp_policy(config: Config, submission: bool) -> SessionPolicy:
    """The SMTP session policy of the MX listeners, or of the submission listeners."""
    smtp = config.smtp
    return SessionPolicy(
        hostname=config.server.hostname,
        max_message_size=smtp.max_message_size,
        max_recipients=smtp.max_recipients,
        max_received_headers=smtp.max_received_headers,
        max_errors=smtp.max_errors,
        postmaster=config.accounts.postmaster or f"postmaster@{config.server.hostname}",
        auth=submission or smtp.accept_submission,
        auth_required=submission,
        check_from_header=config.submission.check_from_header,
    )


def _smtp_receiving(
    config: Config, reactor: Any, top: MultiService
) -> tuple[SMTPServerFactory, ThreadPool, TLSContexts]:
    """The MX listeners' SMTP factory and what it needs (thread pool, user database,
    committer, store, TLS, logins), as the twistd process and every SMTP worker process
    build it; and the thread pool and TLS contexts, for the other services."""
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
    tls = TLSContexts(reactor, config.tls.files)
    tls.setServiceParent(top)
    smtp = config.smtp
    factory = SMTPServerFactory(
        policy=_smtp_policy(config, submission=False),
        timeouts=Timeouts(command=smtp.command_timeout, data=smtp.data_timeout),
        users=users,
        store=MaildirStore(
            data_dir,
            config.server.hostname,
            committer,
            QueueStore(data_dir, reactor, pool, committer),
        ),
        spool_directory=spool_directory(data_dir),
        limiter=ConnectionLimiter(smtp.max_connections, smtp.max_connections_per_client),
        reactor=reactor,
        tls=tls.default,
        logins=LoginChecker(users, LoginThrottle(reactor), reactor),
        plaintext_auth=config.submission.plaintext_auth,
        checks=_inbound_checks(config, reactor),
        signing=_signing_table(config),
    )
    return factory, pool, tls


def _resolver(config: Config, reactor: Any) -> CachingResolver:
    from mailserver.dnsquery import CachingResolver, make_resolver

    servers = [(server.host, server.port) for server in config.dns.resolver]
    return CachingResolver(make_resolver(reactor, servers or None, config.dns.timeout), reactor)


def _inbound_checks(config: Config, reactor: Any) -> InboundChecks | None:
    """SPF, DKIM and DMARC for mail from other servers, unless turned off."""
    checks = config.checks
    if not checks.enabled:
        return None
    from mailserver.authcheck import CheckPolicy, InboundChecks
    from mailserver.dmarc import organizational_domain
    from mailserver.dnsquery import DNSQuery

    organizational_domain(config.server.hostname)  # loads the suffix list now, not on mail
    policy = CheckPolicy(
        authserv_id=checks.authserv_id or config.server.hostname,
        dmarc_reject=checks.dmarc_reject,
        spf_reject=checks.spf_reject,
        defer_on_dns_failure=checks.dns_failure == "defer",
    )
    return InboundChecks(DNSQuery(_resolver(config, reactor)), policy, reactor)


def _signing_table(config: Config) -> SigningTable | None:
    """The DKIM keys of our domains (checked loadable with the configuration)."""
    if not config.dkim.keys:
        return None
    from mailserver.dkim import SigningIdentity, SigningTable
    from mailserver.dkimkeys import load_key

    return SigningTable(
        [
            SigningIdentity(key.domain, key.selector, load_key(key.private_key))
            for key in config.dkim.keys
        ]
    )


def make_worker_service(config: Config, reactor: Any) -> tuple[MultiService, SMTPServerFactory]:
    """What an SMTP worker process runs: SMTP receiving on listeners it inherits."""
    top = MultiService()
    factory, _, _ = _smtp_receiving(config, reactor, top)
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
    smtp_factory, pool, tls = _smtp_receiving(config, reactor, top)
    smtp_listeners = _listen(top, reactor, config.smtp.listen, smtp_factory, tls)
    if config.smtp.processes > 1 and smtp_listeners:
        from mailserver.workers import WorkerProcesses

        config_path = None if config.source == EMBEDDED_DEFAULT else config.source
        workers = WorkerProcesses(reactor, config.smtp.processes - 1, config_path, smtp_listeners)
        workers.setServiceParent(top)
        tls.on_hang_up.append(workers.hang_up)
    if config.submission.listen:
        submission = SMTPServerFactory(
            policy=_smtp_policy(config, submission=True),
            timeouts=smtp_factory.timeouts,
            users=smtp_factory.users,
            store=smtp_factory.store,
            spool_directory=smtp_factory.spool_directory,
            limiter=smtp_factory.limiter,
            reactor=reactor,
            tls=tls.default,
            logins=smtp_factory.logins,
            plaintext_auth=config.submission.plaintext_auth,
            checks=smtp_factory.checks,
            signing=smtp_factory.signing,
        )
        _listen(top, reactor, config.submission.listen, submission, tls)
    if config.pop3.listen:
        assert smtp_factory.logins is not None
        _pop3_retrieval(config, reactor, top, smtp_factory.logins, pool, tls)
    _outbound_delivery(config, reactor, top, smtp_factory, pool)
    return top


def _outbound_delivery(
    config: Config, reactor: Any, top: MultiService, smtp: SMTPServerFactory, pool: ThreadPool
) -> None:
    """The queue runner, its SMTP courier and the notifier, in the twistd process only: worker
    processes queue into the same directory, where the runner finds their messages."""
    from mailserver.address import parse_path
    from mailserver.courier import SMTPCourier
    from mailserver.queue.notify import Notifier
    from mailserver.queue.runner import QueueRunner
    from mailserver.queue.schedule import RetryPolicy
    from mailserver.routing import Route, Router
    from mailserver.smtp.client_session import ClientTimeouts

    outbound = config.outbound
    hostname = config.server.hostname
    router = Router(
        _resolver(config, reactor),
        mx_port=outbound.mx_port,
        routes={domain: Route(to.host, to.port) for domain, to in outbound.routes.items()},
        smarthost=(
            Route(outbound.smarthost.host, outbound.smarthost.port) if outbound.smarthost else None
        ),
        our_names=[hostname],
        our_addresses=_our_addresses(config.smtp.listen, outbound.mx_port),
    )
    auth = None
    if outbound.smarthost_login and outbound.smarthost_password_file is not None:
        password = outbound.smarthost_password_file.read_text(encoding="utf-8").splitlines()
        auth = (outbound.smarthost_login, password[0] if password else "")
    settings = ClientSettings(
        hostname=hostname,
        tls=outbound.tls,
        trust_file=outbound.trust_file,
        auth=auth,
        timeouts=ClientTimeouts(connect=outbound.connect_timeout),
    )
    policy = RetryPolicy(
        initial=outbound.retry_initial,
        maximum=outbound.retry_max,
        delay_notice=outbound.delay_notice,
        lifetime=outbound.lifetime,
    )
    store = smtp.store
    assert isinstance(store, MaildirStore)
    notifier = Notifier(
        hostname,
        store,
        store.queue,
        smtp.users,
        smtp.spool_directory,
        reactor,
        reactor,
        pool,
        policy,
        postmaster=parse_path(f"<{smtp.policy.postmaster}>", allow_null=False),
    )
    runner = QueueRunner(
        store.queue,
        SMTPCourier(
            router,
            settings,
            reactor,
            pool,
            domain_settings=_domain_settings(outbound, settings),
        ),
        notifier,
        reactor,
        policy,
        max_connections=outbound.max_connections,
        per_domain=outbound.max_connections_per_domain,
    )
    store.queued_observer = runner.add
    runner.setServiceParent(top)


def _domain_settings(
    outbound: OutboundConfig, settings: ClientSettings
) -> dict[str, ClientSettings]:
    """Where a domain differs from the rest: a route's host never gets the smarthost's
    password; a domain in ``tls_required`` gets verified TLS whatever the default."""
    special: dict[str, ClientSettings] = {}
    for domain in outbound.routes:
        special[domain] = replace(settings, auth=None)
    for domain in outbound.tls_required:
        special[domain] = replace(special.get(domain, settings), tls="required")
    return special


def _our_addresses(listen: tuple[str, ...], mx_port: int) -> list[str]:
    """The addresses our MX listeners answer on at ``mx_port``: an MX host there is us."""
    addresses = []
    for description in listen:
        parts = [part.replace("\\:", ":") for part in endpoint_fields(description)]
        kind, port, *options = [*parts, ""]
        if kind in ("tcp", "tcp6", "ssl") and port == str(mx_port):
            named = dict(option.split("=", 1) for option in options if "=" in option)
            addresses.append(named.get("interface", "::" if kind == "tcp6" else "0.0.0.0"))
    return addresses


def _pop3_retrieval(
    config: Config,
    reactor: Any,
    top: MultiService,
    logins: LoginChecker,
    pool: ThreadPool,
    tls: TLSContexts,
) -> None:
    from mailserver.mailbox import MaildirMailboxStore
    from mailserver.pop3.server import POP3ServerFactory
    from mailserver.pop3.session import SessionPolicy as POP3SessionPolicy

    pop3 = config.pop3
    factory = POP3ServerFactory(
        policy=POP3SessionPolicy(hostname=config.server.hostname),
        idle_timeout=pop3.idle_timeout,
        plaintext_auth=pop3.plaintext_auth,
        logins=logins,
        store=MaildirMailboxStore(config.server.data_dir, reactor, pool),
        limiter=ConnectionLimiter(pop3.max_connections, pop3.max_connections_per_client),
        tls=tls.default,
        reactor=reactor,
    )
    _listen(top, reactor, pop3.listen, factory, tls)
