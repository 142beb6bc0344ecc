"""Scenarios against the real ``twistd mailserver`` process with real SMTP clients."""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.server import RunningServer

pytestmark = pytest.mark.integration

BODY = (
    b"From: Carol <carol@sender.example>\r\n"
    b"To: Alice <alice@example.org>\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <1@sender.example>\r\n"
    b"\r\n"
    b"First line.\r\n"
    b".A line that starts with a dot.\r\n"
    b"..Two dots.\r\n"
    b"Caf\xc3\xa9 8-bit text.\r\n"
)


def swaks(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("swaks") is None:
        pytest.fail("swaks is not installed (.ci/run installs it)")
    return subprocess.run(
        [
            "swaks",
            "--server",
            "127.0.0.1",
            "--port",
            str(server.smtp_port),
            "--helo",
            "client.sender.example",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


class SMTPDialogue:
    """A raw SMTP connection, for the cases no polite client would produce."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def test_swaks_delivers_byte_identical_body_with_trace_headers(server: RunningServer) -> None:
    """A message from swaks lands in new/ unchanged, after Return-Path, Delivered-To, Received."""
    message = server.directory / "message.eml"
    message.write_bytes(BODY)
    result = swaks(
        server,
        "--from",
        "carol@sender.example",
        "--to",
        "alice@example.org",
        "--data",
        f"@{message}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Message accepted" in result.stdout
    [stored] = server.new_messages("alice@example.org")
    data = stored.read_bytes()
    sent = BODY + b"\r\n"  # swaks ends the data with a CRLF of its own before the "."
    assert data.endswith(sent)
    trace = data[: -len(sent)]
    assert trace.startswith(b"Return-Path: <carol@sender.example>\r\n")
    assert b"Delivered-To: alice@example.org\r\n" in trace
    assert b"Received: from client.sender.example ([127.0.0.1])\r\n" in trace
    assert b"\tby mx.example.org with ESMTP id " in trace
    assert b"\tfor <alice@example.org>;" in trace
    assert f",S={len(data)}".encode() in stored.name.encode()


def test_alias_subaddress_and_several_recipients(server: RunningServer) -> None:
    """An alias fans out, user+tag reaches user, and recipients share one file by hard links."""
    result = swaks(
        server,
        "--from",
        "carol@sender.example",
        "--to",
        "team@example.org,bob+lists@example.org,POSTMASTER@Example.ORG",
    )
    assert result.returncode == 0, result.stdout
    [alice] = server.new_messages("alice@example.org")
    [bob] = server.new_messages("bob@example.org")
    assert alice.stat().st_ino == bob.stat().st_ino
    assert alice.stat().st_nlink == 2
    assert b"Delivered-To:" not in alice.read_bytes()  # shared file names no single recipient


def test_relay_and_unknown_users_are_refused(server: RunningServer) -> None:
    """Other domains get 554 5.7.1 whatever the trick; unknown local users get 550 5.1.1."""
    dialogue = SMTPDialogue(server.smtp_port)
    assert dialogue.command("EHLO client.sender.example").startswith("250-")
    assert dialogue.command("MAIL FROM:<carol@sender.example>").startswith("250 2.1.0")
    refused = {
        "<victim@elsewhere.example>": "554 5.7.1",
        "<@example.org:victim@elsewhere.example>": "554 5.7.1",
        "<victim@[192.0.2.7]>": "554 5.7.1",
        "<victim%elsewhere.example@example.org>": "550 5.1.1",
        "<elsewhere.example!victim@example.org>": "550 5.1.1",
        '<"victim@elsewhere.example"@example.org>': "550 5.1.1",
        "<victim@example.org.>": "501 5.1.3",
        "<nobody@example.org>": "550 5.1.1",
    }
    for path, expected in refused.items():
        assert dialogue.command(f"RCPT TO:{path}").startswith(expected), path
    assert dialogue.command("DATA").startswith("554 5.5.1")
    assert dialogue.command("QUIT").startswith("221")
    assert server.new_messages("alice@example.org") == []


def test_oversized_message_refused(server_factory) -> None:  # type: ignore[no-untyped-def]
    """SIZE over the limit is refused at MAIL, and a message growing past it at end of data."""
    server = server_factory({"smtp": {"max_message_size": 100_000}})
    server.admin("user", "add", "alice@example.org", password="pw-alice-1")
    server.start()
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
        client.ehlo("client.sender.example")
        code, text = client.mail("carol@sender.example", ["SIZE=200000"])
        assert (code, text[:5]) == (552, b"5.3.4")
        client.rset()
        client.mail("carol@sender.example")
        client.rcpt("alice@example.org")
        code, text = client.data(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 200)
        assert (code, text[:5]) == (552, b"5.3.4")
    assert server.new_messages("alice@example.org") == []


def test_smuggled_message_is_not_a_boundary(server: RunningServer) -> None:
    """LF.LF inside DATA neither ends the data nor starts a second transaction (5.5.2)."""
    dialogue = SMTPDialogue(server.smtp_port)
    dialogue.command("EHLO client.sender.example")
    dialogue.command("MAIL FROM:<carol@sender.example>")
    dialogue.command("RCPT TO:<alice@example.org>")
    assert dialogue.command("DATA").startswith("354")
    dialogue.send(
        b"Subject: first\r\n\r\nbody\n.\nMAIL FROM:<evil@sender.example>\n"
        b"RCPT TO:<bob@example.org>\nDATA\nSubject: smuggled\n\nsmuggled\r\n.\r\n"
    )
    assert dialogue.reply().startswith("550 5.5.2")
    assert dialogue.command("NOOP").startswith("250")
    dialogue.close()
    assert server.new_messages("alice@example.org") == []
    assert server.new_messages("bob@example.org") == []


def test_pipelined_transactions_and_bdat(server: RunningServer) -> None:
    """A whole pipelined session in one write gets every reply in order; BDAT delivers too."""
    dialogue = SMTPDialogue(server.smtp_port)
    dialogue.command("EHLO client.sender.example")
    content = b"Subject: chunked\r\n\r\nhello\r\n"
    dialogue.send(
        b"MAIL FROM:<carol@sender.example>\r\nRCPT TO:<nobody@example.org>\r\n"
        b"RCPT TO:<alice@example.org>\r\nDATA\r\n"
    )
    assert dialogue.reply().startswith("250 2.1.0")
    assert dialogue.reply().startswith("550 5.1.1")
    assert dialogue.reply().startswith("250 2.1.5")
    assert dialogue.reply().startswith("354")
    dialogue.send(
        b"Subject: piped\r\n\r\nhi\r\n.\r\nMAIL FROM:<carol@sender.example>\r\n"
        b"RCPT TO:<bob@example.org>\r\n"
        + f"BDAT {len(content) - 5}\r\n".encode()
        + content[:-5]
        + b"BDAT 5 LAST\r\n"
        + content[-5:]
    )
    assert dialogue.reply().startswith("250 2.0.0 Message accepted")
    assert dialogue.reply().startswith("250 2.1.0")
    assert dialogue.reply().startswith("250 2.1.5")
    assert dialogue.reply().startswith("250 2.0.0")
    assert dialogue.reply().startswith("250 2.0.0 Message accepted")
    dialogue.close()
    [bob] = server.new_messages("bob@example.org")
    assert bob.read_bytes().endswith(content)


def test_sigkill_after_250_loses_nothing(server: RunningServer) -> None:
    """The message acknowledged with 250 is in new/ after SIGKILL and restart."""
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
        client.sendmail("carol@sender.example", ["alice@example.org"], BODY)
        server.kill()
    server.start()
    [stored] = server.new_messages("alice@example.org")
    assert stored.read_bytes().endswith(BODY)


def test_sigkill_mid_data_leaves_nothing_visible(server: RunningServer) -> None:
    """A crash while DATA arrives leaves no partial message in any new/ or cur/."""
    dialogue = SMTPDialogue(server.smtp_port)
    dialogue.command("EHLO client.sender.example")
    dialogue.command("MAIL FROM:<carol@sender.example>")
    dialogue.command("RCPT TO:<alice@example.org>")
    assert dialogue.command("DATA").startswith("354")
    dialogue.send(b"Subject: half\r\n\r\n" + b"z" * 400_000)
    time.sleep(0.5)
    server.kill()
    dialogue.close()
    server.start()
    maildir = server.maildir("alice@example.org")
    assert list((maildir / "new").iterdir()) == []
    assert list((maildir / "cur").iterdir()) == []


def test_accounts_change_without_restart(server: RunningServer) -> None:
    """A user added with the CLI while the server runs receives mail at once."""
    server.admin("user", "add", "dave@example.org", password="pw-dave-12")
    result = swaks(server, "--from", "carol@sender.example", "--to", "dave@example.org")
    assert result.returncode == 0, result.stdout
    assert len(server.new_messages("dave@example.org")) == 1


def test_connection_limit_per_client(server_factory) -> None:  # type: ignore[no-untyped-def]
    """Past the per-address limit a new connection gets 421 4.7.0 and is closed."""
    server = server_factory({"smtp": {"max_connections_per_client": 2}})
    server.start()
    first, second = SMTPDialogue(server.smtp_port), SMTPDialogue(server.smtp_port)
    third = socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10)
    assert third.makefile("rb").readline().startswith(b"421 4.7.0")
    first.close()
    second.close()
    third.close()


def test_idle_client_is_disconnected(server_factory) -> None:  # type: ignore[no-untyped-def]
    """A client that says nothing gets 421 4.4.2 when the command timeout passes."""
    server = server_factory({"smtp": {"command_timeout": 1}})
    server.start()
    dialogue = SMTPDialogue(server.smtp_port)
    started = time.monotonic()
    assert dialogue.reply().startswith("421 4.4.2")
    assert time.monotonic() - started < 10


def test_log_has_one_event_per_message(server: RunningServer) -> None:
    """Received, rejected and delivered messages each leave a log line with their id."""
    swaks(server, "--from", "carol@sender.example", "--to", "alice@example.org")
    swaks(server, "--from", "carol@sender.example", "--to", "nobody@example.org")
    server.stop()
    log = server.log.read_text()
    assert "received id=" in log
    assert "delivered id=" in log
    assert "rejected id=" in log and "to=<nobody@example.org>" in log


def test_bad_configuration_refuses_to_start(server_factory) -> None:  # type: ignore[no-untyped-def]
    """Unknown keys and bad values are all reported, and twistd exits non-zero."""
    server = server_factory()
    server.config.write_text('[smtp]\nmax_recipeints = 5\nmax_message_size = "huge"\n')
    with pytest.raises(RuntimeError):
        server.start()
    assert server.process is not None
    errors = server.process.stderr.read().decode()  # type: ignore[union-attr]
    assert "smtp.max_recipeints" in errors and "smtp.max_message_size" in errors
    assert "Traceback" not in errors


def test_worker_processes_share_the_smtp_listener(server_factory) -> None:  # type: ignore[no-untyped-def]
    """With smtp.processes = 2 a worker process accepts on the same listener: every message
    is delivered, the worker's events reach the server's log, and stopping the server stops
    the worker."""
    server = server_factory({"smtp": {"processes": 2, "max_connections_per_client": 100}})
    server.admin("user", "add", "alice@example.org", password="pw-alice-1")
    server.start()
    deadline = time.monotonic() + 30
    while "accepting SMTP connections" not in server.log.read_text():
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.1)

    def send(index: int) -> None:
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
            client.sendmail("carol@sender.example", ["alice@example.org"], BODY)

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(send, range(60)))
    assert len(server.new_messages("alice@example.org")) == 60
    server.stop()
    log = server.log.read_text()
    [pid] = re.findall(r"started SMTP worker 1 \(pid (\d+)\)", log)
    assert "[mailserver.mail worker 1]" in log
    assert not Path(f"/proc/{pid}").exists()
