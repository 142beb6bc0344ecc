"""A scripted receiving SMTP server for scenario tests: the other domain's MX.

:class:`SMTPSink` listens on 127.0.0.1 and serves each connection in a thread of its own. It
speaks enough ESMTP for a sending MTA (EHLO with PIPELINING, SIZE, 8BITMIME, DSN and
ENHANCEDSTATUSCODES; HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), reading commands one line at a
time from a buffered stream, so commands a client pipelines are answered in order. It
removes the dot-stuffing of DATA (RFC 5321 §4.5.2) and records each accepted message with its
envelope and its exact octets (:class:`Received`).

Faults are scripted through attributes of :class:`Script`, which may change while it runs:
``greylist_rcpt`` and ``greylist_data`` answer the next N RCPT commands, or the next N ends of
data, with ``451 4.7.1``; ``reject`` maps recipients to a permanent reply; ``greeting``
replaces the 220 (with a 554, say); ``drop_connections`` closes each connection at once
without a word; ``greeting_delay`` keeps it silent for a while first (a slow server, or
with a long delay one that hangs). For a server nobody answers at all, do not start one: a
free port that nothing listens on refuses connections.

Everything is bounded: the line length, the message size, the commands per connection,
the silence a client is allowed (a socket timeout), and :meth:`SMTPSink.stop` waits for the
connection threads no longer than a few seconds.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field

MAX_LINE = 4096  # octets in a command line (and in a line of message content)
MAX_MESSAGE = 64 * 1024 * 1024  # octets of content recorded for one message
MAX_COMMANDS = 1000  # per connection
TIMEOUT = 30.0  # seconds of silence before the sink gives up on a client
SIZE_LIMIT = 100 * 1024 * 1024  # what EHLO announces


@dataclass
class Script:
    """What the sink does wrong, on purpose. Counters go down as they are used."""

    greylist_rcpt: int = 0  # the next N RCPT commands get 451 4.7.1
    greylist_data: int = 0  # the next N messages get 451 4.7.1 after their final "."
    reject: dict[str, str] = field(default_factory=dict)  # recipient (lower case) -> reply
    greeting: str | None = None  # a reply instead of the 220 greeting, then close
    drop_connections: bool = False  # close every connection before the greeting
    greeting_delay: float = 0.0  # seconds of silence before the greeting (at most TIMEOUT)


@dataclass(frozen=True)
class Received:
    """One message the sink accepted (answered 250 after its final ".")."""

    helo: str
    sender: str
    mail_parameters: str
    recipients: tuple[str, ...]
    rcpt_parameters: tuple[str, ...]
    data: bytes  # the content, dot-stuffing removed, without the final ".CRLF"
    peer: str
    when: float  # time.monotonic() at the final "."


@dataclass(frozen=True)
class Event:
    """A command the sink answered, and how (for the test to look at the dialogue)."""

    when: float  # time.monotonic()
    command: str  # the verb, upper case ("MAIL", "RCPT", "DATA", "." for the end of data)
    argument: str
    reply: str


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False  # stop() joins the threads itself, with a time limit

    def __init__(self, sink: SMTPSink, address: tuple[str, int]) -> None:
        self.sink = sink
        super().__init__(address, _Session)


class _Session(socketserver.StreamRequestHandler):
    """One SMTP connection."""

    server: _Server

    def setup(self) -> None:
        self.request.settimeout(TIMEOUT)
        super().setup()

    def handle(self) -> None:
        sink = self.server.sink
        sink._connected(self.request, threading.current_thread())
        script = sink.script
        try:
            if script.drop_connections:
                return
            if script.greeting_delay > 0 and sink._stopping.wait(
                min(script.greeting_delay, TIMEOUT)
            ):
                return  # the sink stops
            if script.greeting is not None:
                self._reply(script.greeting)
                return
            self._reply(f"220 {sink.hostname} ESMTP test sink")
            self._dialogue()
        except (OSError, ConnectionError):
            pass  # the client went away, or was too slow: nothing to record
        finally:
            sink._disconnected(self.request)

    # -- the dialogue ---------------------------------------------------------------------

    def _dialogue(self) -> None:
        sink = self.server.sink
        helo = ""
        sender: str | None = None
        mail_parameters = ""
        recipients: list[str] = []
        rcpt_parameters: list[str] = []
        for _ in range(MAX_COMMANDS):
            line = self.rfile.readline(MAX_LINE + 1)
            if not line:
                return
            if not line.endswith(b"\r\n") or len(line) > MAX_LINE:
                self._reply("500 5.5.2 Line too long or without CRLF")
                continue
            text = line[:-2].decode("utf-8", errors="replace")
            verb, _, argument = text.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                helo, sender, recipients = argument, None, []
                self._reply(
                    f"250-{sink.hostname}\r\n250-PIPELINING\r\n250-SIZE {SIZE_LIMIT}\r\n"
                    "250-8BITMIME\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES",
                    verb,
                    argument,
                )
            elif verb == "HELO":
                helo, sender, recipients = argument, None, []
                self._reply(f"250 {sink.hostname}", verb, argument)
            elif verb == "MAIL":
                if not helo:
                    self._reply("503 5.5.1 EHLO first", verb, argument)
                    continue
                path, parameters = _path(argument, "FROM:")
                if path is None:
                    self._reply("501 5.5.4 Syntax: MAIL FROM:<address>", verb, argument)
                    continue
                sender, mail_parameters, recipients, rcpt_parameters = path, parameters, [], []
                self._reply("250 2.1.0 Sender OK", verb, argument)
            elif verb == "RCPT":
                if sender is None:
                    self._reply("503 5.5.1 MAIL first", verb, argument)
                    continue
                path, parameters = _path(argument, "TO:")
                if not path:
                    self._reply("501 5.5.4 Syntax: RCPT TO:<address>", verb, argument)
                    continue
                refusal = sink._rcpt_refusal(path)
                if refusal is not None:
                    self._reply(refusal, verb, argument)
                    continue
                recipients.append(path)
                rcpt_parameters.append(parameters)
                self._reply("250 2.1.5 Recipient OK", verb, argument)
            elif verb == "DATA":
                if sender is None or not recipients:
                    # RFC 2920 §3.1: a pipelined DATA after every RCPT failed is refused.
                    self._reply("554 5.5.1 No valid recipients", verb, argument)
                    continue
                self._reply("354 Go ahead, end with <CRLF>.<CRLF>", verb, argument)
                data = self._content()
                if data is None:
                    self._reply("552 5.3.4 Message too big", ".", "")
                else:
                    received = Received(
                        helo=helo,
                        sender=sender,
                        mail_parameters=mail_parameters,
                        recipients=tuple(recipients),
                        rcpt_parameters=tuple(rcpt_parameters),
                        data=data,
                        peer=self.client_address[0],
                        when=time.monotonic(),
                    )
                    self._reply(sink._end_of_data(received), ".", "")
                sender, recipients, rcpt_parameters = None, [], []
            elif verb == "RSET":
                sender, recipients, rcpt_parameters = None, [], []
                self._reply("250 2.0.0 OK", verb, argument)
            elif verb == "NOOP":
                self._reply("250 2.0.0 OK", verb, argument)
            elif verb == "QUIT":
                self._reply("221 2.0.0 Bye", verb, argument)
                return
            else:
                self._reply("502 5.5.1 Command not implemented", verb, argument)
        self._reply("421 4.7.0 Too many commands")

    def _content(self) -> bytes | None:
        """The message up to the line with a single ".", unstuffed; None if too big."""
        parts: list[bytes] = []
        size = 0
        at_line_start = True
        while True:
            # A line longer than this comes in pieces; only a piece after LF starts a line.
            piece = self.rfile.readline(MAX_LINE)
            if not piece:
                raise ConnectionError("connection closed inside DATA")
            if at_line_start and piece == b".\r\n":
                break
            if at_line_start and piece.startswith(b"."):
                piece = piece[1:]  # RFC 5321 §4.5.2: the first "." of a line is removed
            at_line_start = piece.endswith(b"\n")
            size += len(piece)
            if size <= MAX_MESSAGE:
                parts.append(piece)
        return b"".join(parts) if size <= MAX_MESSAGE else None

    def _reply(self, reply: str, verb: str = "", argument: str = "") -> None:
        if verb:
            self.server.sink._record(Event(time.monotonic(), verb, argument, reply))
        self.wfile.write(reply.encode("utf-8") + b"\r\n")


def _path(argument: str, keyword: str) -> tuple[str | None, str]:
    """The address inside <...> after ``keyword`` and the parameters after it."""
    if argument[: len(keyword)].upper() != keyword:
        return None, ""
    rest = argument[len(keyword) :].lstrip()
    if not rest.startswith("<") or ">" not in rest:
        return None, ""
    path, _, parameters = rest[1:].partition(">")
    return path, parameters.strip()


class SMTPSink:
    """The receiving server. ``port`` 0 takes a free one; a given port lets a test name the
    port before the sink runs (to start it later on the port the mail server was told)."""

    def __init__(self, port: int = 0, hostname: str = "sink.test") -> None:
        self.hostname = hostname
        self.script = Script()
        self._requested_port = port
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[Received] = []
        self._events: list[Event] = []
        self._connections = 0
        self._open: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port

    # -- running --------------------------------------------------------------------------

    def start(self) -> SMTPSink:
        self._stopping.clear()
        server = _Server(self, ("127.0.0.1", self._requested_port))
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, close the connections still open and wait for their threads."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()  # serve_forever returns within its poll interval
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            open_now = dict(self._open)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 5
        for thread in open_now.values():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> SMTPSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what happened ----------------------------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return self._connections

    def wait_for_messages(self, count: int, timeout: float) -> list[Received]:
        """The messages, once there are at least ``count`` of them (AssertionError after
        ``timeout`` seconds without)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"the sink received {len(self._messages)} of {count} messages "
                        f"within {timeout} s; dialogue: {self._events}"
                    )
                self._changed.wait(remaining)
            return list(self._messages)

    # -- the sessions' side -----------------------------------------------------------------

    def _connected(self, sock: socket.socket, thread: threading.Thread) -> None:
        with self._lock:
            self._connections += 1
            self._open[sock] = thread

    def _disconnected(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.pop(sock, None)

    def _record(self, event: Event) -> None:
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()

    def _rcpt_refusal(self, recipient: str) -> str | None:
        with self._lock:
            reply = self.script.reject.get(recipient.lower())
            if reply is not None:
                return reply
            if self.script.greylist_rcpt > 0:
                self.script.greylist_rcpt -= 1
                return f"451 4.7.1 <{recipient}>: Greylisted, try again later"
        return None

    def _end_of_data(self, received: Received) -> str:
        with self._changed:
            if self.script.greylist_data > 0:
                self.script.greylist_data -= 1
                return "451 4.7.1 Greylisted, try again later"
            self._messages.append(received)
            self._changed.notify_all()
        return "250 2.0.0 Message accepted"
