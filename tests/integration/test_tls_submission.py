"""TLS and submission scenarios against the real ``twistd mailserver`` process.

The certificate comes from ``mailserver tls self-signed``; every client is told to trust that
file and to expect the name in it, so certificate verification is real throughout. Submission
and POP3 each listen twice, on a tcp: port (STARTTLS, STLS) and an ssl: port (implicit TLS),
with ``plaintext_auth = "never"``. Mail goes in with msmtp, swaks and smtplib and comes out with
mpop and fetchmail.

One server serves the module: the tests that share it leave its certificate alone, compare
mailboxes before and after, and the failed login comes from an address of its own (failed
logins slow down later ones from the same address). Renewal rewrites the certificate, so it
gets a server of its own.
"""

from __future__ import annotations

import base64
import os
import poplib
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import PASSWORD
from tests.integration.server import RunningServer, free_port

pytestmark = pytest.mark.integration

HOSTNAME = "mx.example.org"  # the server's name, and the only name in its certificate
ALICE = "alice@example.org"
BOB = "bob@example.org"
DAVE = "dave@example.org"  # the POP3 tests' mailbox, which nothing else sends to


def require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (.ci/run installs it)")


@dataclass
class TLSServer:
    """A running server with TLS, and the certificate files it was configured with."""

    server: RunningServer
    certificate: Path
    private_key: Path
    cli_output: str  # what ``mailserver tls self-signed`` printed

    @property
    def submission_ports(self) -> tuple[int, int]:
        """(STARTTLS port, implicit TLS port)."""
        assert self.server.submissions_port is not None
        return self.server.submission_port, self.server.submissions_port

    @property
    def pop3_ports(self) -> tuple[int, int]:
        """(STLS port, implicit TLS port)."""
        assert self.server.pop3s_port is not None
        return self.server.pop3_port, self.server.pop3s_port


def self_signed(server: RunningServer, certificate: Path, private_key: Path) -> str:
    """Write a certificate for HOSTNAME with the admin command; what it printed."""
    result = server.admin(
        "tls",
        "self-signed",
        HOSTNAME,
        "--certificate",
        str(certificate),
        "--private-key",
        str(private_key),
    )
    return result.stdout


def start_tls_server(directory: Path, certificates: tuple[Path, Path] | None = None) -> TLSServer:
    """A server for example.org with STARTTLS and implicit TLS listeners for submission and
    POP3, passwords only inside TLS; users alice, bob and dave.

    The certificate is written with the CLI, or copied from ``certificates`` when given.
    """
    server = RunningServer(
        directory,
        free_port(),
        {"submission": {"plaintext_auth": "never"}, "pop3": {"plaintext_auth": "never"}},
        submissions_port=free_port(),
        pop3s_port=free_port(),
    )
    directory.mkdir()
    server.write_config()
    tls = directory / "tls"
    tls.mkdir()
    certificate, private_key = tls / f"{HOSTNAME}.crt", tls / f"{HOSTNAME}.key"
    output = ""
    if certificates is None:
        output = self_signed(server, certificate, private_key)
        # The configuration gets the [tls] lines the command printed.
        printed = tomllib.loads("\n".join(output.partition("[tls]\n")[2].splitlines()[:2]))
        certificate, private_key = Path(printed["certificate"]), Path(printed["private_key"])
    else:
        shutil.copy(certificates[0], certificate)
        shutil.copy(certificates[1], private_key)
        private_key.chmod(0o600)
    server.use_tls(certificate, private_key)
    server.write_config()
    for user in (ALICE, BOB, DAVE):
        server.admin("user", "add", user, password=PASSWORD)
    try:
        server.start()
    except BaseException:
        server.stop()  # a process that started but never opened every port
        raise
    return TLSServer(server, certificate, private_key, output)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    """One TLS server for the tests that do not change its certificate."""
    setup = start_tls_server(tmp_path_factory.mktemp("tls") / "server")
    yield setup
    setup.server.stop()


# -- clients ---------------------------------------------------------------------------------------


def trusting(certificate: Path) -> ssl.SSLContext:
    """A client context that trusts only ``certificate`` and checks the host name."""
    return ssl.create_default_context(cafile=str(certificate))


class _Loopback:
    """smtplib connects to HOSTNAME's port on loopback, so that the certificate is checked
    against the server's real name (HOSTNAME is not in any DNS)."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return super()._get_socket("127.0.0.1", port, timeout)  # type: ignore[misc]


class SMTP(_Loopback, smtplib.SMTP):
    pass


def submission(setup: TLSServer, **kwargs: Any) -> SMTP:
    """A STARTTLS session on the submission port, EHLO said again inside TLS."""
    client = SMTP(HOSTNAME, setup.server.submission_port, timeout=30, **kwargs)
    client.starttls(context=trusting(setup.certificate))
    client.ehlo("client.example.org")
    return client


def read_line(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """One CRLF-ended line, read a byte at a time so nothing after it is consumed."""
    line = b""
    while not line.endswith(b"\r\n"):
        assert len(line) < 2048, f"no line end in {line!r}"
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"closed after {line!r}")
        line += byte
    return line


def smtp_reply(sock: socket.socket | ssl.SSLSocket) -> list[bytes]:
    """The lines of one (possibly multi-line) SMTP reply."""
    lines = [read_line(sock)]
    while lines[-1][3:4] == b"-":
        assert len(lines) < 100
        lines.append(read_line(sock))
    return lines


def plain_credentials(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def all_mail(server: RunningServer) -> set[Path]:
    """Every message file in every mailbox."""
    root = server.data_dir / "mail"
    return {path for sub in ("new", "cur") for path in root.glob(f"*/*/{sub}/*")}


def unix_lines(data: bytes) -> bytes:
    """mpop and fetchmail hand mail over with LF line endings, as local mail has."""
    return data.replace(b"\r\n", b"\n")


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, capture_output=True, timeout=60, **kwargs)


# -- the certificate from the CLI on every TLS listener --------------------------------------------


def served_certificate(port: int, context: ssl.SSLContext, starttls: bytes | None) -> bytes:
    """The certificate (DER) the listener presents after a verified handshake; ``starttls``
    is b"SMTP" or b"POP3" to upgrade a plain connection first, None for implicit TLS."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if starttls == b"SMTP":
            assert read_line(sock).startswith(b"220 ")
            sock.sendall(b"EHLO client.example.org\r\n")
            assert b"250 STARTTLS\r\n" in smtp_reply(sock)
            sock.sendall(b"STARTTLS\r\n")
            assert read_line(sock).startswith(b"220 2.0.0")
        elif starttls == b"POP3":
            assert read_line(sock).startswith(b"+OK")
            sock.sendall(b"STLS\r\n")
            assert read_line(sock).startswith(b"+OK")
        with context.wrap_socket(sock, server_hostname=HOSTNAME) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            certificate = tls.getpeercert(binary_form=True)
            assert certificate is not None
            if starttls is None:  # the greeting comes inside TLS
                assert read_line(tls)[:3] in (b"220", b"+OK")
            return certificate


def test_cli_certificate_is_served_on_every_tls_listener(tls_server: TLSServer) -> None:
    """``mailserver tls self-signed`` writes a key only its owner can read and prints the
    [tls] lines; configured with them, the STARTTLS and implicit TLS listeners of submission
    and POP3 all present that certificate, verified for the server's name."""
    setup = tls_server
    assert "[tls]" in setup.cli_output
    assert setup.private_key.stat().st_mode & 0o777 == 0o600
    expected = ssl.PEM_cert_to_DER_cert(setup.certificate.read_text())
    context = trusting(setup.certificate)
    starttls, implicit = setup.submission_ports
    stls, pop3s = setup.pop3_ports
    assert served_certificate(starttls, context, b"SMTP") == expected
    assert served_certificate(implicit, context, None) == expected
    assert served_certificate(stls, context, b"POP3") == expected
    assert served_certificate(pop3s, context, None) == expected


# -- msmtp -----------------------------------------------------------------------------------------


def msmtp(
    setup: TLSServer,
    port: int,
    starttls: bool,
    message: bytes,
    recipient: str,
    sender: str = ALICE,
    tls_name: str = HOSTNAME,
) -> subprocess.CompletedProcess[bytes]:
    """Send ``message`` with msmtp as alice, trusting only the server's certificate."""
    require("msmtp")
    rc = setup.server.directory / f"msmtprc-{time.monotonic_ns()}"
    rc.write_text(
        "account default\n"
        "host 127.0.0.1\n"
        f"port {port}\n"
        "tls on\n"
        f"tls_starttls {'on' if starttls else 'off'}\n"
        f"tls_trust_file {setup.certificate}\n"
        f"tls_host_override {tls_name}\n"
        "auth on\n"
        f"user {ALICE}\n"
        f"password {PASSWORD}\n"
        f"from {sender}\n"
    )
    rc.chmod(0o600)  # msmtp refuses a password in a file others can read
    return run(["msmtp", "-C", str(rc), recipient], input=message)


def test_msmtp_starttls_and_implicit_tls_deliver_exactly(tls_server: TLSServer) -> None:
    """msmtp with AUTH over STARTTLS and over implicit TLS, verifying the certificate: each
    message lands in alice's new/ ending with exactly the bytes sent, after a Received header
    that says ``with ESMTPSA`` and names the TLS version. A client expecting another name
    refuses the certificate and sends nothing."""
    setup = tls_server
    server = setup.server
    for port, starttls in zip(setup.submission_ports, (True, False), strict=True):
        message = (
            b"From: Alice <alice@example.org>\r\n"
            b"To: alice@example.org\r\n"
            b"Date: Mon, 1 Jan 2024 12:00:00 +0000\r\n"
            b"Message-ID: <%d@example.org>\r\n"
            b"Subject: over TLS\r\n"
            b"\r\n"
            b"First line.\r\n"
            b".A line that starts with a dot.\r\n"
            b"Caf\xc3\xa9 8-bit text.\r\n" % port
        )
        before = set(server.new_messages(ALICE))
        result = msmtp(setup, port, starttls, message, ALICE)
        assert result.returncode == 0, result.stderr.decode()
        [arrived] = set(server.new_messages(ALICE)) - before
        data = arrived.read_bytes()
        assert data.endswith(message)
        trace = data[: -len(message)]
        assert b"\tby mx.example.org with ESMTPSA id " in trace
        assert b"\t(using TLSv1." in trace
    before = all_mail(server)
    message = b"From: alice@example.org\r\nSubject: x\r\n\r\nx\r\n"
    result = msmtp(setup, setup.submission_ports[0], True, message, ALICE, tls_name="other.test")
    assert result.returncode != 0
    assert all_mail(server) == before


# -- swaks -----------------------------------------------------------------------------------------


def test_swaks_starttls_plain_and_implicit_tls_login(tls_server: TLSServer) -> None:
    """swaks --tls with AUTH PLAIN on the STARTTLS port and --tlsc with AUTH LOGIN on the
    implicit TLS port: both log in (235) and get their message accepted (250)."""
    require("swaks")
    setup = tls_server
    starttls, implicit = setup.submission_ports
    before = set(setup.server.new_messages(ALICE))
    for port, tls, mechanism in ((starttls, "--tls", "PLAIN"), (implicit, "--tlsc", "LOGIN")):
        result = run(
            [
                "swaks",
                "--server",
                "127.0.0.1",
                "--port",
                str(port),
                tls,
                "--auth",
                mechanism,
                "--auth-user",
                ALICE,
                "--auth-password",
                PASSWORD,
                "--helo",
                "client.example.org",
                "--from",
                ALICE,
                "--to",
                ALICE,
            ]
        )
        output = result.stdout.decode()
        assert result.returncode == 0, output + result.stderr.decode()
        assert "=== TLS started with cipher TLSv1." in output
        assert f" ~> AUTH {mechanism}" in output
        assert "<~  235 2.7.0" in output
        assert "<~  250 2.0.0 Message accepted" in output
    assert len(set(setup.server.new_messages(ALICE)) - before) == 2


# -- no passwords before TLS -----------------------------------------------------------------------


def test_no_password_before_tls(tls_server: TLSServer) -> None:
    """With plaintext_auth "never", even on loopback: EHLO before STARTTLS offers no AUTH and
    AUTH PLAIN gets 538 5.7.11 (and is not a failed login); POP3 CAPA before STLS offers no
    USER or SASL and USER gets -ERR [AUTH]."""
    setup = tls_server
    client = smtplib.SMTP("127.0.0.1", setup.server.submission_port, timeout=30)
    client.ehlo("client.example.org")
    assert client.has_extn("starttls")
    assert not client.has_extn("auth")
    code, text = client.docmd("AUTH", "PLAIN " + plain_credentials(ALICE, PASSWORD))
    assert (code, text[:6]) == (538, b"5.7.11")
    client.quit()

    pop = poplib.POP3("127.0.0.1", setup.server.pop3_port, timeout=30)
    capabilities = pop.capa()
    assert "STLS" in capabilities
    assert "USER" not in capabilities and "SASL" not in capabilities
    with pytest.raises(poplib.error_proto) as refused:
        pop.user(ALICE)
    assert refused.value.args[0].startswith(b"-ERR [AUTH] ")
    pop.quit()


# -- nothing pipelined behind STARTTLS / STLS runs inside TLS --------------------------------------


def test_command_injected_behind_starttls_is_discarded(tls_server: TLSServer) -> None:
    """MAIL FROM sent in the same packet as STARTTLS (CVE-2011-0411) does not run: the first
    reply inside TLS is the 503 to the RCPT sent there, and after EHLO a RCPT still finds no
    transaction."""
    setup = tls_server
    with socket.create_connection(("127.0.0.1", setup.server.submission_port), timeout=10) as sock:
        assert read_line(sock).startswith(b"220 ")
        sock.sendall(b"EHLO x\r\n")
        smtp_reply(sock)
        sock.sendall(b"STARTTLS\r\nMAIL FROM:<alice@example.org>\r\n")
        assert read_line(sock).startswith(b"220 2.0.0")
        with trusting(setup.certificate).wrap_socket(sock, server_hostname=HOSTNAME) as tls:
            tls.sendall(b"RCPT TO:<bob@example.org>\r\n")
            assert smtp_reply(tls)[0].startswith(b"503 5.5.1")
            tls.sendall(b"EHLO x\r\n")
            assert b"250 AUTH PLAIN LOGIN\r\n" in smtp_reply(tls)
            tls.sendall(b"RCPT TO:<bob@example.org>\r\n")
            assert smtp_reply(tls)[0].startswith(b"503 5.5.1")
            tls.sendall(b"QUIT\r\n")
            assert smtp_reply(tls)[0].startswith(b"221")


def test_command_injected_behind_stls_is_discarded(tls_server: TLSServer) -> None:
    """USER sent in the same packet as STLS does not run: the correct password sent first
    inside TLS gets -ERR (USER first), never +OK."""
    setup = tls_server
    with socket.create_connection(("127.0.0.1", setup.server.pop3_port), timeout=10) as sock:
        assert read_line(sock).startswith(b"+OK")
        sock.sendall(b"STLS\r\nUSER alice@example.org\r\n")
        assert read_line(sock).startswith(b"+OK")
        with trusting(setup.certificate).wrap_socket(sock, server_hostname=HOSTNAME) as tls:
            tls.sendall(f"PASS {PASSWORD}\r\n".encode())
            assert read_line(tls).startswith(b"-ERR ")
            tls.sendall(b"QUIT\r\n")
            assert read_line(tls).startswith(b"+OK")


# -- submission policy -----------------------------------------------------------------------------


def test_submission_policy_refusals_deliver_nothing(tls_server: TLSServer) -> None:
    """Logged in as alice over TLS: bob as envelope sender (msmtp) gets 553 5.7.1, bob in the
    From header 550 5.7.1; MAIL without AUTH gets 530 5.7.0. No mailbox receives anything.
    (A recipient in another domain is accepted for the outbound queue: see the outbound
    scenario tests.)"""
    setup = tls_server
    server = setup.server
    before = all_mail(server)
    message = b"From: bob@example.org\r\nTo: bob@example.org\r\nSubject: forged\r\n\r\nx\r\n"
    result = msmtp(setup, setup.submission_ports[0], True, message, BOB, sender=BOB)
    assert result.returncode != 0
    assert b"553 5.7.1" in result.stderr

    with submission(setup) as client:
        client.login(ALICE, PASSWORD)
        code, text = client.mail(BOB)
        assert (code, text[:5]) == (553, b"5.7.1")
        client.rset()
        assert client.mail(ALICE)[0] == 250
        assert client.rcpt(BOB)[0] == 250
        code, text = client.data(message)
        assert (code, text[:5]) == (550, b"5.7.1")
        client.rset()
    with submission(setup) as client:
        code, text = client.mail(ALICE)
        assert (code, text[:5]) == (530, b"5.7.0")
    assert all_mail(server) == before


# -- mpop and fetchmail ----------------------------------------------------------------------------

POP3_MESSAGE = (
    b"From: Carol <carol@sender.example>\r\nTo: dave@example.org\r\nSubject: for POP3\r\n\r\n"
    b".A line that starts with a dot.\r\n..Two dots.\r\nCaf\xc3\xa9 8-bit text.\r\n"
)


def dave_has_mail(server: RunningServer) -> bytes:
    """Put POP3_MESSAGE in dave's mailbox (over the MX listener) once; the stored file, which
    moves from new/ to cur/ once a POP3 client has read it."""
    maildir = server.maildir(DAVE)

    def files() -> list[Path]:
        return [path for sub in ("new", "cur") for path in (maildir / sub).glob("*")]

    if not files():
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
            client.sendmail("carol@sender.example", [DAVE], POP3_MESSAGE)
    [stored] = files()
    return stored.read_bytes()


def run_mpop(setup: TLSServer, port: int, starttls: bool) -> list[bytes]:
    """mpop once, keeping the mail on the server and delivering to a fresh Maildir."""
    require("mpop")
    work = setup.server.directory / f"mpop-{time.monotonic_ns()}"
    maildir = work / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    rc = work / "mpoprc"
    rc.write_text(
        "account default\n"
        "host 127.0.0.1\n"
        f"port {port}\n"
        f"user {DAVE}\n"
        f"password {PASSWORD}\n"
        "tls on\n"
        f"tls_starttls {'on' if starttls else 'off'}\n"
        f"tls_trust_file {setup.certificate}\n"
        f"tls_host_override {HOSTNAME}\n"
        "auth user\n"
        "received_header off\n"
        "keep on\n"
        f"uidls_file {work / 'uidls'}\n"
        f"delivery maildir {maildir}\n"
    )
    rc.chmod(0o600)
    result = run(["mpop", "-C", str(rc)])
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    return [path.read_bytes() for path in (maildir / "new").iterdir()]


def test_mpop_stls_and_implicit_tls_fetch_exactly(tls_server: TLSServer) -> None:
    """mpop over STLS and over implicit TLS, verifying the certificate, logs in and delivers
    the stored message unchanged into a Maildir (with LF line ends, as local mail has)."""
    setup = tls_server
    stored = dave_has_mail(setup.server)
    for port, starttls in zip(setup.pop3_ports, (True, False), strict=True):
        assert run_mpop(setup, port, starttls) == [unix_lines(stored)]


def test_fetchmail_implicit_tls_with_certificate_check(tls_server: TLSServer) -> None:
    """fetchmail over implicit TLS with sslcertck against the server's certificate (its name
    given with sslcommonname, as the connection is to 127.0.0.1) gets the stored message
    unchanged."""
    require("fetchmail")
    setup = tls_server
    stored = dave_has_mail(setup.server)
    work = setup.server.directory / f"fetchmail-{time.monotonic_ns()}"
    out = work / "out"
    out.mkdir(parents=True)
    rc = work / ".fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll 127.0.0.1 service {setup.pop3_ports[1]} protocol pop3 uidl auth password\n"
        f'  user "{DAVE}" password "{PASSWORD}" is "nobody" here\n'
        f'  ssl sslcertck sslcertfile "{setup.certificate}" sslcommonname "{HOSTNAME}"\n'
        f'  keep mda "cat > {out}/msg-$$"\n'
    )
    rc.chmod(0o600)  # fetchmail refuses a readable rc file
    result = run(
        [
            "fetchmail",
            "-f",
            str(rc),
            "--nosyslog",
            "--invisible",  # no Received header of its own
            "--idfile",
            str(work / "ids"),
            "--pidfile",
            str(work / "pid"),
        ],
        env=dict(os.environ, HOME=str(work)),
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert [path.read_bytes() for path in out.iterdir()] == [unix_lines(stored)]


# -- failed login ----------------------------------------------------------------------------------


def test_wrong_password_is_refused_and_logged_without_it(tls_server: TLSServer) -> None:
    """A wrong password inside TLS gets 535 5.7.8; twistd.log has a "login failed" line for
    it with the login, client and mechanism, and no password (wrong or right) in any form."""
    setup = tls_server
    wrong = "wrong horse 7f3a9c"
    # From an address of its own: the failure slows down the next logins from that address.
    with submission(setup, source_address=("127.0.0.2", 0)) as client:
        # One attempt: login() would go on to try LOGIN after PLAIN fails.
        client.user, client.password = ALICE, wrong
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.auth("PLAIN", client.auth_plain)
        assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (535, b"5.7.8")
    expected = f"smtp login failed login={ALICE} client=127.0.0.2 mechanism=PLAIN"
    deadline = time.monotonic() + 10
    while expected not in (log := setup.server.log.read_text()):
        assert time.monotonic() < deadline, "no login failed line"
        time.sleep(0.05)
    assert log.count(" login failed ") == 1
    for secret in (wrong, PASSWORD):
        assert secret not in log
        assert plain_credentials(ALICE, secret) not in log
        assert base64.b64encode(secret.encode()).decode() not in log


# -- renewal ---------------------------------------------------------------------------------------


@pytest.fixture
def renewable(tmp_path: Path, tls_server: TLSServer) -> Iterator[TLSServer]:
    """A TLS server of its own (a copy of the module's certificate), free to renew it."""
    setup = start_tls_server(
        tmp_path / "server", certificates=(tls_server.certificate, tls_server.private_key)
    )
    yield setup
    setup.server.stop()


def renew(setup: TLSServer, name: str) -> bytes:
    """Write a new certificate with the CLI under temporary names beside the configured files,
    then rename them over those, as certbot would; its DER form."""
    directory = setup.certificate.parent
    certificate, private_key = directory / f".{name}.crt.new", directory / f".{name}.key.new"
    self_signed(setup.server, certificate, private_key)
    os.replace(private_key, setup.private_key)
    os.replace(certificate, setup.certificate)
    return ssl.PEM_cert_to_DER_cert(setup.certificate.read_text())


def serial(der: bytes) -> str:
    from cryptography import x509

    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


def reloads(server: RunningServer) -> list[str]:
    return [line for line in server.log.read_text().splitlines() if "reloaded (serial " in line]


def assert_served_everywhere(setup: TLSServer, expected: bytes) -> None:
    context = trusting(setup.certificate)  # the new file: verification fails on the old one
    starttls, implicit = setup.submission_ports
    assert served_certificate(starttls, context, b"SMTP") == expected
    assert served_certificate(implicit, context, None) == expected
    assert served_certificate(setup.pop3_ports[1], context, None) == expected


def test_renewed_certificate_is_served_without_restart(renewable: TLSServer) -> None:
    """A certificate renewed by renaming new files over the configured ones is presented at
    the next connection, STARTTLS and implicit TLS alike, without a restart; renewed again,
    SIGHUP reloads it at once (the reload is logged with the new serial before any
    connection) and it is served."""
    setup = renewable
    server = setup.server
    assert server.process is not None
    first = ssl.PEM_cert_to_DER_cert(setup.certificate.read_text())
    assert_served_everywhere(setup, first)

    second = renew(setup, "second")
    assert serial(second) != serial(first)
    assert_served_everywhere(setup, second)
    assert sum(f"serial {serial(second)}," in line for line in reloads(server)) == 1

    third = renew(setup, "third")
    assert serial(third) not in server.log.read_text()
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not any(f"serial {serial(third)}," in line for line in reloads(server)):
        assert time.monotonic() < deadline, "SIGHUP did not reload the certificate"
        time.sleep(0.05)
    assert_served_everywhere(setup, third)
    assert server.process.poll() is None
