"""Outbound delivery benchmark: this server and Postfix relaying the same load to smtp-sink.

    python bench/outbound.py throughput --msgs 2000 --size 2048 --sessions 10 --reps 3
    python bench/outbound.py queue --msgs 10000

``throughput``: a Python load generator submits MSGS messages over SESSIONS connections to
each target (ours through its submission listener with AUTH, Postfix through its smtpd, which
relays for 127.0.0.1); each target relays them to Postfix's ``smtp-sink`` on loopback. Measured
per target and rep: how long until every message was accepted, and until the target's queue is
empty again (every message handed to the sink), as messages per second; the ratio to Postfix
is taken within each rep. Targets alternate rep by rep.

``queue``: our server with its route pointing at a closed port, MSGS messages queued through
submission, then a restart: the time until the runner has loaded the queue (its log line) and
the server's resident memory then, against the same server with an empty queue.

Needs Postfix installed (``postfix``, ``postconf``, ``smtp-sink``; none of the system's
configuration or daemons is used) and root for Postfix's private instance. Everything listens
on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"
SINK_DOMAIN = "sink.test"
USER = "bench@bench.test"
PASSWORD = "bench password"
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":" + SBIN)
    if found is None:
        sys.exit(f"outbound.py: {name} not found (apt-get install postfix)")
    return found


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` held, polling; exits when ``timeout`` passes first."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            sys.exit(f"outbound.py: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    def open_() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(open_, timeout, f"port {port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def message(size: int, number: int) -> bytes:
    header = f"From: {USER}\r\nTo: u@{SINK_DOMAIN}\r\nSubject: bench {number}\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(header)) // len(line))
    return header + body


def submit(port: int, count: int, size: int, sessions: int, login: bool) -> float:
    """Send ``count`` messages over ``sessions`` connections at once; seconds taken."""
    errors: list[BaseException] = []
    share = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]

    def session(index: int, messages: int) -> None:
        try:
            with smtplib.SMTP(HOST, port, timeout=120) as client:
                client.ehlo("bench.local")
                if login:
                    client.login(USER, PASSWORD)
                for number in range(messages):
                    client.sendmail(USER, [f"u{index}@{SINK_DOMAIN}"], message(size, number))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=session, args=(i, n)) for i, n in enumerate(share) if n]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    if errors:
        sys.exit(f"outbound.py: submitting failed: {errors[0]!r}")
    return time.monotonic() - start


class Sink:
    """Postfix's smtp-sink on a loopback port: accepts and discards."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [tool("smtp-sink"), "-c", "-u", "nobody", f"{HOST}:{self.port}", "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        stop(self.process)


class OurServer:
    """This server, routing the sink's domain to the sink."""

    name = "mailserver"
    login = True

    def __init__(self, directory: Path, route_port: int, retry: str = "1s") -> None:
        self.directory = directory
        self.smtp_port, self.port, self.pop3_port = free_port(), free_port(), free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "mailserver.toml"
        self.config.write_text(
            f'[server]\nhostname = "bench.local"\ndata_dir = "var"\n'
            f'[smtp]\nlisten = ["tcp:{self.smtp_port}:interface={HOST}"]\n'
            "max_connections_per_client = 200\n"
            f'[submission]\nlisten = ["tcp:{self.port}:interface={HOST}"]\n'
            f"[pop3]\nlisten = []\n"
            f'[outbound]\nroutes = {{ "{SINK_DOMAIN}" = "{HOST}:{route_port}" }}\n'
            f'tls = "off"\nretry_initial = "{retry}"\nretry_max = "{retry}"\n'
        )
        self._admin("user", "add", "--password-stdin", USER, input=PASSWORD)
        self.process: subprocess.Popen[bytes] | None = None

    def _admin(self, *args: str, input: str | None = None) -> None:
        subprocess.run(
            [sys.executable, "-m", "mailserver", "--config", str(self.config), *args],
            input=input.encode() if input else None,
            check=True,
            capture_output=True,
        )

    @property
    def log(self) -> Path:
        return self.directory / "twistd.log"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                "--logfile",
                str(self.log),
                "mailserver",
                "--config",
                str(self.config),
            ],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def queued(self) -> int:
        queue = self.directory / "var" / "queue"
        if not queue.is_dir():
            return 0
        return sum(1 for name in os.listdir(queue) if name.endswith(".json"))

    def rss_kib(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


def postconf(name: str) -> str:
    """A Postfix default setting (``postconf -d -h NAME``)."""
    return subprocess.run(
        [tool("postconf"), "-d", "-h", name], capture_output=True, text=True, check=True
    ).stdout.strip()


class PostfixServer:
    """A private Postfix instance relaying the sink's domain to the sink."""

    name = "postfix"
    login = False

    def __init__(self, directory: Path, route_port: int) -> None:
        self.directory = directory
        self.port = free_port()
        conf, queue, data = directory / "conf", directory / "queue", directory / "data"
        for path in (conf, queue, data, directory / "log"):
            path.mkdir(parents=True, exist_ok=True)
        os.chown(data, pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid)

        self.conf = conf
        (conf / "main.cf").write_text(
            f"compatibility_level = 3.6\nqueue_directory = {queue}\ndata_directory = {data}\n"
            f"meta_directory = {postconf('meta_directory')}\n"
            f"maillog_file_prefixes = {directory}/log\n"
            f"maillog_file = {directory}/log/postfix.log\nmail_owner = postfix\n"
            "myhostname = bench.local\nmydomain = bench.local\nmyorigin = bench.local\n"
            f"mydestination =\ninet_interfaces = {HOST}\ninet_protocols = ipv4\n"
            "mynetworks = 127.0.0.0/8\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject\n"
            "alias_maps =\nalias_database =\nlocal_recipient_maps =\nbiff = no\n"
            "smtputf8_enable = no\nappend_dot_mydomain = no\n"
            f"transport_maps = inline:{{ {SINK_DOMAIN}=smtp:[{HOST}]:{route_port} }}\n"
            "smtp_tls_security_level = none\nsmtpd_tls_security_level = none\n"
            "default_destination_concurrency_limit = 20\n"
        )
        (conf / "master.cf").write_text(
            f"{HOST}:{self.port} inet n - n - - smtpd\n"
            "pickup unix n - n 60 1 pickup\ncleanup unix n - n - 0 cleanup\n"
            "qmgr unix n - n 300 1 qmgr\nrewrite unix - - n - - trivial-rewrite\n"
            "bounce unix - - n - 0 bounce\ndefer unix - - n - 0 bounce\n"
            "trace unix - - n - 0 bounce\nverify unix - - n - 1 verify\n"
            "flush unix n - n 1000? 0 flush\nproxymap unix - - n - - proxymap\n"
            "smtp unix - - n - - smtp\nrelay unix - - n - - smtp\n"
            "showq unix n - n - - showq\nerror unix - - n - - error\n"
            "retry unix - - n - - error\ndiscard unix - - n - - discard\n"
            "anvil unix - - n - 1 anvil\nscache unix - - n - 1 scache\n"
            "postlog unix-dgram n - n - 1 postlogd\n"
        )
        # The first check creates the queue's directories (and may say so by failing).
        for check in (False, True):
            subprocess.run(
                [tool("postfix"), "-c", str(conf), "check"], check=check, capture_output=True
            )
        self.queue = queue
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        master = Path(postconf("daemon_directory")) / "master"
        self.process = subprocess.Popen(
            [str(master), "-c", str(self.conf), "-d"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def queued(self) -> int:
        total = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, names in os.walk(self.queue / sub):
                total += len(names)
        return total


def throughput(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="outbound-bench-"))
    work.chmod(0o755)  # Postfix's processes run as the postfix user and must reach the queue
    sink = Sink()
    targets = [
        OurServer(work / "mailserver", sink.port),
        PostfixServer(work / "postfix", sink.port),
    ]
    results: dict[str, list[tuple[float, float]]] = {target.name: [] for target in targets}
    try:
        for target in targets:
            target.start()
        for rep in range(args.reps):
            for target in targets:
                accept = submit(target.port, args.msgs, args.size, args.sessions, target.login)
                start = time.monotonic() - accept

                def empty(queued: Callable[[], int] = target.queued) -> bool:
                    return queued() == 0

                wait_until(empty, 600, f"{target.name}'s queue to empty")
                total = time.monotonic() - start
                results[target.name].append((args.msgs / accept, args.msgs / total))
                print(
                    f"rep {rep + 1} {target.name}: accepted {args.msgs / accept:.0f} msg/s,"
                    f" relayed {args.msgs / total:.0f} msg/s",
                    flush=True,
                )
    finally:
        for target in targets:
            target.stop()
        sink.stop()
    ours, peer = results["mailserver"], results["postfix"]
    for index, label in ((0, "accepted"), (1, "relayed end to end")):
        ratios = [o[index] / p[index] for o, p in zip(ours, peer, strict=True)]
        print(
            f"{label}: mailserver {statistics.median(o[index] for o in ours):.0f} msg/s,"
            f" postfix {statistics.median(p[index] for p in peer):.0f} msg/s,"
            f" ratio {statistics.median(ratios):.2f}x (per rep: "
            + ", ".join(f"{ratio:.2f}" for ratio in ratios)
            + ")"
        )
    shutil.rmtree(work, ignore_errors=True)


def queue(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="outbound-queue-"))
    # Nobody listens on the route's port, and the first retry is an hour away: the queue
    # stays as it is while it is measured.
    server = OurServer(work / "mailserver", free_port(), retry="1h")
    try:
        server.start()
        idle = server.rss_kib()
        accept = submit(server.port, args.msgs, args.size, args.sessions, login=True)
        wait_until(lambda: server.queued() == args.msgs, 600, "every message to be queued")
        print(f"queued {args.msgs} at {args.msgs / accept:.0f} msg/s", flush=True)
        server.stop()
        start = time.monotonic()
        server.start()
        loaded = f"outbound queue: {args.msgs} messages"
        wait_until(lambda: loaded in server.log.read_text(errors="replace"), 300, "the queue")
        restart = time.monotonic() - start
        time.sleep(2)
        rss = server.rss_kib()
        print(
            f"{args.msgs} queued: restart to loaded queue {restart:.2f} s;"
            f" RSS {rss / 1024:.1f} MiB with the queue vs {idle / 1024:.1f} MiB empty"
            f" ({(rss - idle) / args.msgs:.2f} KiB per queued message)"
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=("throughput", "queue"))
    parser.add_argument("--msgs", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    {"throughput": throughput, "queue": queue}[args.workload](args)


if __name__ == "__main__":
    main()
