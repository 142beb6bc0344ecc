"""Tests for mailserver.tls: loading, serving and reloading the server's certificate.

Handshakes run in memory: the server side is the OpenSSL.SSL.Connection the server would use,
the client side Python's ssl module over memory BIOs, both driven in turn in this thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import ssl
import stat
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import LogEvent, LogLevel, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from zope.interface.verify import verifyObject

import mailserver.tls
from mailserver.tls import (
    ServerTLS,
    TLSFileError,
    TLSFiles,
    describe_connection,
    load_context,
    write_self_signed,
)

HOST = "mx.example.org"
OTHER_HOST = "mx2.example.org"


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as files and as the certificate's DER bytes."""

    certificate: Path
    private_key: Path

    @property
    def der(self) -> bytes:
        pem = self.certificate.read_bytes()
        return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pair, Pair]:
    """Two certificates (for HOST and OTHER_HOST) with their keys, generated once: RSA is slow."""
    directory = tmp_path_factory.mktemp("pairs")
    made = []
    for name in (HOST, OTHER_HOST):
        pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
        write_self_signed(name, pair.certificate, pair.private_key)
        made.append(pair)
    return made[0], made[1]


@pytest.fixture
def first(pairs: tuple[Pair, Pair]) -> Pair:
    return pairs[0]


@pytest.fixture
def second(pairs: tuple[Pair, Pair]) -> Pair:
    return pairs[1]


@pytest.fixture
def files(tmp_path: Path, first: Pair) -> TLSFiles:
    """The server's files, a copy of the first pair that a test may change."""
    files = TLSFiles(tmp_path / "cert.pem", tmp_path / "key.pem")
    shutil.copyfile(first.certificate, files.certificate)
    shutil.copyfile(first.private_key, files.private_key)
    return files


def replace(target: Path, source: Path) -> None:
    """Put ``source``'s content at ``target`` the way renewal tools do: a new file renamed."""
    temporary = target.with_name(target.name + ".new")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def install(files: TLSFiles, pair: Pair) -> None:
    replace(files.certificate, pair.certificate)
    replace(files.private_key, pair.private_key)


def client_context(
    version: ssl.TLSVersion | None = None, trust: Path | None = None
) -> ssl.SSLContext:
    """A client pinned to ``version`` (any when None) that verifies against ``trust`` if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if trust is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile=str(trust))
    if version is not None:
        with warnings.catch_warnings():  # Python deprecates naming TLS 1.0 and 1.1
            warnings.simplefilter("ignore", DeprecationWarning)
            if version < ssl.TLSVersion.TLSv1_2:
                # So that it is the server that refuses, not this client's own security level.
                context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = context.maximum_version = version
    return context


def handshake(
    server: SSL.Connection, context: ssl.SSLContext, hostname: str = HOST
) -> ssl.SSLObject:
    """Complete a handshake between ``server`` and a client with ``context``; returns the client.

    The server's errors are raised as they are (SSL.Error), so tests can see why it refused.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=hostname)
    server.set_accept_state()
    client_done = server_done = False
    for _ in range(20):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        if data := outgoing.read():
            server.bio_write(data)
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except SSL.WantReadError:
                pass
        with contextlib.suppress(SSL.WantReadError):
            incoming.write(server.bio_read(65536))
        if client_done and server_done:
            return client
    raise AssertionError("the handshake did not finish")


def served(tls: ServerTLS) -> bytes:
    """The DER certificate a client receives from the next connection ``tls`` creates."""
    client = handshake(tls.serverConnectionForTLS(None), client_context())
    certificate = client.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


@dataclass
class FakeTransport:
    """Only what describe_connection looks at."""

    handle: object

    def getHandle(self) -> object:
        return self.handle


def errors(events: list[LogEvent]) -> list[LogEvent]:
    return [event for event in events if event["log_level"] == LogLevel.error]


# --- load_context: the files and what is wrong with them -------------------------------------


def test_missing_file(files: TLSFiles, tmp_path: Path) -> None:
    """A file that does not exist is named, with the system's reason."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSFileError) as raised:
        load_context(TLSFiles(missing, files.private_key))
    assert str(raised.value) == f'cannot read "{missing}": No such file or directory'
    assert raised.value.path == missing


def test_directory_instead_of_file(files: TLSFiles, tmp_path: Path) -> None:
    """A path that is a directory cannot be read, and says so."""
    with pytest.raises(TLSFileError) as raised:
        load_context(TLSFiles(files.certificate, tmp_path))
    assert str(raised.value) == f'cannot read "{tmp_path}": Is a directory'


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(files: TLSFiles) -> None:
    """A key the server may not read is reported as such."""
    files.private_key.chmod(0)
    with pytest.raises(TLSFileError) as raised:
        load_context(files)
    assert str(raised.value) == f'cannot read "{files.private_key}": Permission denied'


def test_garbage_certificate(files: TLSFiles) -> None:
    """A certificate file without a PEM certificate in it (here, a key) is refused."""
    shutil.copyfile(files.private_key, files.certificate)
    with pytest.raises(TLSFileError) as raised:
        load_context(files)
    assert str(raised.value) == f'"{files.certificate}" holds no PEM certificate'


def test_damaged_certificate(files: TLSFiles) -> None:
    """PEM armour around bytes that are not a certificate is refused."""
    files.certificate.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(TLSFileError) as raised:
        load_context(files)
    assert str(raised.value) == f'"{files.certificate}" holds a damaged PEM certificate'


def test_garbage_key(files: TLSFiles) -> None:
    """A key file without a PEM private key in it is refused."""
    files.private_key.write_bytes(b"not a key\n")
    with pytest.raises(TLSFileError) as raised:
        load_context(files)
    assert str(raised.value) == f'"{files.private_key}" holds no PEM private key'


def test_encrypted_key(files: TLSFiles) -> None:
    """A passphrase-protected key is refused: the server has no one to ask for the passphrase."""
    key = serialization.load_pem_private_key(files.private_key.read_bytes(), password=None)
    files.private_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSFileError, match="holds an encrypted private key"):
        load_context(files)


def test_damaged_key(files: TLSFiles) -> None:
    """PEM armour around bytes that are not a key is refused."""
    files.private_key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TLSFileError) as raised:
        load_context(files)
    assert str(raised.value) == f'"{files.private_key}" holds a damaged PEM private key'


def test_other_kind_of_key(files: TLSFiles) -> None:
    """Keys other than RSA and EC (here Ed25519) are refused: few mail clients accept them."""
    key = ed25519.Ed25519PrivateKey.generate()
    files.private_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(TLSFileError, match="use an RSA or EC key"):
        load_context(files)


def test_mismatched_key(files: TLSFiles, second: Pair) -> None:
    """A key that does not belong to the certificate is refused, naming both files."""
    shutil.copyfile(second.private_key, files.private_key)
    with pytest.raises(TLSFileError) as raised:
        load_context(files)
    assert str(raised.value) == (
        f'"{files.private_key}" does not hold the private key of "{files.certificate}"'
    )


def test_chain_in_the_wrong_order(files: TLSFiles, second: Pair) -> None:
    """A chain file listing the leaf after another certificate gets a precise explanation."""
    leaf = files.certificate.read_bytes()
    files.certificate.write_bytes(second.certificate.read_bytes() + leaf)
    with pytest.raises(TLSFileError, match=r"must list the certificate of .* first"):
        load_context(files)


def test_chain_is_served(files: TLSFiles, first: Pair, second: Pair) -> None:
    """The certificates after the leaf (the intermediates of a fullchain.pem) are sent too."""
    files.certificate.write_bytes(first.certificate.read_bytes() + second.certificate.read_bytes())
    server = SSL.Connection(load_context(files), None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    for _ in range(10):
        for source, target in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                source.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                target.bio_write(source.bio_read(65536))
    chain = client.get_peer_cert_chain(as_cryptography=True)
    assert [c.public_bytes(serialization.Encoding.DER) for c in chain or []] == [
        first.der,
        second.der,
    ]


# --- Handshakes: versions and ciphers ---------------------------------------------------------


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["TLSv1.3", "TLSv1.2"]
)
def test_modern_versions_accepted(files: TLSFiles, version: ssl.TLSVersion) -> None:
    """TLS 1.3 and 1.2 clients complete the handshake and verify the certificate for HOST."""
    server = SSL.Connection(load_context(files), None)
    client = handshake(server, client_context(version, trust=files.certificate))
    assert (
        client.version()
        == {ssl.TLSVersion.TLSv1_3: "TLSv1.3", ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
    )


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"]
)
def test_old_versions_refused(files: TLSFiles, version: ssl.TLSVersion) -> None:
    """The server refuses TLS 1.0 and 1.1 (RFC 8996) by its own floor, even where OpenSSL's
    security level (lowered here, as some distributions do) would allow them."""
    context = load_context(files)
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    server = SSL.Connection(context, None)
    with pytest.raises(SSL.Error, match="unsupported protocol"):
        handshake(server, client_context(version))


def test_tls12_uses_forward_secret_aead(files: TLSFiles) -> None:
    """With TLS 1.2 the server picks an ECDHE suite with GCM or ChaCha20-Poly1305."""
    client = handshake(
        SSL.Connection(load_context(files), None), client_context(ssl.TLSVersion.TLSv1_2)
    )
    cipher = client.cipher()
    assert cipher is not None
    assert cipher[0].startswith("ECDHE-") and ("GCM" in cipher[0] or "CHACHA20" in cipher[0])


@pytest.mark.parametrize("offer", ["AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA"])
def test_tls12_refuses_weak_suites(files: TLSFiles, offer: str) -> None:
    """A TLS 1.2 client offering only static-RSA or CBC suites finds no common cipher."""
    context = client_context(ssl.TLSVersion.TLSv1_2)
    context.set_ciphers(offer)
    with pytest.raises(SSL.Error, match="no shared cipher"):
        handshake(SSL.Connection(load_context(files), None), context)


# --- ServerTLS: serving and reloading ----------------------------------------------------------


def test_provides_the_interface(files: TLSFiles) -> None:
    """ServerTLS is what Twisted's TLS transports accept as a server context factory."""
    assert verifyObject(IOpenSSLServerConnectionCreator, ServerTLS(files))


def test_refuses_unusable_files_at_start(files: TLSFiles, second: Pair) -> None:
    """At start there is no previous certificate to fall back on: bad files raise."""
    shutil.copyfile(second.private_key, files.private_key)
    with pytest.raises(TLSFileError):
        ServerTLS(files)


def test_serves_the_certificate(files: TLSFiles, first: Pair) -> None:
    """Connections get the configured certificate."""
    assert served(ServerTLS(files)) == first.der


def test_renewal_served_at_next_connection(files: TLSFiles, first: Pair, second: Pair) -> None:
    """Files replaced by a renewal (new inodes) are served from the next connection on."""
    tls = ServerTLS(files)
    assert served(tls) == first.der
    install(files, second)
    with capturedLogs() as captured:
        assert served(tls) == second.der
    assert [e["log_level"] for e in captured] == [LogLevel.info]
    assert "reloaded" in captured[0]["log_format"]


def test_rewrite_in_place_is_noticed(files: TLSFiles, second: Pair) -> None:
    """Files rewritten in place (same inodes, new size and time) are reloaded too."""
    tls = ServerTLS(files)
    files.certificate.write_bytes(second.certificate.read_bytes())
    files.private_key.write_bytes(second.private_key.read_bytes())
    assert served(tls) == second.der


def test_unchanged_files_are_not_reloaded(files: TLSFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a change, connections reuse the loaded context: no reading per connection."""
    tls = ServerTLS(files)
    monkeypatch.setattr(mailserver.tls, "_load", lambda files: pytest.fail("reloaded"))
    served(tls)
    served(tls)


def test_broken_renewal_keeps_the_old_certificate(
    files: TLSFiles, first: Pair, second: Pair
) -> None:
    """A certificate that does not match the key (half of a renewal) leaves the previous one
    in use, logs one error for that change, and the completed renewal is picked up."""
    tls = ServerTLS(files)
    replace(files.certificate, second.certificate)
    with capturedLogs() as captured:
        assert served(tls) == first.der
        assert served(tls) == first.der
    [error] = errors(list(captured))
    assert "does not hold the private key" in error["error"]
    assert "previous certificate" in error["log_format"]
    replace(files.private_key, second.private_key)
    assert served(tls) == second.der


def test_damaged_renewal_logged_once_per_change(files: TLSFiles, first: Pair) -> None:
    """A damaged file is reported once, again only when it changes again, and the server keeps
    serving meanwhile."""
    tls = ServerTLS(files)
    with capturedLogs() as captured:
        files.certificate.write_text("half written")
        assert served(tls) == first.der
        assert served(tls) == first.der
        files.certificate.write_text("half written, still")
        assert served(tls) == first.der
    assert len(errors(list(captured))) == 2


def test_removed_file_keeps_the_old_certificate(files: TLSFiles, first: Pair) -> None:
    """A file that disappears (a renewal between unlink and rename) is logged, not fatal."""
    tls = ServerTLS(files)
    files.private_key.unlink()
    with capturedLogs() as captured:
        assert served(tls) == first.der
    [error] = errors(list(captured))
    assert "cannot read" in error["error"]


def test_forced_reload(
    files: TLSFiles, first: Pair, second: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reload() loads the files even when their stat looks unchanged, and says it did."""
    monkeypatch.setattr(mailserver.tls, "_signature", lambda files: ((0,), (0,)))
    tls = ServerTLS(files)
    install(files, second)
    assert served(tls) == first.der  # no change seen
    assert tls.reload() is True
    assert served(tls) == second.der


def test_failed_forced_reload(files: TLSFiles, first: Pair) -> None:
    """A reload() that cannot load the files returns False, logs, and keeps the old ones."""
    tls = ServerTLS(files)
    files.certificate.write_text("garbage")
    with capturedLogs() as captured:
        assert tls.reload() is False
    assert len(errors(list(captured))) == 1
    assert served(tls) == first.der


def test_twisted_tls_transport(files: TLSFiles) -> None:
    """Twisted's TLS protocol accepts ServerTLS as its context factory; a verifying client
    connects, and describe_connection reads the server protocol's transport."""
    server_factory = TLSMemoryBIOFactory(ServerTLS(files), False, Factory.forProtocol(Protocol))
    options = optionsForClientTLS(HOST, Certificate.loadPEM(files.certificate.read_bytes()))
    client_factory = TLSMemoryBIOFactory(options, True, Factory.forProtocol(Protocol))
    client, server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
    )
    pump.flush()
    assert server.wrappedProtocol.transport is server
    assert describe_connection(server) == describe_connection(client)
    description = describe_connection(server)
    assert description is not None and description.startswith("TLSv1.3 with cipher ")


# --- describe_connection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (ssl.TLSVersion.TLSv1_3, "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"),
        (ssl.TLSVersion.TLSv1_2, "TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)"),
    ],
)
def test_describe_established(files: TLSFiles, version: ssl.TLSVersion, expected: str) -> None:
    """An established connection is described as Postfix writes it in Received headers."""
    server = SSL.Connection(load_context(files), None)
    handshake(server, client_context(version))
    assert describe_connection(FakeTransport(server)) == expected


def test_describe_before_handshake(files: TLSFiles) -> None:
    """A TLS connection whose handshake has not finished is not described."""
    server = SSL.Connection(load_context(files), None)
    server.set_accept_state()
    assert describe_connection(FakeTransport(server)) is None


def test_describe_mid_handshake(files: TLSFiles) -> None:
    """Once a TLS 1.3 cipher is chosen but before the client's Finished, nothing is claimed."""
    server = SSL.Connection(load_context(files), None)
    server.set_accept_state()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context().wrap_bio(incoming, outgoing, server_hostname=HOST)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    server.bio_write(outgoing.read())
    with pytest.raises(SSL.WantReadError):
        server.do_handshake()
    assert server.get_cipher_name() is not None
    assert describe_connection(FakeTransport(server)) is None


@pytest.mark.parametrize("transport", [object(), FakeTransport(handle=object())])
def test_describe_plain(transport: object) -> None:
    """A transport without TLS (no getHandle, or a socket as its handle) is not described."""
    assert describe_connection(transport) is None


# --- write_self_signed ---------------------------------------------------------------------


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_self_signed_certificate(tmp_path: Path) -> None:
    """The certificate names the host in subjectAltName and CN, is signed with SHA-256 by its
    own RSA-2048 key, and is valid from an hour ago for the given number of days."""
    certificate, key = tmp_path / "c.pem", tmp_path / "k.pem"
    before = datetime.now(UTC).replace(microsecond=0)
    write_self_signed(HOST, certificate, key, days=30)
    loaded = load(certificate)
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST]
    assert loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HOST
    assert loaded.issuer == loaded.subject
    assert isinstance(loaded.signature_hash_algorithm, hashes.SHA256)
    public_key = loaded.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 2048
    usage = loaded.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert before - timedelta(hours=1, seconds=1) <= loaded.not_valid_before_utc
    assert loaded.not_valid_before_utc <= before - timedelta(minutes=59)
    assert loaded.not_valid_after_utc - loaded.not_valid_before_utc == timedelta(days=30, hours=1)
    load_context(TLSFiles(certificate, key))  # the pair matches


def test_long_hostname_has_no_cn(tmp_path: Path) -> None:
    """A hostname longer than a CN may be (64) goes in subjectAltName alone, marked critical."""
    hostname = ("a" * 60 + ".") * 3 + "example"
    certificate = tmp_path / "c.pem"
    write_self_signed(hostname, certificate, tmp_path / "k.pem")
    loaded = load(certificate)
    assert len(loaded.subject) == 0
    san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.DNSName) == [hostname]


def test_key_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key file is created with mode 0600 (so it is never readable by others, even
    before it is complete) whatever the umask; the certificate is world-readable."""
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def recording_open(path: str, flags: int, mode: int = 0o777) -> int:
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode)

    monkeypatch.setattr(mailserver.tls.os, "open", recording_open)
    old_umask = os.umask(0)
    try:
        write_self_signed(HOST, tmp_path / "c.pem", tmp_path / "k.pem")
    finally:
        os.umask(old_umask)
    [(flags, mode)] = [(f, m) for p, f, m in opened if p.startswith(str(tmp_path / ".k.pem"))]
    assert mode == 0o600 and flags & os.O_CREAT and flags & os.O_EXCL
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "c.pem").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pem", "k.pem"]  # no temp files


@pytest.mark.parametrize("existing", ["c.pem", "k.pem"])
def test_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    """An existing certificate or key is left alone and nothing is written."""
    (tmp_path / existing).write_text("precious")
    with pytest.raises(FileExistsError) as raised:
        write_self_signed(HOST, tmp_path / "c.pem", tmp_path / "k.pem")
    assert raised.value.filename == str(tmp_path / existing)
    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_text() == "precious"


def test_file_appearing_meanwhile_is_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate created by someone else while the key is generated survives, and the key
    just written is taken back."""
    certificate = tmp_path / "c.pem"
    real = mailserver.tls._self_signed

    def racing(*args: object) -> x509.Certificate:
        certificate.write_text("someone else's")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(mailserver.tls, "_self_signed", racing)
    with pytest.raises(FileExistsError):
        write_self_signed(HOST, certificate, tmp_path / "k.pem")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pem"]
    assert certificate.read_text() == "someone else's"


def test_missing_directory(tmp_path: Path) -> None:
    """A missing directory raises FileNotFoundError naming the file asked for."""
    key = tmp_path / "no" / "k.pem"
    with pytest.raises(FileNotFoundError) as raised:
        write_self_signed(HOST, tmp_path / "c.pem", key)
    assert raised.value.filename == str(key)
    assert list(tmp_path.iterdir()) == []


def test_link_failure_names_the_file_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When linking the written file into place fails (a filesystem without hard links), the
    error names the file asked for, not the temporary one, which is gone."""

    def no_links(source: Path, target: Path) -> None:
        raise OSError(errno.EPERM, "Operation not permitted", str(source), None, str(target))

    monkeypatch.setattr(mailserver.tls.durable, "link", no_links)
    key = tmp_path / "k.pem"
    with pytest.raises(PermissionError) as raised:
        write_self_signed(HOST, tmp_path / "c.pem", key)
    assert raised.value.filename == str(key)
    assert raised.value.strerror == "Operation not permitted"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("hostname", "days", "same_file"),
    [("bücher.example", 1, False), (HOST, 0, False), (HOST, 1, True)],
)
def test_bad_arguments(tmp_path: Path, hostname: str, days: int, same_file: bool) -> None:
    """A non-ASCII hostname, fewer than one day, or one file for both are refused."""
    key = tmp_path / ("c.pem" if same_file else "k.pem")
    with pytest.raises(ValueError):
        write_self_signed(hostname, tmp_path / "c.pem", key, days=days)
    assert list(tmp_path.iterdir()) == []
