"""Loading the server configuration from one TOML file.

Every setting is a field of a frozen dataclass below; its default and its validator sit together
in that field, so the defaults live in exactly one place and ``conf/mailserver.toml`` documents
them. Loading collects every problem in the file before giving up, so a broken configuration is
fixed in one round trip instead of one error at a time. Each problem is one line of the form
``FILE: KEY: reason``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

from twisted.internet.endpoints import serverFromString

from mailserver.address import AddressError, normalize
from mailserver.dkimkeys import KeyFileError, load_key
from mailserver.listeners import ListenerError, split_tls_listener
from mailserver.tcp import is_ip_address
from mailserver.tls import TLSFileError, TLSFiles, load_context

__all__ = [
    "EMBEDDED_DEFAULT",
    "AccountsConfig",
    "ChecksConfig",
    "Config",
    "ConfigError",
    "DKIMConfig",
    "DKIMKey",
    "DNSConfig",
    "HostPort",
    "OutboundConfig",
    "POP3Config",
    "SMTPConfig",
    "ServerConfig",
    "SubmissionConfig",
    "TLSConfig",
    "load_config",
    "parse_config",
]

EMBEDDED_DEFAULT = "<embedded default>"

# What ``load_config(None)`` loads: a server that only listens on loopback, safe to start anywhere.
_EMBEDDED_TEXT = """\
[server]
hostname = "localhost"
"""

_T = TypeVar("_T")


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one ``FILE: KEY: reason`` line each."""

    problems: tuple[str, ...]

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class _Invalid(Exception):
    """Raised by a validator: the value of one key is unusable, for one or more reasons."""

    def __init__(self, *reasons: str) -> None:
        super().__init__(*reasons)
        self.reasons = reasons


# --- Validators: each takes the raw TOML value and returns the typed value, or raises _Invalid.

Validator = Callable[[object], Any]


def _quote(text: str) -> str:
    """A string in double quotes with escapes, as TOML writes it."""
    return json.dumps(text, ensure_ascii=False)


def _show(value: object) -> str:
    """Render a TOML value the way it would be written in the file, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = _quote(value)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, list):
        text = "[" + ", ".join(_show(item) for item in value) + "]"
        return text if len(text) <= 60 else text[:56] + "...]"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def _expected(what: str, value: object) -> _Invalid:
    return _Invalid(f"expected {what}, got {_show(value)}")


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ``(did you mean "x"?)`` suffix when ``word`` looks like a typo of a candidate."""
    import difflib  # only needed to explain a mistake

    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{matches[0]}"?)' if matches else ""


def _is_int(value: object) -> TypeGuard[int]:
    # TOML booleans are Python bools, which are ints: ``true`` must not pass as 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _int_between(low: int, high: int) -> Validator:
    def check(value: object) -> int:
        if not _is_int(value) or not low <= value <= high:
            raise _expected(f"an integer from {low} to {high}", value)
        return value

    return check


def _positive_int(value: object) -> int:
    if not _is_int(value) or value <= 0:
        raise _expected("a positive integer", value)
    return value


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.ASCII)


def _duration(value: object) -> float:
    """Seconds as a number, or a string with a unit ("90s", "5m", "2h", "1d"); always > 0."""
    if _is_int(value) or (isinstance(value, float) and math.isfinite(value)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.fullmatch(value)):
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    else:
        raise _expected('a duration: seconds, or a string like "90s", "5m", "2h", "1d"', value)
    if seconds <= 0:
        raise _expected("a duration greater than zero", value)
    return seconds


# K/M/G and KiB/MiB/GiB are binary (what people mean for message sizes); KB/MB/GB are decimal.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", re.ASCII)


def _size(value: object) -> int:
    """Bytes as an integer, or a string with a unit ("50 MiB", "512KiB", "10M"); always > 0."""
    if _is_int(value):
        size = value
    elif (
        isinstance(value, str)
        and (match := _SIZE_RE.fullmatch(value))
        and match[2].lower() in _SIZE_UNITS
    ):
        # round(): a float product such as 4.35 * 10**6 may fall a hair short of the integer.
        size = round(float(match[1]) * _SIZE_UNITS[match[2].lower()])
    else:
        raise _expected('a size: bytes, or a string like "50 MiB", "512KiB", "10M"', value)
    if size <= 0:
        raise _expected("a size greater than zero", value)
    return size


def _one_of(*choices: str) -> Validator:
    def check(value: object) -> str:
        if value not in choices:
            listed = ", ".join(f'"{choice}"' for choice in choices)
            hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
            raise _Invalid(f"expected one of {listed}, got {_show(value)}{hint}")
        return str(value)

    return check


_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)


def _hostname(value: object) -> str:
    """A domain name in ASCII (A-labels for IDNs); stored lowercased, as DNS compares names."""
    what = "a domain name (letters, digits, hyphens and dots, no trailing dot)"
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 253
        or not all(_LABEL_RE.fullmatch(label) for label in value.split("."))
    ):
        raise _expected(what, value)
    return value.lower()


def _path(value: object) -> Path:
    # Relative paths are resolved against the file's directory later, in _resolve_paths.
    if not isinstance(value, str) or not value:
        raise _expected("a path", value)
    return Path(value)


def _optional_path(value: object) -> Path | None:
    if value == "":
        return None
    try:
        return _path(value)
    except _Invalid:
        raise _expected('a path, or ""', value) from None


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _expected("true or false", value)
    return value


def _optional_address(value: object) -> str:
    what = 'an address like "postmaster@example.org", or ""'
    if not isinstance(value, str):
        raise _expected(what, value)
    if value == "":
        return ""
    try:
        return normalize(value)
    except AddressError as error:
        raise _expected(f"{what} ({error})", value) from error


@dataclass(frozen=True)
class HostPort:
    host: str  # a host name (lowercase) or an IP address literal
    port: int


def _host_port(value: object) -> HostPort:
    """``"host"``, ``"host:port"``, ``"192.0.2.1:25"`` or ``"[2001:db8::1]:25"`` (port 25 by
    default)."""
    what = 'a host and port like "mail.example.net:587" or "[2001:db8::1]:25"'
    if not isinstance(value, str) or not value:
        raise _expected(what, value)
    host, port = value, 25
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _expected(what, value)
        port_text = rest[1:]
    else:
        host, _, port_text = value.partition(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise _expected(what, value)
        port = int(port_text)
    try:
        return HostPort(str(ipaddress.ip_address(host)), port)
    except ValueError:
        pass
    try:
        return HostPort(_hostname(host), port)
    except _Invalid:
        raise _expected(what, value) from None


def _optional_host_port(value: object) -> HostPort | None:
    return None if value == "" else _host_port(value)


def _routes(value: object) -> dict[str, HostPort]:
    """A table of domain = "host:port"."""
    if not isinstance(value, dict):
        raise _expected('a table like { "example.net" = "mx.example.net:25" }', value)
    routes = {}
    reasons = []
    for domain, target in value.items():
        try:
            routes[_hostname(domain)] = _host_port(target)
        except _Invalid as invalid:
            reasons += [f"{_quote(domain)}: {reason}" for reason in invalid.reasons]
    if reasons:
        raise _Invalid(*reasons)
    return routes


def _resolvers(value: object) -> tuple[HostPort, ...]:
    """DNS servers: IP addresses, with a port as in "127.0.0.1:5353" or "[::1]:5353" (53 by
    default); an empty list means the system's."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise _expected('a DNS server like "127.0.0.1:53", or a list of them', value)
    servers = []
    for item in items:
        if isinstance(item, str) and is_ip_address(item):
            servers.append(HostPort(str(ipaddress.ip_address(item)), 53))
            continue
        server = _host_port(item)
        if not is_ip_address(server.host):
            raise _expected("a DNS server's IP address, with its port if not 53", item)
        servers.append(server)
    return tuple(servers)


def _domains(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _expected('a list of domains like ["bank.example"]', value)
    reasons: list[str] = []
    domains: list[str] = []
    for item in value:
        try:
            domains.append(_hostname(item))
        except _Invalid as invalid:
            reasons += invalid.reasons
    if reasons:
        raise _Invalid(*reasons)
    return tuple(domains)


def _recipient_delimiter(value: object) -> str:
    if not isinstance(value, str) or not (value == "" or (len(value) == 1 and value in "+-_=.")):
        raise _expected('"" (no subaddressing) or one character of "+-_=."', value)
    return value


# --- Listeners: Twisted server endpoint strings, checked by parsing them as Twisted will.
# An ssl: listener is ours (mailserver.listeners): a tcp: port whose connections start with TLS.

_ENDPOINT_KINDS = ("tcp", "tcp6", "unix", "ssl")
# The options serverFromString accepts for each kind, for "did you mean" on a typo.
_ENDPOINT_OPTIONS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "interface", "backlog"),
    "unix": ("address", "mode", "backlog", "lockfile"),
}


def _explain_parse_error(error: Exception, kind: str) -> str:
    """Turn what Twisted's endpoint parser raised into words about the endpoint string."""
    message = str(error)
    if match := re.search(r"unexpected keyword argument '(\w+)'", message):
        option = match[1]
        hint = _did_you_mean(option, _ENDPOINT_OPTIONS[kind])
        return f'unknown option "{option}" for {kind} endpoints{hint}'
    if match := re.search(r"missing \d+ required positional argument: '(\w+)'", message):
        return f"missing {match[1]}"
    if match := re.search(r"invalid literal for int\(\) with base (\d+): '(.*)'", message):
        number = "an octal number" if match[1] == "8" else "a number"
        return f'expected {number}, got "{match[2]}"'
    if "positional arguments but" in message:
        return "too many fields; write options as name=value"
    return f"cannot parse it: {message}"


def _endpoint_problem(description: str) -> str | None:
    """Why ``description`` is not a usable listener, or None if it is."""
    kind = description.split(":", 1)[0]
    if kind not in _ENDPOINT_KINDS:
        return f'unknown endpoint type "{kind}"; expected tcp, tcp6, unix or ssl'
    if kind == "ssl":
        try:
            description, files = split_tls_listener(description)
        except ListenerError as error:
            return str(error)
        if files is not None:
            try:
                load_context(files)
            except TLSFileError as error:
                return str(error)
        kind = "tcp"
    try:
        # The reactor is only stored by the endpoint, never used: parsing binds nothing.
        endpoint = serverFromString(object(), description)
    except Exception as error:
        return _explain_parse_error(error, kind)
    # Twisted defers these checks to bind time; the attributes are private but long-standing.
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        return f"port {port} is out of range 0-65535"
    interface = getattr(endpoint, "_interface", "")
    if interface:
        try:
            address = ipaddress.ip_address(interface)
        except ValueError:
            return f'interface "{interface}" is not an IP address'
        if kind == "tcp6" and address.version != 6:
            return f'interface "{interface}" is not an IPv6 address'
    if kind == "unix" and not getattr(endpoint, "_address", "x"):
        return 'missing the socket path, as in "unix:/run/mailserver/smtp.sock"'
    return None


def _listen(value: object) -> tuple[str, ...]:
    """One endpoint string or a list of them; an empty list turns the service off."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise _expected('an endpoint string like "tcp:25" or a list of them', value)
    reasons = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            reasons.append(f'expected endpoint strings like "tcp:25", got {_show(item)}')
        elif item in seen:
            reasons.append(f"{_quote(item)}: listed more than once")
        else:
            seen.add(item)
            if problem := _endpoint_problem(item):
                reasons.append(f"{_quote(item)}: {problem}")
    if reasons:
        raise _Invalid(*reasons)
    return tuple(items)


# --- The configuration: each field carries its default and its validator.


def _setting(default: Any, check: Validator) -> Any:
    return field(default=default, metadata={"check": check})


def _default_hostname() -> str:
    return socket.getfqdn().lower()


@dataclass(frozen=True)
class ServerConfig:
    """Settings shared by every service."""

    hostname: str = field(default_factory=_default_hostname, metadata={"check": _hostname})
    data_dir: Path = _setting(Path("var"), _path)  # noqa: RUF009 (a Path is immutable)
    worker_threads: int = _setting(32, _int_between(1, 512))


@dataclass(frozen=True)
class SMTPConfig:
    """The SMTP listener that receives mail."""

    listen: tuple[str, ...] = _setting(("tcp:2525:interface=127.0.0.1",), _listen)
    max_message_size: int = _setting(50 * 2**20, _size)
    # RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients per message.
    max_recipients: int = _setting(100, _positive_int)
    # RFC 5321 §6.3: a simple loop check counts Received: headers.
    max_received_headers: int = _setting(50, _positive_int)
    # RFC 5321 §4.5.3.2.7: the server timeout should be at least 5 minutes.
    command_timeout: float = _setting(300.0, _duration)
    data_timeout: float = _setting(300.0, _duration)
    max_connections: int = _setting(1000, _positive_int)
    max_connections_per_client: int = _setting(20, _positive_int)
    # Processes accepting SMTP connections (the twistd process and processes - 1 workers).
    processes: int = _setting(1, _int_between(1, 64))
    max_errors: int = _setting(10, _positive_int)
    # Also take submissions here: offer AUTH, and let authenticated users send anywhere.
    accept_submission: bool = _setting(False, _boolean)


@dataclass(frozen=True)
class POP3Config:
    """The POP3 listener that lets users collect their mail."""

    listen: tuple[str, ...] = _setting(("tcp:1110:interface=127.0.0.1",), _listen)
    # RFC 1939 §3: the autologout timer must be at least 10 minutes (shorter is allowed for tests).
    idle_timeout: float = _setting(600.0, _duration)
    max_connections: int = _setting(1000, _positive_int)
    max_connections_per_client: int = _setting(10, _positive_int)
    plaintext_auth: str = _setting("loopback", _one_of("never", "loopback", "always"))


@dataclass(frozen=True)
class SubmissionConfig:
    """The listener where users hand in mail to send (RFC 6409), after AUTH."""

    listen: tuple[str, ...] = _setting(("tcp:5587:interface=127.0.0.1",), _listen)
    plaintext_auth: str = _setting("loopback", _one_of("never", "loopback", "always"))
    # The From header's addresses must be the user's too, not only the envelope sender.
    check_from_header: bool = _setting(True, _boolean)


@dataclass(frozen=True)
class TLSConfig:
    """The certificate for STARTTLS, STLS and ssl: listeners that do not name their own."""

    certificate: Path | None = _setting(None, _optional_path)  # noqa: RUF009 (None)
    private_key: Path | None = _setting(None, _optional_path)  # noqa: RUF009 (None)

    @property
    def files(self) -> TLSFiles | None:
        if self.certificate is None or self.private_key is None:
            return None
        return TLSFiles(self.certificate, self.private_key)


@dataclass(frozen=True)
class OutboundConfig:
    """Delivery of mail to other servers, through the outbound queue."""

    mx_port: int = _setting(25, _int_between(1, 65535))
    tls: str = _setting("opportunistic", _one_of("opportunistic", "required", "off"))
    # Domains whose servers must offer STARTTLS with a certificate valid for their name.
    tls_required: tuple[str, ...] = _setting((), _domains)
    trust_file: Path | None = _setting(None, _optional_path)  # noqa: RUF009 (None)
    routes: dict[str, HostPort] = field(default_factory=dict, metadata={"check": _routes})
    smarthost: HostPort | None = _setting(None, _optional_host_port)  # noqa: RUF009 (None)
    smarthost_login: str = _setting("", lambda value: _text(value, 'a login name, or ""'))
    smarthost_password_file: Path | None = _setting(None, _optional_path)  # noqa: RUF009
    retry_initial: float = _setting(300.0, _duration)
    retry_max: float = _setting(3600.0, _duration)
    delay_notice: float = _setting(4 * 3600.0, _duration)
    lifetime: float = _setting(5 * 86400.0, _duration)
    max_connections: int = _setting(20, _int_between(1, 1000))
    max_connections_per_domain: int = _setting(5, _int_between(1, 1000))
    connect_timeout: float = _setting(30.0, _duration)


@dataclass(frozen=True)
class DNSConfig:
    """How the server asks DNS: MX routing, SPF, DKIM keys, DMARC policies."""

    # DNS servers ("address:port"); empty means those of /etc/resolv.conf.
    resolver: tuple[HostPort, ...] = _setting((), _resolvers)
    timeout: float = _setting(10.0, _duration)  # for one query, all servers and retries


@dataclass(frozen=True)
class DKIMKey:
    """One signing key: mail whose From domain is ``domain`` is signed with it."""

    domain: str
    selector: str
    private_key: Path


_SELECTOR = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _dkim_keys(value: object) -> tuple[DKIMKey, ...]:
    """``[[dkim.keys]]`` tables of domain, selector and private_key (RFC 6376 §3.1: a
    selector is a dot-separated sequence of labels)."""
    if not isinstance(value, list):
        raise _expected("a list of [[dkim.keys]] tables", value)
    keys: list[DKIMKey] = []
    reasons: list[str] = []
    for index, item in enumerate(value):
        where = f"[{index}]"
        if not isinstance(item, dict):
            reasons.append(f"{where}: expected a table with domain, selector and private_key")
            continue
        unknown = sorted(set(item) - {"domain", "selector", "private_key"})
        if unknown:
            reasons.append(f"{where}: unknown key {_quote(unknown[0])}")
        try:
            domain = _domains([item.get("domain")])[0]
        except _Invalid as invalid:
            reasons += [f"{where}.domain: {reason}" for reason in invalid.reasons]
            continue
        selector = item.get("selector")
        if not isinstance(selector, str) or not _SELECTOR.fullmatch(selector):
            reasons.append(
                f'{where}.selector: expected a selector like "mail2026", got {_show(selector)}'
            )
            continue
        private_key = item.get("private_key")
        if not isinstance(private_key, str) or not private_key:
            reasons.append(
                f"{where}.private_key: expected a key file's path, got {_show(private_key)}"
            )
            continue
        keys.append(DKIMKey(domain, selector.lower(), Path(private_key)))
    if reasons:
        raise _Invalid(*reasons)
    return tuple(keys)


@dataclass(frozen=True)
class DKIMConfig:
    """DKIM signing (RFC 6376) of mail that our users send."""

    keys: tuple[DKIMKey, ...] = _setting((), _dkim_keys)


@dataclass(frozen=True)
class ChecksConfig:
    """SPF, DKIM and DMARC checks of mail arriving on the MX listeners."""

    enabled: bool = _setting(True, _boolean)
    # The name in our Authentication-Results headers (RFC 8601 §2.5); "" means server.hostname.
    authserv_id: str = _setting("", lambda value: "" if value == "" else _hostname(value))
    dmarc_reject: bool = _setting(True, _boolean)  # refuse DMARC failures of p=reject domains
    spf_reject: bool = _setting(False, _boolean)  # refuse SPF "fail" results
    # When a look-up fails: "accept" (recording temperror) or "defer" (a 451 reply).
    dns_failure: str = _setting("accept", _one_of("accept", "defer"))


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _expected(what, value)
    return value


@dataclass(frozen=True)
class AccountsConfig:
    """How addresses map to accounts."""

    recipient_delimiter: str = _setting("+", _recipient_delimiter)
    # RFC 5321 §4.1.1.3: mail to plain "<Postmaster>" (no domain) must be accepted.
    # "" means postmaster@ the server's hostname.
    postmaster: str = _setting("", _optional_address)


@dataclass(frozen=True)
class Config:
    """The whole configuration, as loaded from ``source``."""

    source: str
    server: ServerConfig
    smtp: SMTPConfig
    submission: SubmissionConfig
    pop3: POP3Config
    tls: TLSConfig
    outbound: OutboundConfig
    accounts: AccountsConfig
    dns: DNSConfig = DNSConfig()
    dkim: DKIMConfig = DKIMConfig()
    checks: ChecksConfig = ChecksConfig()


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "smtp": SMTPConfig,
    "submission": SubmissionConfig,
    "pop3": POP3Config,
    "tls": TLSConfig,
    "outbound": OutboundConfig,
    "accounts": AccountsConfig,
    "dns": DNSConfig,
    "dkim": DKIMConfig,
    "checks": ChecksConfig,
}


class _Problems:
    """Collects ``FILE: KEY: reason`` lines for one file, to report in the file's order."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._found: list[tuple[str, str]] = []

    def add(self, key: str, reason: str) -> None:
        self._found.append((key.split(".", 1)[0], f"{self.source}: {key}: {reason}"))

    def in_order_of(self, document: Mapping[str, object]) -> list[str]:
        """The lines grouped by top-level name as the document orders them (absent ones last)."""
        position = {name: index for index, name in enumerate(document)}
        found = sorted(self._found, key=lambda item: position.get(item[0], len(position)))
        return [line for _, line in found]


def _keys_of(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_SECTIONS[section])]


def _unknown_key(section: str, key: str) -> str:
    """The reason for an unknown key, pointing at the likely intended one."""
    hint = _did_you_mean(key, _keys_of(section))
    if not hint and key in _SECTIONS:
        hint = f" ([{key}] is a section of its own)"
    if not hint:
        elsewhere = [name for name in _SECTIONS if key in _keys_of(name)]
        if elsewhere:
            hint = f' (did you mean "{elsewhere[0]}.{key}"? it belongs in [{elsewhere[0]}])'
    return "unknown key" + hint


def _build(cls: type[_T], section: str, table: Mapping[str, object], problems: _Problems) -> _T:
    """Validate one section; keys that are absent or invalid take their default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, object] = {}
    for key, raw in table.items():
        if key not in fields:
            problems.add(f"{section}.{key}", _unknown_key(section, key))
            continue
        try:
            values[key] = fields[key].metadata["check"](raw)
        except _Invalid as invalid:
            for reason in invalid.reasons:
                problems.add(f"{section}.{key}", reason)
    return cls(**values)


def _absolute(path: Path, base_dir: Path) -> Path:
    """``path`` made absolute, relative to the configuration file's directory."""
    return Path(os.path.abspath(base_dir / path))


def _resolve_paths(server: ServerConfig, base_dir: Path) -> ServerConfig:
    return dataclasses.replace(server, data_dir=_absolute(server.data_dir, base_dir))


def _resolve_tls_paths(tls: TLSConfig, base_dir: Path) -> TLSConfig:
    return TLSConfig(
        certificate=_absolute(tls.certificate, base_dir) if tls.certificate else None,
        private_key=_absolute(tls.private_key, base_dir) if tls.private_key else None,
    )


def _resolve_outbound_paths(outbound: OutboundConfig, base_dir: Path) -> OutboundConfig:
    return dataclasses.replace(
        outbound,
        trust_file=_absolute(outbound.trust_file, base_dir) if outbound.trust_file else None,
        smarthost_password_file=(
            _absolute(outbound.smarthost_password_file, base_dir)
            if outbound.smarthost_password_file
            else None
        ),
    )


def _resolve_dkim_paths(dkim: DKIMConfig, base_dir: Path) -> DKIMConfig:
    return DKIMConfig(
        keys=tuple(
            dataclasses.replace(key, private_key=_absolute(key.private_key, base_dir))
            for key in dkim.keys
        )
    )


def _check_dkim(config: Config, problems: _Problems) -> None:
    """Every key loads, and no domain has two keys under one selector."""
    seen: set[tuple[str, str]] = set()
    for index, key in enumerate(config.dkim.keys):
        if (key.domain, key.selector) in seen:
            problems.add(
                f"dkim.keys[{index}]", f"{key.domain} has two keys with selector {key.selector}"
            )
        seen.add((key.domain, key.selector))
        try:
            load_key(key.private_key)
        except KeyFileError as error:
            problems.add(f"dkim.keys[{index}].private_key", str(error))


def _check_outbound(config: Config, problems: _Problems) -> None:
    outbound = config.outbound
    if outbound.retry_max < outbound.retry_initial:
        problems.add("outbound.retry_max", "is shorter than outbound.retry_initial")
    if outbound.max_connections_per_domain > outbound.max_connections:
        problems.add(
            "outbound.max_connections_per_domain",
            f"{outbound.max_connections_per_domain} is more than outbound.max_connections "
            f"({outbound.max_connections})",
        )
    if outbound.lifetime <= outbound.retry_initial:
        problems.add("outbound.lifetime", "must be longer than outbound.retry_initial")
    if bool(outbound.smarthost_login) != bool(outbound.smarthost_password_file):
        problems.add(
            "outbound.smarthost_login",
            "smarthost_login and smarthost_password_file go together",
        )
    elif outbound.smarthost_password_file is not None:
        try:
            outbound.smarthost_password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            problems.add(
                "outbound.smarthost_password_file",
                f'cannot read "{outbound.smarthost_password_file}": {error}',
            )
        if outbound.smarthost is None:
            problems.add("outbound.smarthost_login", "is set but outbound.smarthost is not")
    if outbound.trust_file is not None and not outbound.trust_file.is_file():
        problems.add("outbound.trust_file", f'"{outbound.trust_file}" is not a readable file')


def _check_tls(config: Config, problems: _Problems) -> None:
    """The [tls] files load, and every listener that needs a certificate has one."""
    tls = config.tls
    if (tls.certificate is None) != (tls.private_key is None):
        missing = "tls.private_key" if tls.private_key is None else "tls.certificate"
        problems.add(missing, "must be set together with the other [tls] file")
    if tls.files is not None:
        try:
            load_context(tls.files)
        except TLSFileError as error:
            key = "tls.certificate" if error.path == tls.certificate else "tls.private_key"
            problems.add(key, str(error))
            return
    for name, section in (
        ("smtp", config.smtp),
        ("submission", config.submission),
        ("pop3", config.pop3),
    ):
        for listen in section.listen:
            if listen.startswith("ssl:") and tls.files is None:
                try:
                    _, files = split_tls_listener(listen)
                except ListenerError:
                    continue  # reported with the listener already
                if files is None:
                    problems.add(
                        f"{name}.listen",
                        f"{_quote(listen)}: an ssl: listener needs a certificate: set "
                        "tls.certificate and tls.private_key (or privateKey= in the listener)",
                    )


def _cross_checks(config: Config, table: Mapping[str, object], problems: _Problems) -> None:
    """Rules that involve more than one key."""
    if "hostname" not in _section(table, "server"):
        try:
            _hostname(config.server.hostname)
        except _Invalid:
            problems.add(
                "server.hostname",
                f"this machine's name {_show(config.server.hostname)} is not a usable domain "
                "name; set server.hostname",
            )
    _check_tls(config, problems)
    _check_outbound(config, problems)
    _check_dkim(config, problems)
    if config.smtp.processes > 1 and any(
        listen.startswith("ssl:") for listen in config.smtp.listen
    ):
        problems.add(
            "smtp.processes",
            "worker processes cannot share an ssl: listener yet; use 1 process with ssl:",
        )
    for name, section in (("smtp", config.smtp), ("pop3", config.pop3)):
        if section.max_connections_per_client > section.max_connections:
            problems.add(
                f"{name}.max_connections_per_client",
                f"{section.max_connections_per_client} is more than {name}.max_connections "
                f"({section.max_connections})",
            )


def _section(table: Mapping[str, object], name: str) -> Mapping[str, object]:
    value = table.get(name, {})
    return value if isinstance(value, dict) else {}


def _syntax_error(source: str, error: tomllib.TOMLDecodeError) -> str:
    """Put tomllib's ``(at line L, column C)`` where the key would go in our format."""
    message = str(error)
    if match := re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.DOTALL):
        where = f"line {match[2]}, column {match[3]}"
        message = match[1]
    elif match := re.fullmatch(r"(.*) \(at end of document\)", message, re.DOTALL):
        where = "end of file"
        message = match[1]
    else:
        where = "file"
    return f"{source}: {where}: invalid TOML: {message}"


def parse_config(text: str, source: str, base_dir: Path) -> Config:
    """Parse TOML ``text``; ``source`` names it in errors, ``base_dir`` anchors relative paths."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([_syntax_error(source, error)]) from None
    problems = _Problems(source)
    for name, value in document.items():
        if name in _SECTIONS and not isinstance(value, dict):
            problems.add(name, f"expected a table ([{name}]), got {_show(value)}")
        elif name not in _SECTIONS and isinstance(value, dict):
            problems.add(name, "unknown section" + _did_you_mean(name, _SECTIONS))
        elif name not in _SECTIONS:
            elsewhere = [section for section in _SECTIONS if name in _keys_of(section)]
            hint = f' (did you mean "{elsewhere[0]}.{name}"?)' if elsewhere else ""
            problems.add(name, "unknown key outside any section" + hint)
    server = _build(ServerConfig, "server", _section(document, "server"), problems)
    config = Config(
        source=source,
        server=_resolve_paths(server, base_dir),
        smtp=_build(SMTPConfig, "smtp", _section(document, "smtp"), problems),
        submission=_build(
            SubmissionConfig, "submission", _section(document, "submission"), problems
        ),
        pop3=_build(POP3Config, "pop3", _section(document, "pop3"), problems),
        tls=_resolve_tls_paths(
            _build(TLSConfig, "tls", _section(document, "tls"), problems), base_dir
        ),
        outbound=_resolve_outbound_paths(
            _build(OutboundConfig, "outbound", _section(document, "outbound"), problems),
            base_dir,
        ),
        accounts=_build(AccountsConfig, "accounts", _section(document, "accounts"), problems),
        dns=_build(DNSConfig, "dns", _section(document, "dns"), problems),
        dkim=_resolve_dkim_paths(
            _build(DKIMConfig, "dkim", _section(document, "dkim"), problems), base_dir
        ),
        checks=_build(ChecksConfig, "checks", _section(document, "checks"), problems),
    )
    _cross_checks(config, document, problems)
    if lines := problems.in_order_of(document):
        raise ConfigError(lines)
    return config


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Load the file at ``path``, or the embedded default (loopback only) when it is None."""
    if path is None:
        return parse_config(_EMBEDDED_TEXT, EMBEDDED_DEFAULT, Path.cwd())
    source = os.fspath(path)
    try:
        data = Path(source).read_bytes()
    except OSError as error:
        raise ConfigError([f"{source}: cannot read the file: {error.strerror}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            [f"{source}: byte {error.start}: not UTF-8 text (TOML files must be UTF-8)"]
        ) from None
    return parse_config(text, source, Path(os.path.abspath(source)).parent)
