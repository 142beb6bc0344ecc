"""Tests for mailserver.workers (SMTP worker processes) and mailserver.listeners."""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

import pytest
from twisted.internet import reactor as real_reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import (
    CannotListenError,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mailserver import workers
from mailserver.listeners import ListenerService
from mailserver.workers import WorkerProcesses, WorkerProtocol, worker_command


def json_line(**fields: Any) -> bytes:
    return workers.RECORD_SEPARATOR + json.dumps(fields).encode() + b"\n"


def test_worker_events_are_published_with_the_worker_number() -> None:
    """JSON log events from a worker, split anywhere across reads, are published whole,
    tagged with the worker's number and shown as coming from that worker."""
    published: list[dict[str, object]] = []
    protocol = WorkerProtocol(3, published.append, lambda protocol, reason: None)
    data = json_line(log_namespace="mailserver.mail", log_format="received", id="A") + json_line(
        log_namespace="mailserver.mail", log_format="delivered", id="A"
    )
    for index in range(0, len(data), 7):
        protocol.outReceived(data[index : index + 7])
    assert [event["id"] for event in published] == ["A", "A"]
    assert all(event["worker"] == 3 for event in published)
    assert published[0]["log_system"] == "mailserver.mail worker 3"


def test_worker_noise_is_logged_not_lost() -> None:
    """A line that is not a JSON event, and anything on the worker's stderr, reach the log."""
    published: list[dict[str, object]] = []
    protocol = WorkerProtocol(1, published.append, lambda protocol, reason: None)
    from twisted.logger import capturedLogs

    with capturedLogs() as captured:
        protocol.outReceived(b"not json\n")
        protocol.errReceived(b"Traceback (most recent call last):\n  boom\n")
    assert published == []
    texts = [event["log_format"] for event in captured]
    assert texts.count("worker {number}: {line}") == 3


def test_worker_command_line() -> None:
    """The worker gets the absolute configuration path and each shared descriptor's family."""
    command = worker_command("conf/x.toml", [(3, socket.AF_INET), (4, socket.AF_INET6)])
    assert command[0] == sys.executable
    assert command[command.index("--config") + 1].endswith("/conf/x.toml")
    assert command[command.index("--config") + 1].startswith("/")
    assert [command[i + 1] for i, word in enumerate(command) if word == "--listen"] == [
        "3:AF_INET",
        "4:AF_INET6",
    ]
    assert "--config" not in worker_command(None, [])


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.exited = False

    def signalProcess(self, name: str) -> None:
        if self.exited:
            raise ProcessExitedAlready()
        self.signals.append(name)


class ProcessReactor(Clock):
    """A clock that records spawnProcess calls."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[WorkerProtocol, list[str], dict[int, object], FakeProcess]] = []

    def spawnProcess(self, protocol: WorkerProtocol, executable: str, args: list[str],
                     env: dict[str, str], childFDs: dict[int, object]) -> FakeProcess:  # fmt: skip
        process = FakeProcess(1000 + len(self.spawned))
        self.spawned.append((protocol, args, childFDs, process))
        return process


class SharedListener:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def shared_socket(self) -> tuple[int, socket.AddressFamily]:
        return self.fd, socket.AF_INET


def test_workers_start_with_the_listening_sockets() -> None:
    """Starting spawns count workers, each inheriting every listening socket from fd 3 on."""
    reactor = ProcessReactor()
    service = WorkerProcesses(reactor, 2, None, [SharedListener(17), SharedListener(18)])  # type: ignore[list-item]
    service.startService()
    assert len(reactor.spawned) == 2
    for _, args, child_fds, _ in reactor.spawned:
        assert child_fds[3] == 17 and child_fds[4] == 18
        assert "3:AF_INET" in args and "4:AF_INET" in args


def test_a_worker_that_dies_is_restarted_but_not_after_stop() -> None:
    """A worker ending while the service runs is started again after a delay; once the service
    stops, workers get SIGTERM, then SIGKILL after the grace period, and none restarts."""
    reactor = ProcessReactor()
    service = WorkerProcesses(reactor, 1, None, [SharedListener(9)])  # type: ignore[list-item]
    service.startService()
    protocol, _, _, process = reactor.spawned[0]
    process.exited = True
    protocol.processEnded(Failure(ProcessTerminated(signal=9)))
    reactor.advance(workers.RESTART_DELAY)
    assert len(reactor.spawned) == 2
    protocol, _, _, process = reactor.spawned[1]
    stopped = service.stopService()
    assert process.signals == ["TERM"]
    reactor.advance(workers.STOP_GRACE)
    assert process.signals == ["TERM", "KILL"]
    results: list[object] = []
    stopped.addBoth(results.append)
    assert results == []
    process.exited = True
    protocol.processEnded(Failure(ProcessDone(0)))
    assert len(results) == 1
    reactor.advance(workers.RESTART_DELAY * 10)
    assert len(reactor.spawned) == 2


def test_listener_binds_at_privileged_start_and_shares_its_socket() -> None:
    """The listener binds in privilegedStartService (before twistd drops root) and offers its
    descriptor and family; stopping closes it."""
    listener = ListenerService(
        TCP4ServerEndpoint(real_reactor, 0, interface="127.0.0.1"), Factory.forProtocol(Protocol)
    )
    listener.privilegedStartService()
    try:
        fd, family = listener.shared_socket()
        assert family == socket.AF_INET
        probe = socket.socket(fileno=socket.dup(fd))
        assert probe.getsockname()[0] == "127.0.0.1"
        probe.close()
    finally:
        listener.startService()
        listener.stopService()
    assert listener.port is None


def test_listener_bind_failure_stops_the_start() -> None:
    """A port that cannot be bound raises at once instead of being logged later."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    listener = ListenerService(
        TCP4ServerEndpoint(real_reactor, port, interface="127.0.0.1"),
        Factory.forProtocol(Protocol),
    )
    try:
        with pytest.raises(CannotListenError):
            listener.privilegedStartService()
    finally:
        taken.close()
