"""A loopback DNS server for scenario tests: authoritative answers from records given as data.

The server is a child process (``sys.executable`` running the small program below) built on
``twisted.names``: a :class:`~twisted.names.server.DNSServerFactory` over in-memory authorities,
one per zone, listening on UDP and TCP on the same free port of 127.0.0.1. A name inside one
of its zones that has no records gets NXDOMAIN; a name that has records, but none of the type
asked for, gets an empty NOERROR answer (with the zone's SOA, as RFC 2308 asks).

The child reads its records as JSON from its command line, prints its port once both
listeners are bound and exits when its standard input closes, so a test process that dies
takes its DNS server with it. :meth:`LoopbackDNS.start` returns only once the server has
answered a query.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from twisted.names import dns


@dataclass(frozen=True)
class MX:
    """An MX record; ``exchange`` "." is the null MX of RFC 7505."""

    preference: int
    exchange: str


@dataclass(frozen=True)
class A:
    address: str


@dataclass(frozen=True)
class AAAA:
    address: str


@dataclass(frozen=True)
class TXT:
    """A TXT record; text longer than 255 octets is sent as several strings (RFC 7208 §3.3)."""

    text: str


@dataclass(frozen=True)
class PTR:
    name: str


Record = MX | A | AAAA | TXT | PTR


def _as_data(record: Record) -> list[object]:
    if isinstance(record, MX):
        return ["MX", record.preference, record.exchange]
    if isinstance(record, A):
        return ["A", record.address]
    if isinstance(record, TXT):
        return ["TXT", record.text]
    if isinstance(record, PTR):
        return ["PTR", record.name]
    return ["AAAA", record.address]


# The child: everything it needs comes from its argument, everything it says is one line.
_PROGRAM = r"""
import json
import sys

from twisted.internet import reactor, stdio
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Protocol
from twisted.names import authority, dns, server

spec = json.loads(sys.argv[1])


class Zone(authority.FileAuthority):
    # An authority from memory: FileAuthority answers from .soa and .records.
    def __init__(self, origin, records):
        super().__init__(origin)
        self.soa = (
            origin.encode(),
            dns.Record_SOA(
                mname=b"ns." + origin.encode(),
                rname=b"hostmaster." + origin.encode(),
                serial=1,
                refresh=3600,
                retry=600,
                expire=86400,
                minimum=5,
                ttl=5,
            ),
        )
        self.records = {self.soa[0]: [self.soa[1]]}
        for name, items in records.items():
            made = []
            for item in items:
                kind, *values = item
                if kind == "MX":
                    preference, exchange = values
                    # The null MX: the root name, whose wire form is one zero octet.
                    target = b"" if exchange in (".", "") else exchange.encode()
                    made.append(dns.Record_MX(preference, target, ttl=5))
                elif kind == "A":
                    made.append(dns.Record_A(values[0], ttl=5))
                elif kind == "AAAA":
                    made.append(dns.Record_AAAA(values[0], ttl=5))
                elif kind == "TXT":
                    data = values[0].encode()
                    parts = [data[i : i + 255] for i in range(0, len(data), 255)]
                    made.append(dns.Record_TXT(*parts, ttl=5))
                elif kind == "PTR":
                    made.append(dns.Record_PTR(values[0].encode(), ttl=5))
                else:
                    raise ValueError(f"unknown record type {kind}")
            self.records.setdefault(name.lower().rstrip(".").encode(), []).extend(made)

    def loadFile(self, filename):
        pass


def in_zone(name, zone):
    return name == zone or name.endswith("." + zone)


zones = sorted(spec["zones"], key=len, reverse=True)
authorities = []
for zone in zones:
    records = {
        name: items
        for name, items in spec["records"].items()
        if in_zone(name, zone) and not any(in_zone(name, z) for z in zones if len(z) > len(zone))
    }
    authorities.append(Zone(zone, records))
factory = server.DNSServerFactory(authorities=authorities)
protocol = dns.DNSDatagramProtocol(controller=factory)

for _ in range(50):
    udp = reactor.listenUDP(0, protocol, interface="127.0.0.1")
    port = udp.getHost().port
    try:
        reactor.listenTCP(port, factory, interface="127.0.0.1")
    except CannotListenError:
        udp.stopListening()
        continue
    break
else:
    sys.exit("no port free for both UDP and TCP")


class Parent(Protocol):
    # Standard input closing means the test process is done (or gone): stop.
    def connectionLost(self, reason=None):
        if reactor.running:
            reactor.stop()


stdio.StandardIO(Parent())
print(port, flush=True)
reactor.run()
"""


class LoopbackDNS:
    """The DNS server process; ``records`` maps names to their records, ``zones`` are the
    zones it is authoritative for (NXDOMAIN for unknown names inside them)."""

    def __init__(self, records: Mapping[str, Sequence[Record]], zones: Sequence[str]) -> None:
        self.records = {name.lower(): list(items) for name, items in records.items()}
        self.zones = [zone.lower().rstrip(".") for zone in zones]
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The server as ``dns.resolver`` takes it: "127.0.0.1:PORT"."""
        assert self.port is not None, "not started"
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        spec = {
            "zones": self.zones,
            "records": {
                name: [_as_data(record) for record in items] for name, items in self.records.items()
            },
        }
        self._process = subprocess.Popen(
            [sys.executable, "-c", _PROGRAM, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        try:
            assert self._process.stdout is not None
            line = _read_line(self._process.stdout, deadline)
            if not line.strip().isdigit():
                raise RuntimeError(f"DNS server did not start: {line!r} {self._errors()}")
            self.port = int(line)
            self._wait_until_answering(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # the child stops its reactor when this closes
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def query(self, name: str, kind: int, timeout: float = 2.0) -> dns.Message:
        """One UDP query, as a resolver would send it; the decoded answer."""
        assert self.port is not None, "not started"
        query = dns.Message(id=int.from_bytes(os.urandom(2), "big"), recDes=True)
        query.queries = [dns.Query(name.encode(), kind, dns.IN)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(query.toStr(), ("127.0.0.1", self.port))
            while True:
                data = sock.recv(65535)
                answer = dns.Message()
                answer.fromStr(data)
                if answer.id == query.id:
                    return answer

    def _wait_until_answering(self, deadline: float) -> None:
        zone = self.zones[0]
        while True:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"DNS server exited: {self._errors()}")
            try:
                answer = self.query(zone, dns.SOA, timeout=0.5)
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("DNS server does not answer") from None
                continue
            if answer.answers:
                return
            raise RuntimeError(f"DNS server answers strangely: {answer}")

    def _errors(self) -> str:
        if self._process is None or self._process.poll() is None:
            return ""
        assert self._process.stderr is not None
        return self._process.stderr.read().decode(errors="replace")


def _read_line(stream: IO[bytes], deadline: float) -> str:
    """A line from a child's output, waiting no longer than ``deadline``."""
    data = b""
    fd = stream.fileno()
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or len(data) > 4096:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")
