"""SMTP worker processes: more cores for receiving mail.

One Python process handles one connection event at a time, and on a busy MX most of its time
goes to system calls for each small reply. With ``smtp.processes = N`` the twistd process
starts N-1 workers that accept on the same listening SMTP sockets (inherited descriptors, so
the kernel hands each new connection to one of the processes) and deliver into the same
Maildirs and user database, both of which are safe for several processes.

The twistd process supervises: it starts the workers once it has dropped privileges (so they
run as the same user), relays their log events into its own log, restarts a worker that dies,
and stops them when it stops. A worker also stops when the twistd process disappears (its
parent process changes). POP3 stays in the twistd process, so a mailbox's session
lock and the failed-login delays are never split between processes. Connection limits are
counted per process (see the configuration reference).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from mailserver.listeners import ListenerService

log = Logger()

RESTART_DELAY = 1.0  # seconds before a worker that died is started again
STOP_GRACE = 20.0  # seconds a worker gets to finish its deliveries after SIGTERM
PARENT_CHECK = 1.0  # seconds between checks that the twistd process is still there
RECORD_SEPARATOR = b"\x1e"  # what jsonFileLogObserver puts before each event


def worker_command(config_path: str | None, shared: Sequence[tuple[int, int]]) -> list[str]:
    """The command line of one worker; ``shared`` pairs a child descriptor with its family."""
    command = [sys.executable, "-c", "from mailserver.workers import main; main()"]
    if config_path is not None:
        command += ["--config", os.path.abspath(config_path)]
    for fd, family in shared:
        command += ["--listen", f"{fd}:{socket.AddressFamily(family).name}"]
    return command


class WorkerProtocol(ProcessProtocol):
    """One worker's pipes: its JSON log events are published here, tagged with its number."""

    def __init__(
        self,
        number: int,
        publish: Callable[[dict[str, object]], None],
        ended: Callable[[WorkerProtocol, Failure], None],
    ) -> None:
        self.number = number
        self._publish = publish
        self._ended = ended
        self._buffer = b""
        self.finished: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            line = line.lstrip(RECORD_SEPARATOR)
            if not line:
                continue
            try:
                event = eventFromJSON(line.decode("utf-8", "replace"))
            except ValueError:
                log.warn("worker {number}: {line}", number=self.number, line=line)
                continue
            event["worker"] = self.number
            namespace = event.get("log_namespace", "-")
            event["log_system"] = f"{namespace} worker {self.number}"
            self._publish(event)

    def errReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            log.error("worker {number}: {line}", number=self.number, line=line)

    def processEnded(self, reason: Failure) -> None:
        self._ended(self, reason)
        self.finished.callback(None)


class WorkerProcesses(Service):
    """Starts, watches and stops the SMTP workers (see the module docstring)."""

    def __init__(
        self,
        reactor: object,
        count: int,
        config_path: str | None,
        listeners: Sequence[ListenerService],
        publish: Callable[[dict[str, object]], None] = globalLogPublisher,
    ) -> None:
        self._reactor = reactor
        self._count = count
        self._config_path = config_path
        self._listeners = listeners
        self._publish = publish
        self.workers: dict[int, tuple[WorkerProtocol, IProcessTransport]] = {}

    def startService(self) -> None:
        super().startService()
        for number in range(1, self._count + 1):
            self._spawn(number)

    def stopService(self) -> Deferred[object]:
        super().stopService()
        waiting = []
        for protocol, process in list(self.workers.values()):
            waiting.append(protocol.finished)
            _signal(process, "TERM")
            self._reactor.callLater(STOP_GRACE, _signal, process, "KILL")  # type: ignore[attr-defined]
        return DeferredList(waiting)  # type: ignore[return-value]

    def hang_up(self) -> None:
        """Pass SIGHUP on, so each worker reloads its TLS certificate too."""
        for _, process in self.workers.values():
            _signal(process, "HUP")

    def _spawn(self, number: int) -> None:
        child_fds: dict[int, object] = {0: "w", 1: "r", 2: "r"}
        shared = []
        for index, listener in enumerate(self._listeners):
            fd, family = listener.shared_socket()
            child_fds[3 + index] = fd
            shared.append((3 + index, family))
        protocol = WorkerProtocol(number, self._publish, self._worker_ended)
        process = self._reactor.spawnProcess(  # type: ignore[attr-defined]
            protocol,
            sys.executable,
            worker_command(self._config_path, shared),
            env=dict(os.environ),
            childFDs=child_fds,
        )
        self.workers[number] = (protocol, process)
        log.info("started SMTP worker {number} (pid {pid})", number=number, pid=process.pid)

    def _worker_ended(self, protocol: WorkerProtocol, reason: Failure) -> None:
        self.workers.pop(protocol.number, None)
        if not self.running:
            return
        log.error(
            "SMTP worker {number} ended unexpectedly ({reason}); restarting it",
            number=protocol.number,
            reason=reason.getErrorMessage() if not reason.check(ProcessDone) else "exit 0",
        )
        self._reactor.callLater(RESTART_DELAY, self._restart, protocol.number)  # type: ignore[attr-defined]

    def _restart(self, number: int) -> None:
        if self.running and number not in self.workers:
            self._spawn(number)


def _signal(process: IProcessTransport, name: str) -> None:
    with contextlib.suppress(ProcessExitedAlready):
        process.signalProcess(name)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a worker process (started by :class:`WorkerProcesses`)."""
    parser = argparse.ArgumentParser(prog="mailserver-worker")
    parser.add_argument("--config")
    parser.add_argument("--listen", action="append", default=[], metavar="FD:FAMILY")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, jsonFileLogObserver

    from mailserver.config import ConfigError, load_config
    from mailserver.service import make_worker_service

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        sys.exit(1)
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sys.stdout)], redirectStandardIO=False)
    top, factory = make_worker_service(config, reactor)
    top.startService()
    for spec in args.listen:
        fd, _, family = spec.partition(":")
        reactor.adoptStreamPort(int(fd), socket.AddressFamily[family], factory)  # type: ignore[attr-defined]
        os.close(int(fd))  # adoptStreamPort keeps a duplicate
    log.info("accepting SMTP connections (pid {pid})", pid=os.getpid())
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    parent = os.getppid()
    watch = LoopingCall(_stop_when_orphaned, reactor, parent)
    watch.clock = reactor
    watch.start(PARENT_CHECK, now=False)
    reactor.run()


def _stop_when_orphaned(reactor: Any, parent: int) -> None:
    """A worker whose twistd process is gone (killed, say) has another parent: stop."""
    if os.getppid() != parent:
        reactor.stop()
