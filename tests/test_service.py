"""Tests for mailserver.service (the composition root) and the twistd plugin that calls it.

The services are built and inspected, never started (except the two small services whose
start-up is the thing under test), so no port is bound and no thread runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool
from zope.interface.verify import verifyObject

from mailserver import service
from mailserver.config import EMBEDDED_DEFAULT, Config, load_config, parse_config
from mailserver.limits import Admission
from mailserver.listeners import ListenerService
from mailserver.maildir import MaildirStore
from mailserver.queue.runner import QueueRunner
from mailserver.smtp.server import SMTPServerFactory
from mailserver.spool import STALE_AFTER
from mailserver.tls import ServerTLS, TLSFiles, write_self_signed
from mailserver.userdb import SQLiteUserDatabase, database_path
from mailserver.workers import WorkerProcesses

CONFIG_DATA = Path(__file__).parent / "data" / "config"

SMTP_ENDPOINTS = ["tcp:2525:interface=127.0.0.1", "tcp6:2526:interface=\\:\\:1"]
CONFIG = f"""
[server]
hostname = "mx.ours.example"
data_dir = "data"
worker_threads = 3

[smtp]
listen = {json.dumps(SMTP_ENDPOINTS)}
max_message_size = "2 MiB"
max_recipients = 7
max_received_headers = 9
command_timeout = "2m"
data_timeout = "4m"
max_connections = 5
max_connections_per_client = 2
max_errors = 4

[submission]
listen = []

[pop3]
listen = []
"""


@dataclass(frozen=True)
class RecordedEndpoint:
    """What the patched serverFromString returns: the reactor and description it was given."""

    reactor: Any
    description: str


@pytest.fixture
def recorded_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        service, "serverFromString", lambda reactor, text: RecordedEndpoint(reactor, text)
    )


def make_config(tmp_path: Path, text: str = CONFIG) -> Config:
    return parse_config(text, "test.toml", tmp_path)


def listeners(top: MultiService) -> list[ListenerService]:
    return [child for child in top if isinstance(child, ListenerService)]


@pytest.mark.usefixtures("recorded_endpoints")
def test_one_listener_per_smtp_endpoint(tmp_path: Path) -> None:
    """Every configured SMTP endpoint gets a listener built on the given reactor, serving one
    shared SMTP factory; nothing is bound or started yet."""
    reactor = MemoryReactorClock()
    top = make_service_for(tmp_path, reactor)
    built = listeners(top)
    assert [listener.endpoint.description for listener in built] == SMTP_ENDPOINTS
    assert all(listener.endpoint.reactor is reactor for listener in built)
    assert all(listener.port is None for listener in built)
    [factory] = {id(listener.factory): listener.factory for listener in built}.values()
    assert isinstance(factory, SMTPServerFactory)
    assert not top.running
    assert reactor.tcpServers == []
    pools = [child.pool for child in top if isinstance(child, service.ThreadPoolService)]
    assert [(pool.started, pool.max) for pool in pools] == [(False, 3)]


@pytest.mark.usefixtures("recorded_endpoints")
def test_smtp_factory_follows_the_configuration(tmp_path: Path) -> None:
    """The SMTP factory's policy, timeouts, spool directory, limits and reactor come from the
    configuration; postmaster defaults to postmaster@ the hostname."""
    reactor = MemoryReactorClock()
    [listener, _] = listeners(make_service_for(tmp_path, reactor))
    factory = listener.factory
    assert isinstance(factory, SMTPServerFactory)
    policy = factory.policy
    assert (policy.hostname, policy.max_message_size, policy.max_recipients) == (
        "mx.ours.example",
        2 * 2**20,
        7,
    )
    assert (policy.max_received_headers, policy.max_errors) == (9, 4)
    assert policy.postmaster == "postmaster@mx.ours.example"
    assert (factory.timeouts.command, factory.timeouts.data) == (120.0, 240.0)
    assert factory.spool_directory == tmp_path / "data" / "spool"
    assert factory.reactor is reactor
    admissions = [factory.limiter.admit("192.0.2.1") for _ in range(3)]
    assert admissions[-1] is Admission.TOO_MANY_FROM_CLIENT
    for client in ("192.0.2.2", "192.0.2.3", "192.0.2.4"):
        factory.limiter.admit(client)
    assert factory.limiter.admit("192.0.2.5") is Admission.TOO_MANY_OVERALL


@pytest.mark.usefixtures("recorded_endpoints")
def test_configured_postmaster(tmp_path: Path) -> None:
    """An explicit accounts.postmaster is what "<Postmaster>" resolves to."""
    config = make_config(tmp_path, CONFIG + '\n[accounts]\npostmaster = "root@ours.example"\n')
    [listener, _] = listeners(service.make_service(config, MemoryReactorClock()))
    assert listener.factory.policy.postmaster == "root@ours.example"


@pytest.mark.usefixtures("recorded_endpoints")
def test_no_smtp_endpoints(tmp_path: Path) -> None:
    """An empty listen list builds no SMTP listener."""
    config = make_config(
        tmp_path, CONFIG.replace(f"listen = {json.dumps(SMTP_ENDPOINTS)}", "listen = []")
    )
    top = service.make_service(config, MemoryReactorClock())
    assert [
        listener for listener in listeners(top) if isinstance(listener.factory, SMTPServerFactory)
    ] == []


def make_service_for(tmp_path: Path, reactor: Any) -> MultiService:
    return service.make_service(make_config(tmp_path), reactor)


def test_data_directory_service_prepares_the_layout(tmp_path: Path) -> None:
    """Starting the data-directory service creates mail/ and spool/, opens (creates) the user
    database, and removes spool files older than a day, by the reactor's clock, keeping newer
    ones."""
    data_dir = tmp_path / "data"
    spool = service.spool_directory(data_dir)
    spool.mkdir(parents=True)
    reactor = MemoryReactorClock()
    reactor.advance(2_000_000_000)
    stale, fresh = spool / "stale", spool / "fresh"
    for path, age in ((stale, STALE_AFTER + 1), (fresh, 60)):
        path.write_bytes(b"x")
        os.utime(path, (reactor.seconds() - age, reactor.seconds() - age))
    users = SQLiteUserDatabase(database_path(data_dir), reactor, ThreadPool())
    directory_service = service.DataDirectoryService(data_dir, users, reactor)
    directory_service.startService()
    assert (data_dir / "mail").is_dir()
    assert database_path(data_dir).is_file()
    assert sorted(spool.iterdir()) == [fresh]
    assert directory_service.running


def test_unusable_data_directory_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data directory that cannot be created (here a file is in the way) stops the server
    with a one-line reason naming the directory, not a traceback."""
    data_dir = tmp_path / "file"
    data_dir.write_text("not a directory")
    reactor = MemoryReactorClock()
    users = SQLiteUserDatabase(database_path(data_dir), reactor, ThreadPool())
    with pytest.raises(SystemExit) as exit_info:
        service.DataDirectoryService(data_dir, users, reactor).startService()
    assert exit_info.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"mailserver: cannot use data directory {data_dir}: ")


def test_thread_pool_service_starts_and_stops_the_pool() -> None:
    """The thread-pool service starts its pool with the service and stops it with it."""
    pool = ThreadPool(minthreads=0, maxthreads=1)
    pool_service = service.ThreadPoolService(pool)
    pool_service.startService()
    try:
        assert pool.started
    finally:
        pool_service.stopService()
    assert not pool.started
    assert pool.joined


# --- The twistd plugin ------------------------------------------------------------------------


def plugin_module() -> Any:
    from twisted.plugins import mailserver_plugin

    return mailserver_plugin


def test_plugin_provides_a_service_maker() -> None:
    """The plugin offers "mailserver" to twistd as an IServiceMaker."""
    maker = plugin_module().serviceMaker
    assert verifyObject(IServiceMaker, maker)
    assert maker.tapname == "mailserver"
    assert IPlugin.providedBy(maker)


@pytest.mark.parametrize("name", ["bad_size", "several_errors", "syntax_error"])
def test_plugin_reports_config_errors_and_exits_1(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken configuration file prints every problem, one per line, on stderr and exits
    with status 1."""
    monkeypatch.chdir(CONFIG_DATA)
    options = plugin_module().Options()
    with pytest.raises(SystemExit) as exited:
        options.parseOptions(["--config", f"{name}.toml"])
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert captured.err == (CONFIG_DATA / f"{name}.expected").read_text()
    assert captured.out == ""


def test_plugin_reports_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration file that cannot be read is reported and exits with status 1."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(SystemExit) as exited:
        plugin_module().Options().parseOptions(["-c", str(missing)])
    assert exited.value.code == 1
    assert capsys.readouterr().err.startswith(f"{missing}: cannot read the file")


def test_plugin_loads_the_configuration(tmp_path: Path) -> None:
    """A good file is loaded into the options; without --config the embedded default is."""
    path = tmp_path / "mailserver.toml"
    path.write_text(CONFIG)
    options = plugin_module().Options()
    options.parseOptions(["--config", str(path)])
    assert options["loaded"] == load_config(path)
    default = plugin_module().Options()
    default.parseOptions([])
    assert default["loaded"].source == EMBEDDED_DEFAULT


def test_plugin_makes_the_service_from_the_loaded_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """makeService hands the loaded configuration and the running reactor to make_service."""
    calls: list[tuple[Config, Any]] = []
    made = MultiService()

    def fake_make_service(config: Config, reactor: Any) -> MultiService:
        calls.append((config, reactor))
        return made

    monkeypatch.setattr(service, "make_service", fake_make_service)
    path = tmp_path / "mailserver.toml"
    path.write_text(CONFIG)
    options = plugin_module().Options()
    options.parseOptions(["--config", str(path)])
    assert plugin_module().serviceMaker.makeService(options) is made
    from twisted.internet import reactor

    assert calls == [(options["loaded"], reactor)]


def test_smtp_workers_only_when_more_than_one_process(tmp_path: Path) -> None:
    """smtp.processes = N adds a supervisor for N - 1 workers sharing the SMTP listeners; the
    default of one process adds none."""
    reactor = MemoryReactorClock()
    config = make_config(tmp_path)
    assert not [c for c in service.make_service(config, reactor) if isinstance(c, WorkerProcesses)]
    several = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, processes=3))
    [supervisor] = [
        c for c in service.make_service(several, reactor) if isinstance(c, WorkerProcesses)
    ]
    assert supervisor._count == 2


def test_free_memory_is_released_once_the_reactor_runs() -> None:
    """The memory-trim service asks the reactor to release start-up garbage when it runs."""
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()
    service.MemoryTrimService(reactor).startService()
    assert [hook for hook, _, _ in reactor.whenRunningHooks] == [service.release_free_memory]
    service.release_free_memory()  # and doing it is harmless


# --- Submission and TLS.


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    directory = tmp_path_factory.mktemp("tls")
    files = TLSFiles(directory / "mx.crt", directory / "mx.key")
    write_self_signed("mx.ours.example", files.certificate, files.private_key)
    return files


def tls_config(certificate: TLSFiles, extra: str = "") -> str:
    return (
        CONFIG.replace("[submission]\nlisten = []\n", "")
        + f'[tls]\ncertificate = "{certificate.certificate}"\n'
        + f'private_key = "{certificate.private_key}"\n'
        + extra
    )


@pytest.mark.usefixtures("recorded_endpoints")
def test_submission_listeners_share_the_mx_storage(tmp_path: Path, certificate: TLSFiles) -> None:
    """Submission listeners get a factory of their own whose policy requires AUTH, sharing
    the user database, store, connection limits and login checker with the MX listeners; an
    ssl: listener is a tcp: port wrapped in TLS with the [tls] certificate, and STARTTLS uses
    that certificate too."""
    extra = '[submission]\nlisten = ["tcp:5587", "ssl:4650:interface=127.0.0.1"]\n'
    top = service.make_service(
        make_config(tmp_path, tls_config(certificate, extra)), MemoryReactorClock()
    )
    mx, _, starttls, implicit = listeners(top)
    assert isinstance(mx.factory, SMTPServerFactory)
    assert isinstance(starttls.factory, SMTPServerFactory)
    assert not mx.factory.policy.auth
    assert starttls.factory.policy.auth and starttls.factory.policy.auth_required
    for shared in ("users", "store", "limiter", "logins", "tls"):
        assert getattr(starttls.factory, shared) is getattr(mx.factory, shared), shared
    assert isinstance(starttls.factory.tls, ServerTLS)
    assert starttls.factory.tls.files == certificate
    assert implicit.endpoint.description == "tcp:4650:interface=127.0.0.1"
    assert isinstance(implicit.factory, TLSMemoryBIOFactory)
    assert implicit.factory.wrappedFactory is starttls.factory


@pytest.mark.usefixtures("recorded_endpoints")
def test_mx_may_also_accept_submission(tmp_path: Path) -> None:
    """With smtp.accept_submission the MX listeners offer AUTH without requiring it."""
    text = CONFIG.replace("max_errors = 4", "max_errors = 4\naccept_submission = true")
    [mx, _] = listeners(service.make_service(make_config(tmp_path, text), MemoryReactorClock()))
    assert mx.factory.policy.auth and not mx.factory.policy.auth_required


@pytest.mark.usefixtures("recorded_endpoints")
def test_ssl_listener_with_its_own_certificate(tmp_path: Path, certificate: TLSFiles) -> None:
    """An ssl: listener naming its own files gets a TLS context for them."""
    listen = f"ssl:4650:privateKey={certificate.private_key}:certKey={certificate.certificate}"
    text = CONFIG.replace("[submission]\nlisten = []", f'[submission]\nlisten = ["{listen}"]')
    top = service.make_service(make_config(tmp_path, text), MemoryReactorClock())
    [_, _, implicit] = listeners(top)
    assert isinstance(implicit.factory, TLSMemoryBIOFactory)
    [contexts] = [child for child in top if isinstance(child, service.TLSContexts)]
    assert contexts.default is None
    assert contexts.loaded == (certificate,)


def test_sighup_reloads_every_tls_context(certificate: TLSFiles) -> None:
    """While running, the TLS contexts service answers SIGHUP by reloading every context in
    the reactor thread; stopping it puts the previous handler back."""
    calls: list[object] = []

    class Reactor:
        def callFromThread(self, function: Any) -> None:
            calls.append(function)

    contexts = service.TLSContexts(Reactor(), certificate)
    before = signal.getsignal(signal.SIGHUP)
    contexts.startService()
    try:
        handler = signal.getsignal(signal.SIGHUP)
        assert callable(handler)
        handler(signal.SIGHUP, None)
        assert calls == [contexts.reload]
    finally:
        contexts.stopService()
    assert signal.getsignal(signal.SIGHUP) == before


# --- Outbound delivery.


def test_outbound_queue_runner_is_wired_to_the_store(tmp_path: Path) -> None:
    """The twistd process runs one queue runner, told of every message the store queues."""
    top = make_service_for(tmp_path, MemoryReactorClock())
    [runner] = [child for child in top if isinstance(child, QueueRunner)]
    [listener, _] = listeners(top)
    assert isinstance(listener.factory, SMTPServerFactory)
    store = listener.factory.store
    assert isinstance(store, MaildirStore)
    assert store.queued_observer == runner.add


def test_worker_processes_run_no_queue_runner(tmp_path: Path) -> None:
    """Worker processes queue into the same directory but leave delivery to the twistd
    process, whose runner finds their messages there."""
    top, _ = service.make_worker_service(make_config(tmp_path), MemoryReactorClock())
    assert not any(isinstance(child, QueueRunner) for child in top)


def test_our_addresses_are_the_mx_listeners_on_the_mx_port() -> None:
    """Loop detection knows the addresses our SMTP listeners answer on at the MX port only."""
    listen = (
        "tcp:25",
        "tcp:25:interface=192.0.2.1",
        "tcp6:25:interface=\\:\\:1",
        "tcp:2525:interface=127.0.0.1",
        "unix:/run/smtp.sock",
    )
    assert service._our_addresses(listen, 25) == ["0.0.0.0", "192.0.2.1", "::1"]


def test_per_domain_client_settings(tmp_path: Path) -> None:
    """A route's host never gets the smarthost's password; a domain in tls_required gets
    verified TLS, whatever the default."""
    from mailserver.smtp.client_session import ClientSettings

    config = make_config(
        tmp_path,
        CONFIG
        + '[outbound]\ntls_required = ["bank.example", "routed.example"]\n'
        + 'routes = { "routed.example" = "192.0.2.7:25" }\n',
    )
    settings = ClientSettings(hostname="mx.ours.example", auth=("relay-user", "secret"))
    special = service._domain_settings(config.outbound, settings)
    assert special["routed.example"].auth is None
    assert special["routed.example"].tls == "required"
    assert special["bank.example"].auth == ("relay-user", "secret")
    assert special["bank.example"].tls == "required"
    assert "other.example" not in special
