"""POP3 scenarios against the real ``twistd mailserver`` process with real clients:
mail goes in with swaks over SMTP and comes out with poplib, mpop and fetchmail."""

from __future__ import annotations

import hashlib
import os
import poplib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import PASSWORD
from tests.integration.server import RunningServer

pytestmark = pytest.mark.integration

ALICE = "alice@example.org"
MESSAGES = [
    b"From: Carol <carol@sender.example>\r\nTo: alice@example.org\r\nSubject: one\r\n\r\n"
    b"Plain first message.\r\n",
    b"From: Carol <carol@sender.example>\r\nTo: alice@example.org\r\nSubject: dots\r\n\r\n"
    b".A line that starts with a dot.\r\n..Two dots.\r\n.\r\nA lone dot was above.\r\n"
    b"Caf\xc3\xa9 8-bit text.\r\n",
    b"From: Carol <carol@sender.example>\r\nTo: alice@example.org\r\nSubject: long\r\n\r\n"
    + b"".join(b"%05d " % number + b"x" * 90 + b"\r\n" for number in range(2000)),
]


def require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (.ci/run installs it)")


def send(server: RunningServer, data: bytes, to: str = ALICE) -> None:
    """Deliver ``data`` through our SMTP listener with swaks."""
    require("swaks")
    message = server.directory / "outgoing.eml"
    message.write_bytes(data)
    result = subprocess.run(
        [
            "swaks",
            "--server",
            "127.0.0.1",
            "--port",
            str(server.smtp_port),
            "--helo",
            "client.sender.example",
            "--from",
            "carol@sender.example",
            "--to",
            to,
            "--data",
            f"@{message}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def as_sent(data: bytes) -> bytes:
    """swaks ends the data with a CRLF of its own before the "."."""
    return data + b"\r\n"


def stored(server: RunningServer, address: str = ALICE) -> dict[str, bytes]:
    """Every message file of a mailbox, new/ and cur/, by unique name."""
    maildir = server.maildir(address)
    return {
        path.name.partition(":")[0]: path.read_bytes()
        for sub in ("new", "cur")
        if (maildir / sub).is_dir()
        for path in (maildir / sub).iterdir()
    }


def login(server: RunningServer, user: str = ALICE) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    client.user(user)
    client.pass_(PASSWORD)
    return client


def login_once_released(server: RunningServer) -> poplib.POP3:
    """Log in as soon as the server has noticed that the previous session's client left."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return login(server)
        except poplib.error_proto as error:
            if not error.args[0].startswith(b"-ERR [IN-USE]") or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def retrieve(client: poplib.POP3, number: int) -> tuple[bytes, int]:
    """RETR through poplib: the message as it un-stuffs it, and the octets it counted."""
    _, lines, octets = client.retr(number)
    return b"".join(line + b"\r\n" for line in lines), octets


def uidls(client: poplib.POP3) -> list[str]:
    return [line.decode().split()[1] for line in client.uidl()[1]]


def fill(server: RunningServer) -> dict[str, bytes]:
    for data in MESSAGES:
        send(server, data)
    files = stored(server)
    assert len(files) == len(MESSAGES)
    return files


def test_poplib_reads_back_exactly_what_was_stored(server: RunningServer) -> None:
    """swaks → poplib: LIST sizes are the stored sizes, RETR gives the stored bytes (dot
    lines, 8-bit, 200 KB), UIDL names the files; keep, then delete."""
    files = fill(server)
    client = login(server)
    assert set(client.capa()) == {
        "TOP",
        "UIDL",
        "USER",
        "SASL",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "IMPLEMENTATION",
    }
    uids = uidls(client)
    assert sorted(uids) == sorted(files)
    sizes = [int(line.split()[1]) for line in client.list()[1]]
    assert client.stat() == (3, sum(sizes))
    for number, uid in enumerate(uids, start=1):
        data, octets = retrieve(client, number)
        assert data == files[uid]
        assert octets == sizes[number - 1] == len(files[uid])
        assert data.endswith(as_sent(MESSAGES[number - 1]))
    client.quit()
    # Kept, and marked as read the Maildir way.
    cur = server.maildir(ALICE) / "cur"
    assert sorted(path.name for path in cur.iterdir()) == sorted(f"{uid}:2,S" for uid in uids)
    assert stored(server) == files
    client = login(server)
    assert uidls(client) == uids
    for number in range(1, 4):
        client.dele(number)
    client.quit()
    assert stored(server) == {}


def write_mpoprc(server: RunningServer, out: Path, keep: bool, auth: str) -> Path:
    rc = server.directory / "mpoprc"
    rc.write_text(
        "defaults\n"
        "account default\n"
        "host 127.0.0.1\n"
        f"port {server.pop3_port}\n"
        f"user {ALICE}\n"
        f"password {PASSWORD}\n"
        "tls off\n"  # plaintext is allowed on loopback by default
        f"auth {auth}\n"
        "received_header off\n"
        f"keep {'on' if keep else 'off'}\n"
        f"uidls_file {server.directory / 'mpop-uidls'}\n"
        f'delivery mda "cat > {out}/$$.eml"\n'
    )
    rc.chmod(0o600)
    return rc


def run_mpop(server: RunningServer, keep: bool, auth: str) -> list[bytes]:
    """Run mpop once; the messages its MDA wrote during this run."""
    require("mpop")
    out = server.directory / f"mpop-out-{time.monotonic_ns()}"
    out.mkdir()
    rc = write_mpoprc(server, out, keep, auth)
    result = subprocess.run(["mpop", "-C", str(rc)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return sorted(path.read_bytes() for path in out.iterdir())


def unix_lines(data: bytes) -> bytes:
    """mpop and fetchmail hand mail to the MDA with LF line endings, as local mail has."""
    return data.replace(b"\r\n", b"\n")


def test_mpop_keep_then_delete(server: RunningServer) -> None:
    """mpop (USER/PASS, pipelined) keeps mail on the server and gets it exactly; a later run
    without keep (SASL PLAIN) fetches only the new message and deletes them all."""
    files = fill(server)
    fetched = run_mpop(server, keep=True, auth="user")
    assert fetched == sorted(unix_lines(data) for data in files.values())
    assert stored(server) == files
    uid_file = (server.directory / "mpop-uidls").read_text()
    assert all(uid in uid_file for uid in files)
    late = b"Subject: late\r\n\r\n.\r\n..\r\nlate body\r\n"
    send(server, late)
    [new_uid] = set(stored(server)) - set(files)
    new_file = stored(server)[new_uid]
    assert run_mpop(server, keep=False, auth="plain") == [unix_lines(new_file)]
    assert stored(server) == {}


def run_fetchmail(server: RunningServer, keep: bool) -> list[bytes]:
    """Run fetchmail once with an MDA; the messages it wrote."""
    require("fetchmail")
    home = server.directory / "fetchmail-home"
    home.mkdir(exist_ok=True)
    out = server.directory / f"fetchmail-out-{time.monotonic_ns()}"
    out.mkdir()
    rc = home / ".fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll 127.0.0.1 service {server.pop3_port} protocol pop3 uidl auth password\n"
        f'  user "{ALICE}" password "{PASSWORD}" is "nobody" here\n'
        f"  sslproto '' {'keep' if keep else 'nokeep'} mda \"cat > {out}/msg-$$\"\n"
    )
    rc.chmod(0o600)  # fetchmail refuses a readable rc file
    result = subprocess.run(
        [
            "fetchmail",
            "-f",
            str(rc),
            "--nosyslog",
            "--invisible",  # no Received header of its own
            "--idfile",
            str(home / "ids"),
            "--pidfile",
            str(home / "pid"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, HOME=str(home)),
    )
    # Exit 1 means "no mail", which a test that expects mail treats as a failure below.
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return sorted(path.read_bytes() for path in out.iterdir())


def test_fetchmail_keep_then_delete(server: RunningServer) -> None:
    """fetchmail keeps mail on the server and gets it exactly (it uses TOP for that); a
    second run without keep takes only the new message and deletes everything."""
    files = fill(server)
    assert run_fetchmail(server, keep=True) == sorted(unix_lines(d) for d in files.values())
    assert stored(server) == files
    send(server, b"Subject: late\r\n\r\nlate body\r\n")
    [new_uid] = set(stored(server)) - set(files)
    new_file = stored(server)[new_uid]
    assert run_fetchmail(server, keep=False) == [unix_lines(new_file)]
    assert set(stored(server)) <= set(files)  # the new one is gone
    assert new_uid not in stored(server)


def test_uidl_survives_restart(server: RunningServer) -> None:
    """UIDL is the same before and after a restart, and after RETR moved files to cur/."""
    fill(server)
    client = login(server)
    before = uidls(client)
    retrieve(client, 2)
    client.quit()
    server.stop()
    server.start()
    client = login(server)
    assert uidls(client) == before
    client.quit()


def test_dele_then_dropped_connection_keeps_the_message(server: RunningServer) -> None:
    """DELE without QUIT changes nothing: not on a dropped connection, not on a crash."""
    files = fill(server)
    client = login(server)
    client.dele(1)
    client.close()  # gone without QUIT
    client = login_once_released(server)
    assert client.stat()[0] == 3
    client.dele(2)
    server.kill()  # SIGKILL with a DELE pending
    server.start()
    client = login(server)  # the kernel dropped the flock with the process
    assert client.stat()[0] == 3
    client.quit()
    assert stored(server) == files


def test_second_login_is_in_use(server: RunningServer) -> None:
    """Two concurrent logins to one mailbox: the second gets -ERR [IN-USE]."""
    first = login(server)
    with pytest.raises(poplib.error_proto) as refused:
        login(server)
    assert refused.value.args[0].startswith(b"-ERR [IN-USE] ")
    first.quit()
    login(server).quit()


def test_lock_holds_against_a_second_server_process(server_factory, server) -> None:  # type: ignore[no-untyped-def]
    """Two server processes on one data directory: the lock file keeps them apart."""
    other = server_factory({"server": {"data_dir": str(server.data_dir)}})
    other.start()
    first = login(server)
    with pytest.raises(poplib.error_proto) as refused:
        login(other)
    assert refused.value.args[0].startswith(b"-ERR [IN-USE] ")
    first.quit()
    login(other).quit()


def test_mail_arriving_during_a_session(server: RunningServer) -> None:
    """A message delivered mid-session is not in that session's listing, and its QUIT
    (after deleting everything it saw) leaves the new message alone."""
    send(server, MESSAGES[0])
    client = login(server)
    assert client.stat()[0] == 1
    send(server, MESSAGES[1])
    assert client.stat()[0] == 1
    assert len(client.list()[1]) == 1
    client.dele(1)
    with pytest.raises(poplib.error_proto):
        client.retr(2)
    client.quit()
    [left] = stored(server).values()
    assert left.endswith(as_sent(MESSAGES[1]))


def test_wrong_password_and_unknown_user_look_alike(server: RunningServer) -> None:
    """Unknown user and wrong password both get -ERR [AUTH] Authentication failed."""
    answers = []
    for user, password in ((ALICE, "wrong password"), ("nobody@example.org", PASSWORD)):
        client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
        client.user(user)
        with pytest.raises(poplib.error_proto) as refused:
            client.pass_(password)
        answers.append(refused.value.args[0])
        client.close()
    assert answers[0] == answers[1] == b"-ERR [AUTH] Authentication failed"


def test_idle_session_is_logged_out(server_factory) -> None:  # type: ignore[no-untyped-def]
    """The idle timeout is configurable; when it passes the server says -ERR and closes."""
    server = server_factory({"pop3": {"idle_timeout": 1}})
    server.admin("user", "add", ALICE, password=PASSWORD)
    server.start()
    with socket.create_connection(("127.0.0.1", server.pop3_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        started = time.monotonic()
        assert reader.readline() == b"-ERR Autologout: idle for too long\r\n"
        assert reader.readline() == b""
        assert time.monotonic() - started < 10


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_50_mib_message_to_a_slow_reader_with_flat_memory(server: RunningServer) -> None:
    """A 50 MiB message read slowly, then fast: the server's memory stays flat and the
    client un-stuffs exactly the stored bytes (dot lines throughout)."""
    line = b"." + b"y" * 98 + b"\r\n"  # every line needs stuffing
    data = b"Subject: big\r\n\r\n" + line * (50 * 2**20 // len(line))
    new = server.maildir(ALICE) / "new"
    (new / f"1700000000.M1P1Q1.big,S={len(data)}").write_bytes(data)  # as delivery leaves it
    assert server.process is not None
    pid = server.process.pid
    with socket.create_connection(("127.0.0.1", server.pop3_port), timeout=30) as sock:
        reader = sock.makefile("rb", buffering=0)
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
        assert reader.readline().startswith(b"+OK")
        assert reader.readline().startswith(b"+OK Logged in")
        # Measured from here: the password check (argon2 uses tens of MiB) is over.
        baseline = peak = rss_kib(pid)
        sock.sendall(b"RETR 1\r\n")
        digest = hashlib.sha256()
        status = None
        pending = b""
        slow_until = time.monotonic() + 3
        done = False
        while not done:
            slow = time.monotonic() < slow_until
            chunk = sock.recv(4096 if slow else 1 << 20)
            assert chunk, "connection closed early"
            if slow:
                time.sleep(0.01)
                peak = max(peak, rss_kib(pid))
            lines = (pending + chunk).split(b"\r\n")
            pending = lines.pop()
            for item in lines:
                if status is None:
                    status = item
                elif item == b".":
                    done = True
                    break
                else:
                    digest.update((item[1:] if item.startswith(b".") else item) + b"\r\n")
        peak = max(peak, rss_kib(pid))
    assert status == f"+OK {len(data)} octets".encode()
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert peak - baseline < 16 * 1024, f"server grew by {peak - baseline} KiB"


def test_pipelined_retrs_to_a_client_that_does_not_read(server: RunningServer) -> None:
    """3,000 RETRs of a 20 KiB message pipelined by a client that reads nothing for a while
    (60 MiB of replies): the server takes commands only as the replies drain, so its memory
    stays flat; then every reply arrives whole and in order."""
    data = b"Subject: small\r\n\r\n" + (b"." + b"x" * 97 + b"\r\n") * 200
    new = server.maildir(ALICE) / "new"
    (new / f"1700000000.M1P1Q1.small,S={len(data)}").write_bytes(data)
    assert server.process is not None
    pid = server.process.pid
    count = 3000
    reply = f"+OK {len(data)} octets\r\n".encode() + data.replace(b"\n.", b"\n..") + b".\r\n"
    with socket.create_connection(("127.0.0.1", server.pop3_port), timeout=30) as sock:
        reader = sock.makefile("rb", buffering=0)
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
        assert reader.readline().startswith(b"+OK")
        assert reader.readline().startswith(b"+OK Logged in")
        baseline = rss_kib(pid)
        sock.sendall(b"RETR 1\r\n" * count)
        time.sleep(1)  # the server works through whatever it is allowed to
        grown = rss_kib(pid) - baseline
        received = bytearray()
        while len(received) < count * len(reply):
            chunk = sock.recv(1 << 20)
            assert chunk, "connection closed early"
            received += chunk
    assert grown < 16 * 1024, f"server grew by {grown} KiB"
    assert bytes(received) == reply * count
