"""Start the real ``twistd mailserver`` process on loopback ports, for scenario tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# The server and the admin command run from the test's own directory, so they use the
# installed package (as a user's would), not the source tree next to the tests.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
MAILSERVER = [sys.executable, "-m", "mailserver"]


# Ports for the servers under test come from below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range, 32768-60999 by default): a port the kernel handed out as free
# could otherwise be taken by some client connection's own end before the server binds it.
_PORTS = range(21000, 32000)


def free_port() -> int:
    """A loopback port nothing listens on now, outside the ephemeral range."""
    for _ in range(1000):
        port = random.choice(_PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {timeout} s")


@dataclass
class RunningServer:
    """A server directory (config, data, log) and, while started, its process."""

    directory: Path
    smtp_port: int
    settings: dict[str, dict[str, object]] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    pop3_port: int = field(default_factory=free_port)
    submission_port: int = field(default_factory=free_port)
    # Implicit TLS listeners (RFC 8314), added beside the plain ones when set: they need a
    # certificate, see use_tls().
    submissions_port: int | None = None
    pop3s_port: int | None = None

    @property
    def config(self) -> Path:
        return self.directory / "mailserver.toml"

    @property
    def data_dir(self) -> Path:
        return self.directory / "var"

    @property
    def log(self) -> Path:
        return self.directory / "twistd.log"

    def use_tls(self, certificate: Path, private_key: Path) -> None:
        """Point the [tls] section at these files (call write_config() afterwards)."""
        self.settings["tls"] = {"certificate": str(certificate), "private_key": str(private_key)}

    def write_config(self) -> None:
        sections: dict[str, dict[str, object]] = {
            "server": {"hostname": "mx.example.org", "data_dir": str(self.data_dir)},
            "smtp": {"listen": [f"tcp:{self.smtp_port}:interface=127.0.0.1"]},
            "submission": {"listen": _listeners(self.submission_port, self.submissions_port)},
            "pop3": {"listen": _listeners(self.pop3_port, self.pop3s_port)},
            # Sender checks ask DNS: only tests that run a loopback DNS server turn them on.
            "checks": {"enabled": False},
        }
        for name, values in self.settings.items():
            sections.setdefault(name, {}).update(values)
        lines = []
        for name, values in sections.items():
            lines.append(f"[{name}]")
            for key, value in values.items():
                lines.append(f"{key} = {_toml(value)}")
        self.config.write_text("\n".join(lines) + "\n")

    def admin(self, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``mailserver --config ... ARGS`` and fail loudly if it fails."""
        command = [*MAILSERVER, "--config", str(self.config), *args]
        if password is not None:
            command.append("--password-stdin")
        result = subprocess.run(
            command,
            input=password,
            capture_output=True,
            text=True,
            cwd=self.directory,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr}")
        return result

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *TWISTD,
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
            stderr=subprocess.PIPE,
        )
        wait_for_port(self.smtp_port, self.process)
        for section, ports in (
            ("pop3", (self.pop3_port, self.pop3s_port)),
            ("submission", (self.submission_port, self.submissions_port)),
        ):
            if "listen" not in self.settings.get(section, {}):
                for port in ports:
                    if port is not None:
                        wait_for_port(port, self.process)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the crash no code of ours gets to react to."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.data_dir / "mail" / domain / local

    def new_messages(self, address: str) -> list[Path]:
        new = self.maildir(address) / "new"
        return sorted(new.iterdir()) if new.is_dir() else []


def _listeners(port: int, tls_port: int | None) -> list[str]:
    listen = [f"tcp:{port}:interface=127.0.0.1"]
    if tls_port is not None:
        listen.append(f"ssl:{tls_port}:interface=127.0.0.1")
    return listen


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + "}"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
