"""Tests for mailserver.config (loading and validation) and mailserver.cli_config (check-config)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import tomllib
from pathlib import Path

import pytest

from mailserver.config import (
    EMBEDDED_DEFAULT,
    AccountsConfig,
    ChecksConfig,
    Config,
    ConfigError,
    DKIMConfig,
    DKIMKey,
    DNSConfig,
    HostPort,
    OutboundConfig,
    POP3Config,
    ServerConfig,
    SMTPConfig,
    SubmissionConfig,
    TLSConfig,
    load_config,
    parse_config,
)
from mailserver.tls import TLSFiles, write_self_signed

DATA = Path(__file__).parent / "data" / "config"
REFERENCE = Path(__file__).parent.parent / "conf" / "mailserver.toml"
SECTIONS = {
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


def parse(text: str, base_dir: Path = Path("/base")) -> Config:
    return parse_config(text, "test.toml", base_dir)


def problems(text: str, base_dir: Path = Path("/base")) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, base_dir)
    return list(caught.value.problems)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    directory = tmp_path_factory.mktemp("tls")
    files = TLSFiles(directory / "mail.example.org.crt", directory / "mail.example.org.key")
    write_self_signed("mail.example.org", files.certificate, files.private_key)
    return files


# --- Golden files: each broken configuration and the exact lines it must produce.


@pytest.mark.parametrize("name", sorted(path.name for path in DATA.glob("*.toml")))
def test_golden_bad_configuration(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each tests/data/config/X.toml fails to load with exactly the lines in X.expected, in file
    order, with the file named as it was given (here relative)."""
    monkeypatch.chdir(DATA)
    expected = (DATA / name).with_suffix(".expected").read_text(encoding="utf-8").splitlines()
    with pytest.raises(ConfigError) as caught:
        load_config(name)
    assert list(caught.value.problems) == expected
    assert str(caught.value) == "\n".join(expected)


def test_golden_files_are_paired() -> None:
    """Every golden .expected file has its .toml (so no expectation is silently skipped)."""
    tomls = {path.stem for path in DATA.glob("*.toml")}
    expectations = {path.stem for path in DATA.glob("*.expected")}
    assert tomls == expectations
    assert len(tomls) >= 5


# --- Defaults.


def test_embedded_default() -> None:
    """load_config(None) is the loopback-only default: hostname "localhost", data_dir ./var
    under the current directory, every other value the dataclass default."""
    config = load_config(None)
    assert config.source == EMBEDDED_DEFAULT
    assert config.server.hostname == "localhost"
    assert config.server.data_dir == Path.cwd() / "var"
    assert config.server.worker_threads == 32
    assert config.smtp == SMTPConfig()
    assert config.submission == SubmissionConfig()
    assert config.pop3 == POP3Config()
    assert config.tls == TLSConfig()
    assert config.outbound == OutboundConfig()
    assert config.accounts == AccountsConfig()
    assert config.dns == DNSConfig()
    assert config.dkim == DKIMConfig()
    assert config.checks == ChecksConfig()


def test_documented_default_values() -> None:
    """The defaults are the values the other modules are written against."""
    smtp, pop3 = SMTPConfig(), POP3Config()
    assert smtp.listen == ("tcp:2525:interface=127.0.0.1",)
    assert smtp.max_message_size == 50 * 1024 * 1024
    assert (smtp.max_recipients, smtp.max_received_headers) == (100, 50)
    assert (smtp.command_timeout, smtp.data_timeout) == (300.0, 300.0)
    assert (smtp.max_connections, smtp.max_connections_per_client, smtp.max_errors) == (
        1000,
        20,
        10,
    )
    assert pop3.listen == ("tcp:1110:interface=127.0.0.1",)
    assert (pop3.idle_timeout, pop3.max_connections_per_client) == (600.0, 10)
    assert pop3.plaintext_auth == "loopback"
    assert AccountsConfig().recipient_delimiter == "+"


def test_empty_file_gives_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty file is valid: every section takes its defaults, and the hostname defaults to
    this machine's fully qualified name, lowercased."""
    monkeypatch.setattr("socket.getfqdn", lambda: "Mail.Example.ORG")
    config = parse("")
    assert config.server.hostname == "mail.example.org"
    assert config.server.data_dir == Path("/base/var")
    assert config.smtp == SMTPConfig()
    assert config.submission == SubmissionConfig()
    assert config.pop3 == POP3Config()
    assert config.tls == TLSConfig()
    assert config.outbound == OutboundConfig()
    assert config.accounts == AccountsConfig()


def test_unusable_machine_name_asks_for_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the machine's own name is not a valid domain name and no hostname is set, the error
    says to set server.hostname; setting it makes the file load."""
    monkeypatch.setattr("socket.getfqdn", lambda: "build_box")
    assert problems("") == [
        'test.toml: server.hostname: this machine\'s name "build_box" is not a usable domain '
        "name; set server.hostname"
    ]
    assert parse('[server]\nhostname = "mx.example.org"').server.hostname == "mx.example.org"


def test_config_is_frozen() -> None:
    """Loaded configuration cannot be changed by the code that reads it."""
    config = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.smtp.max_recipients = 5  # type: ignore[misc]


# --- The reference file.


def test_reference_file_equals_defaults() -> None:
    """conf/mailserver.toml loads without errors and its values are exactly the defaults
    (data_dir is "var" next to the file; hostname is left to its computed default)."""
    config = load_config(REFERENCE)
    assert config.server == ServerConfig(data_dir=REFERENCE.parent.resolve() / "var")
    assert config.smtp == SMTPConfig()
    assert config.submission == SubmissionConfig()
    assert config.pop3 == POP3Config()
    assert config.tls == TLSConfig()
    assert config.outbound == OutboundConfig()
    assert config.accounts == AccountsConfig()


def test_reference_file_lists_every_key() -> None:
    """Every section and key of the dataclasses appears in the reference file, and nothing else;
    hostname appears commented out, because its default is computed."""
    text = REFERENCE.read_text(encoding="utf-8")
    document = tomllib.loads(text)
    assert set(document) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        keys = {f.name for f in dataclasses.fields(cls)}
        if name == "server":
            assert "\n#hostname = " in text
            keys.discard("hostname")
        assert set(document[name]) == keys, name


# --- Relative paths.


def test_data_dir_relative_to_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative data_dir is taken from the configuration file's directory, not from the
    current directory, and is stored absolute and normalised."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "etc" / "mail.toml").write_text('[server]\ndata_dir = "../spool/mail"\n')
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = load_config("../etc/mail.toml")
    assert config.source == "../etc/mail.toml"
    assert config.server.data_dir == tmp_path / "spool" / "mail"
    assert config.server.data_dir.is_absolute()


def test_absolute_data_dir_kept(tmp_path: Path) -> None:
    """An absolute data_dir is used as written."""
    config = parse(f'[server]\ndata_dir = "{tmp_path}/data"')
    assert config.server.data_dir == tmp_path / "data"


def test_embedded_default_data_dir_follows_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded default has no file, so its ./var is under the current directory."""
    monkeypatch.chdir(tmp_path)
    assert load_config(None).server.data_dir == tmp_path / "var"


# --- Value formats.


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("45", 45.0),
        ("0.5", 0.5),
        ('"90s"', 90.0),
        ('"5m"', 300.0),
        ('"2h"', 7200.0),
        ('"1d"', 86400.0),
        ('"1.5h"', 5400.0),
        ('" 10 m "', 600.0),
    ],
)
def test_durations(written: str, seconds: float) -> None:
    """Durations are seconds as a number, or a number with an s/m/h/d unit."""
    config = parse(f"[smtp]\ncommand_timeout = {written}")
    assert config.smtp.command_timeout == seconds
    assert isinstance(config.smtp.command_timeout, float)


@pytest.mark.parametrize("written", ["0", "-5", '"0s"', '"5 minutes"', '"5w"', '"m"', "inf", "nan"])
def test_bad_durations(written: str) -> None:
    """Durations must be finite, greater than zero and in a known unit."""
    [line] = problems(f"[pop3]\nidle_timeout = {written}")
    assert line.startswith("test.toml: pop3.idle_timeout: expected a duration")


@pytest.mark.parametrize(
    ("written", "size"),
    [
        ("1000", 1000),
        ('"50 MiB"', 50 * 2**20),
        ('"512KiB"', 512 * 2**10),
        ('"10M"', 10 * 2**20),
        ('"2G"', 2 * 2**30),
        ('"1GiB"', 2**30),
        ('"10MB"', 10 * 10**6),
        ('"3 kb"', 3000),
        ('"1.5 KiB"', 1536),
        ('"100"', 100),
    ],
)
def test_sizes(written: str, size: int) -> None:
    """Sizes are bytes, or a number with K/M/G or KiB/MiB/GiB (binary) or KB/MB/GB (decimal)."""
    assert parse(f"[smtp]\nmax_message_size = {written}").smtp.max_message_size == size


@pytest.mark.parametrize("written", ["0", "-1", "1.5", '"0 MiB"', '"10 TB"', '"ten MB"', "true"])
def test_bad_sizes(written: str) -> None:
    """Sizes must be whole, greater than zero and in a known unit."""
    [line] = problems(f"[smtp]\nmax_message_size = {written}")
    assert line.startswith("test.toml: smtp.max_message_size: expected a size")


def test_bool_is_not_an_integer() -> None:
    """TOML true/false is refused where a number is expected, though Python treats bool as int."""
    assert problems("[smtp]\nmax_recipients = true\nmax_errors = false") == [
        "test.toml: smtp.max_recipients: expected a positive integer, got true",
        "test.toml: smtp.max_errors: expected a positive integer, got false",
    ]


def test_other_toml_types_are_shown_as_written() -> None:
    """Error messages show the offending value in TOML notation, whatever its type."""
    when = datetime.date(2024, 5, 1)
    assert problems(f"[smtp]\nmax_recipients = {when.isoformat()}") == [
        "test.toml: smtp.max_recipients: expected a positive integer, got 2024-05-01"
    ]


@pytest.mark.parametrize("threads", [1, 512])
def test_worker_threads_bounds(threads: int) -> None:
    """worker_threads accepts 1 to 512 inclusive (outside that, see the golden files)."""
    assert parse(f"[server]\nworker_threads = {threads}").server.worker_threads == threads


@pytest.mark.parametrize(
    "hostname", ["localhost", "mail.example.org", "xn--bcher-kva.example", "a-1.b2.c", "MX.Example"]
)
def test_valid_hostnames(hostname: str) -> None:
    """Host names are letters, digits, hyphens and dots, and are stored lowercased."""
    assert parse(f'[server]\nhostname = "{hostname}"').server.hostname == hostname.lower()


@pytest.mark.parametrize(
    "hostname",
    [
        "",
        "mail.example.org.",
        "-mail.example",
        "mail-.example",
        "a..b",
        "b\u00fccher.example",
        "x" * 64 + ".example",
        "mail example",
    ],
)
def test_invalid_hostnames(hostname: str) -> None:
    """Trailing dots, empty labels, edge hyphens, non-ASCII and over-long labels are refused."""
    [line] = problems(f'[server]\nhostname = "{hostname}"')
    assert line.startswith("test.toml: server.hostname: expected a domain name")


@pytest.mark.parametrize("delimiter", ["", "+", "-", "_", "=", "."])
def test_valid_recipient_delimiters(delimiter: str) -> None:
    """The delimiter is one of + - _ = . or empty (subaddressing off)."""
    config = parse(f'[accounts]\nrecipient_delimiter = "{delimiter}"')
    assert config.accounts.recipient_delimiter == delimiter


@pytest.mark.parametrize("delimiter", ['"#"', '"+-"', '"@"', "1"])
def test_invalid_recipient_delimiters(delimiter: str) -> None:
    """Any other delimiter is refused."""
    assert len(problems(f"[accounts]\nrecipient_delimiter = {delimiter}")) == 1


@pytest.mark.parametrize("mode", ["never", "loopback", "always"])
def test_plaintext_auth_modes(mode: str) -> None:
    """plaintext_auth takes exactly the three documented modes."""
    assert parse(f'[pop3]\nplaintext_auth = "{mode}"').pop3.plaintext_auth == mode


def test_per_client_limit_cannot_exceed_total() -> None:
    """smtp.max_connections_per_client larger than smtp.max_connections is an error; equal is
    fine."""
    assert problems("[smtp]\nmax_connections = 5") == [
        "test.toml: smtp.max_connections_per_client: 20 is more than smtp.max_connections (5)"
    ]
    config = parse("[smtp]\nmax_connections = 5\nmax_connections_per_client = 5")
    assert config.smtp.max_connections_per_client == 5
    assert problems("[pop3]\nmax_connections = 5") == [
        "test.toml: pop3.max_connections_per_client: 10 is more than pop3.max_connections (5)"
    ]


def test_processes_range_and_no_shared_ssl_listener(certificate: TLSFiles) -> None:
    """smtp.processes is 1 to 64; worker processes cannot share an ssl: listener (they would
    serve it without TLS), so that combination is an error."""
    assert parse("[smtp]\nprocesses = 4").smtp.processes == 4
    assert len(problems("[smtp]\nprocesses = 0")) == 1
    cert, key = certificate.certificate, certificate.private_key
    endpoint = f"ssl:465:privateKey={key}:certKey={cert}"
    assert problems(f'[smtp]\nprocesses = 2\nlisten = "{endpoint}"') == [
        "test.toml: smtp.processes: worker processes cannot share an ssl: listener yet;"
        " use 1 process with ssl:"
    ]


# --- Listeners.


def test_listen_accepts_one_string_or_a_list() -> None:
    """A single endpoint string and a list both become a tuple; an empty list turns the service
    off."""
    config = parse('[smtp]\nlisten = "tcp:25"\n[pop3]\nlisten = []')
    assert config.smtp.listen == ("tcp:25",)
    assert config.pop3.listen == ()


def test_listen_accepts_each_supported_kind() -> None:
    """tcp (IPv4 or IPv6 interface), tcp6 and unix endpoints pass, kept exactly as written."""
    listen = [
        "tcp:25",
        "tcp:0:interface=127.0.0.1",
        "tcp:587:interface=\\:\\:1",
        "tcp6:25:interface=\\:\\:",
        "tcp6:port=2525:backlog=10",
        "unix:/run/mailserver/smtp.sock:mode=660",
    ]
    written = ", ".join(f'"{item}"'.replace("\\", "\\\\") for item in listen)
    assert parse(f"[smtp]\nlisten = [{written}]").smtp.listen == tuple(listen)


def test_ssl_endpoint_with_existing_files(certificate: TLSFiles) -> None:
    """An ssl: endpoint whose certificate and key exist and load is accepted."""
    cert, key = certificate.certificate, certificate.private_key
    endpoint = f"ssl:465:privateKey={key}:certKey={cert}"
    assert parse(f'[smtp]\nlisten = "{endpoint}"').smtp.listen == (endpoint,)


def test_ssl_endpoint_with_unreadable_certificate(tmp_path: Path) -> None:
    """An ssl: endpoint whose files exist but are not PEM is refused: they are loaded to check
    them."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    [line] = problems(f'[smtp]\nlisten = "ssl:465:privateKey={garbage}"')
    assert line.startswith(f'test.toml: smtp.listen: "ssl:465:privateKey={garbage}": ')


def test_ssl_endpoint_needs_a_certificate() -> None:
    """Without privateKey= an ssl: listener uses the [tls] certificate; without that either,
    the error says what to set."""
    assert problems('[smtp]\nlisten = "ssl:465"') == [
        'test.toml: smtp.listen: "ssl:465": an ssl: listener needs a certificate: set '
        "tls.certificate and tls.private_key (or privateKey= in the listener)"
    ]


def test_endpoint_with_escaped_colon_in_file_name(tmp_path: Path) -> None:
    """ssl: file options are read with Twisted's backslash escapes, so a missing file is
    named as the path it stands for."""
    [line] = problems('[smtp]\nlisten = "ssl:465:privateKey=C\\\\:/no/key.pem"')
    assert line.endswith('cannot read "C:/no/key.pem": No such file or directory')


# --- Files.


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    """A file that does not exist gives one problem line naming the file."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == (f"{path}: cannot read the file: No such file or directory",)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    """A directory given as the configuration file is reported, not crashed on."""
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    [line] = caught.value.problems
    assert line.startswith(f"{tmp_path}: cannot read the file: ")


def test_file_must_be_utf8(tmp_path: Path) -> None:
    """TOML is UTF-8; another encoding is reported with the offending byte."""
    path = tmp_path / "latin1.toml"
    path.write_bytes("# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == (f"{path}: byte 5: not UTF-8 text (TOML files must be UTF-8)",)


def test_source_is_the_path_as_given(tmp_path: Path) -> None:
    """Config.source is the path exactly as passed, for messages that the user recognises."""
    path = tmp_path / "ok.toml"
    path.write_text("")
    assert load_config(str(path)).source == str(path)


# --- The check-config command.


def _main(argv: list[str]) -> int:
    """Run the real ``mailserver`` command line."""
    from mailserver.cli import main

    return main(argv)


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    """check-config FILE prints "FILE: configuration OK" and exits 0 for a good file."""
    assert _main(["check-config", str(REFERENCE)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{REFERENCE}: configuration OK\n"
    assert err == ""


def test_check_config_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config prints every problem line to stderr, nothing to stdout, and exits 1."""
    monkeypatch.chdir(DATA)
    assert _main(["check-config", "several_errors.toml"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (DATA / "several_errors.expected").read_text(encoding="utf-8")


def test_check_config_uses_global_config(capsys: pytest.CaptureFixture[str]) -> None:
    """Without FILE, check-config checks the --config file."""
    assert _main(["--config", str(REFERENCE), "check-config"]) == 0
    assert capsys.readouterr().out == f"{REFERENCE}: configuration OK\n"


def test_check_config_file_argument_wins(capsys: pytest.CaptureFixture[str]) -> None:
    """An explicit FILE is checked even when --config names another file."""
    assert _main(["--config", "/nonexistent.toml", "check-config", str(REFERENCE)]) == 0
    assert capsys.readouterr().out == f"{REFERENCE}: configuration OK\n"


def test_check_config_embedded_default(capsys: pytest.CaptureFixture[str]) -> None:
    """With neither FILE nor --config, the embedded default is checked."""
    assert _main(["check-config"]) == 0
    assert capsys.readouterr().out == f"{EMBEDDED_DEFAULT}: configuration OK\n"


def test_check_config_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A missing file is reported on one stderr line, exit status 1."""
    path = tmp_path / "missing.toml"
    assert _main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err == f"{path}: cannot read the file: No such file or directory\n"


def test_load_config_for_raises_command_error(tmp_path: Path) -> None:
    """load_config_for turns ConfigError into CommandError carrying all the problem lines, so
    other subcommands fail with a clear message and exit status 1."""
    from mailserver.cli import CommandError
    from mailserver.cli_config import load_config_for

    path = tmp_path / "bad.toml"
    path.write_text("[smtp]\nmax_recipients = 0\nmax_errors = 0\n")
    with pytest.raises(CommandError) as caught:
        load_config_for(argparse.Namespace(config=str(path)))
    assert str(caught.value) == (
        f"{path}: smtp.max_recipients: expected a positive integer, got 0\n"
        f"{path}: smtp.max_errors: expected a positive integer, got 0"
    )
    assert load_config_for(argparse.Namespace(config=None)).source == EMBEDDED_DEFAULT


# --- TLS.


def test_tls_files_relative_to_config_file(certificate: TLSFiles) -> None:
    """[tls] paths are taken from the configuration file's directory and checked by loading
    them, so implicit TLS listeners may rely on them."""
    directory = certificate.certificate.parent
    config = parse(
        '[tls]\ncertificate = "mail.example.org.crt"\nprivate_key = "mail.example.org.key"\n'
        '[submission]\nlisten = ["ssl:4650:interface=127.0.0.1"]\n',
        base_dir=directory,
    )
    assert config.tls.files == certificate
    assert config.submission.listen == ("ssl:4650:interface=127.0.0.1",)


def test_unusable_tls_files_name_the_key(certificate: TLSFiles, tmp_path: Path) -> None:
    """A key that does not match the certificate, or a certificate that is not PEM, is one
    line naming the [tls] key and the file."""
    other = TLSFiles(tmp_path / "other.crt", tmp_path / "other.key")
    write_self_signed("other.example.org", other.certificate, other.private_key)
    lines = problems(
        f'[tls]\ncertificate = "{certificate.certificate}"\nprivate_key = "{other.private_key}"\n'
    )
    assert len(lines) == 1
    assert lines[0].startswith("test.toml: tls.private_key: ")
    assert str(other.private_key) in lines[0]
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    lines = problems(
        f'[tls]\ncertificate = "{tmp_path / "junk.pem"}"\nprivate_key = "{other.private_key}"\n'
    )
    assert lines == [
        f'test.toml: tls.certificate: "{tmp_path / "junk.pem"}" holds no PEM certificate'
    ]


def test_ssl_listener_with_its_own_files(certificate: TLSFiles) -> None:
    """An ssl: listener may name its own key and chain; they are loaded to check them."""
    listen = f"ssl:4650:privateKey={certificate.private_key}:certKey={certificate.certificate}"
    config = parse(f'[submission]\nlisten = ["{listen}"]\n')
    assert config.submission.listen == (listen,)
    missing = "ssl:4650:privateKey=/nonexistent/key.pem"
    assert problems(f'[submission]\nlisten = ["{missing}"]\n') == [
        f'test.toml: submission.listen: "{missing}": cannot read "/nonexistent/key.pem": '
        "No such file or directory"
    ]


# --- Outbound.


def test_outbound_settings() -> None:
    """Resolvers, routes and the smarthost are host-and-port strings: IPv6 in brackets, port
    53 for DNS and 25 for mail by default; domains and names are lowercased."""
    config = parse(
        '[dns]\nresolver = ["127.0.0.1:5353", "::1", "[::1]:54"]\n'
        "[outbound]\n"
        'routes = { "Example.NET" = "MX.example.net:2525", "v6.example" = "[2001:db8::1]" }\n'
        'smarthost = "relay.example:587"\n'
        'retry_initial = "10s"\n'
    )
    outbound = config.outbound
    assert config.dns.resolver == (
        HostPort("127.0.0.1", 5353),
        HostPort("::1", 53),
        HostPort("::1", 54),
    )
    assert outbound.routes == {
        "example.net": HostPort("mx.example.net", 2525),
        "v6.example": HostPort("2001:db8::1", 25),
    }
    assert outbound.smarthost == HostPort("relay.example", 587)
    assert outbound.retry_initial == 10.0


def test_outbound_problems() -> None:
    """Each bad outbound value is one line naming its key."""
    assert problems(
        '[dns]\nresolver = "dns.example"\n'
        "[outbound]\n"
        'routes = { "a.example" = "b.example:99999" }\n'
        "mx_port = 0\n"
        'smarthost_login = "me"\n'
        'retry_initial = "2h"\n'
        'lifetime = "1h"\n'
    ) == [
        "test.toml: dns.resolver: expected a DNS server's IP address, with its port if not"
        ' 53, got "dns.example"',
        'test.toml: outbound.routes: "a.example": expected a host and port like'
        ' "mail.example.net:587" or "[2001:db8::1]:25", got "b.example:99999"',
        "test.toml: outbound.mx_port: expected an integer from 1 to 65535, got 0",
        "test.toml: outbound.retry_max: is shorter than outbound.retry_initial",
        "test.toml: outbound.lifetime: must be longer than outbound.retry_initial",
        "test.toml: outbound.smarthost_login: smarthost_login and smarthost_password_file go"
        " together",
    ]


# --- DKIM keys and checks.


def test_dkim_keys_load_relative_to_the_file(tmp_path: Path) -> None:
    """[[dkim.keys]] tables name a domain (normalised), a selector and a key file relative to
    the configuration file; the key must load."""
    from mailserver.dkimkeys import write_new_key

    write_new_key(tmp_path / "dkim" / "k.pem", "ed25519")
    config = parse(
        '[[dkim.keys]]\ndomain = "Example.ORG"\nselector = "ed2026"\nprivate_key = "dkim/k.pem"\n',
        tmp_path,
    )
    assert config.dkim.keys == (DKIMKey("example.org", "ed2026", tmp_path / "dkim" / "k.pem"),)


def test_dkim_key_problems(tmp_path: Path) -> None:
    """A bad domain, selector or unreadable key is one line each, naming the key's index."""
    (tmp_path / "junk.pem").write_text("not a key")
    assert problems(
        "[[dkim.keys]]\n"
        'domain = "example.org"\nselector = "bad selector"\nprivate_key = "k.pem"\n'
        "[[dkim.keys]]\n"
        'domain = "-bad-.example"\nselector = "s"\nprivate_key = "k.pem"\n'
    ) == [
        'test.toml: dkim.keys: [0].selector: expected a selector like "mail2026", got'
        ' "bad selector"',
        "test.toml: dkim.keys: [1].domain: expected a domain name (letters, digits, hyphens"
        ' and dots, no trailing dot), got "-bad-.example"',
    ]
    assert problems(
        "[[dkim.keys]]\n"
        'domain = "example.org"\nselector = "s1"\nprivate_key = "missing.pem"\n'
        "[[dkim.keys]]\n"
        'domain = "example.org"\nselector = "s2"\nprivate_key = "junk.pem"\n',
        tmp_path,
    ) == [
        f'test.toml: dkim.keys[0].private_key: cannot read "{tmp_path}/missing.pem": No such'
        " file or directory",
        "test.toml: dkim.keys[1].private_key: not an unencrypted PEM private key",
    ]


def test_outbound_resolver_has_moved_to_dns() -> None:
    """The old outbound.resolver key is refused with a pointer to [dns]."""
    assert problems("[outbound]\nresolver = []\n") == [
        'test.toml: outbound.resolver: unknown key (did you mean "dns.resolver"? it belongs'
        " in [dns])"
    ]


def test_checks_settings() -> None:
    """[checks] takes booleans and the DNS failure policy."""
    checks = parse(
        '[checks]\nspf_reject = true\ndns_failure = "defer"\nauthserv_id = "mx.example.org"\n'
    ).checks
    assert checks == ChecksConfig(
        enabled=True,
        authserv_id="mx.example.org",
        dmarc_reject=True,
        spf_reject=True,
        dns_failure="defer",
    )


def test_authserv_id_must_be_a_host_name() -> None:
    """authserv_id goes into every Authentication-Results field: a name, not free text."""
    assert problems('[checks]\nauthserv_id = "mx.example.org; dmarc=pass"\n')[0].startswith(
        "test.toml: checks.authserv_id: expected a domain name"
    )
