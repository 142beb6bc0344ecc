"""From ``mailserver quickstart`` to a working server: the real command writes everything in an
empty directory, the real ``twistd mailserver`` runs on what it wrote, and the generated user
sends a message to itself over submission with STARTTLS and reads it back over POP3 with STLS.

The certificate is the self-signed one quickstart wrote, so the clients do not verify it.
"""

from __future__ import annotations

import poplib
import re
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.integration.server import MAILSERVER, RunningServer, free_port

pytestmark = pytest.mark.integration

ADDRESS = "you@example.org"


def distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def unverified() -> ssl.SSLContext:
    """A client context that accepts the self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def quickstart(
    directory: Path, ports: list[int], *options: str
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*MAILSERVER, "quickstart", ADDRESS, "--ports", ",".join(map(str, ports)), *options],
        capture_output=True,
        text=True,
        cwd=directory,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result


def greeting(address: str, port: int) -> bytes:
    """The first bytes the server sends on a connection to ``address``: a greeting, on the
    plain ports."""
    with socket.create_connection((address, port), timeout=10) as connection:
        return connection.recv(100)


def answers_on_both_families(ports: list[int]) -> None:
    """Every port takes connections on 127.0.0.1 and on ::1: the MX, submission and POP3
    greet, the implicit-TLS ports complete a TLS handshake."""
    mx, submission, submissions, pop3, pop3s = ports
    for address in ("127.0.0.1", "::1"):
        assert greeting(address, mx).startswith(b"220 ")
        assert greeting(address, submission).startswith(b"220 ")
        assert greeting(address, pop3).startswith(b"+OK")
        for port in (submissions, pop3s):
            with (
                socket.create_connection((address, port), timeout=10) as raw,
                unverified().wrap_socket(raw) as tls,
            ):
                assert tls.version() is not None


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 on this machine")
def test_listens_on_ipv4_and_ipv6(tmp_path: Path) -> None:
    """Without --loopback the server takes connections over IPv4 and IPv6 alike, as the AAAA
    record quickstart asks for promises; with it, on 127.0.0.1 and ::1."""
    for options in ((), ("--loopback",)):
        directory = tmp_path / ("loopback" if options else "everywhere")
        directory.mkdir()
        ports = distinct_ports(5)
        quickstart(directory, ports, *options)
        mx, submission, submissions, pop3, pop3s = ports
        server = RunningServer(
            directory,
            mx,
            submission_port=submission,
            submissions_port=submissions,
            pop3_port=pop3,
            pop3s_port=pop3s,
        )
        server.start()
        try:
            answers_on_both_families(ports)
        finally:
            server.stop()


def test_quickstart_then_send_and_read(tmp_path: Path) -> None:
    """The written configuration starts the server; the printed password logs in over TLS on
    submission and POP3; the message arrives in the user's own mailbox."""
    mx, submission, submissions, pop3, pop3s = distinct_ports(5)
    result = quickstart(tmp_path, [mx, submission, submissions, pop3, pop3s], "--loopback")
    assert "WARNING: the certificate is self-signed" in result.stderr
    match = re.search(r"\(it will not be shown again\):\n\n    (\S+)\n", result.stdout)
    assert match, result.stdout
    password = match[1]
    assert f"twistd -n mailserver --config {tmp_path}/mailserver.toml" in result.stdout

    server = RunningServer(
        tmp_path,
        mx,
        submission_port=submission,
        submissions_port=submissions,
        pop3_port=pop3,
        pop3s_port=pop3s,
    )
    server.start()
    try:
        message = (
            f"From: <{ADDRESS}>\r\nTo: <{ADDRESS}>\r\nSubject: first light\r\n"
            "Message-ID: <quickstart@example.org>\r\nDate: Mon, 1 Jan 2024 12:00:00 +0000\r\n"
            "\r\nHello from the quickstart.\r\n"
        )
        with smtplib.SMTP("127.0.0.1", submission, timeout=30) as sender:
            sender.starttls(context=unverified())
            sender.login(ADDRESS, password)
            assert sender.sendmail(ADDRESS, [ADDRESS], message) == {}

        reader = poplib.POP3("127.0.0.1", pop3, timeout=30)
        try:
            reader.stls(context=unverified())
            reader.user(ADDRESS)
            reader.pass_(password)
            count, _ = reader.stat()
            assert count == 1
            _, lines, _ = reader.retr(1)
        finally:
            reader.quit()
        text = b"\r\n".join(lines).decode()
        assert "Subject: first light" in text
        assert "Hello from the quickstart." in text

        # The implicit-TLS ports take the same login.
        with smtplib.SMTP_SSL("127.0.0.1", submissions, context=unverified(), timeout=30) as tls:
            tls.login(ADDRESS, password)
        secure = poplib.POP3_SSL("127.0.0.1", pop3s, context=unverified(), timeout=30)
        try:
            secure.user(ADDRESS)
            secure.pass_(password)
        finally:
            secure.quit()
    finally:
        server.stop()
