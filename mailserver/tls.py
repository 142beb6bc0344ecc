"""The server's TLS contexts, built from a certificate and a key file and reloaded when they change.

Certificates are renewed behind the server's back (certbot, acme.sh, an operator's ``cp``), so
:class:`ServerTLS` checks the files before each new connection and picks up a renewal without a
restart. A renewal that cannot be loaded (a half-written file, a key that does not match yet)
is logged and the previous certificate stays in use: a bad renewal must not take mail down.

The files are tiny and read in the calling thread.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from mailserver import durable

__all__ = [
    "ServerTLS",
    "TLSFileError",
    "TLSFiles",
    "describe_connection",
    "load_context",
    "write_self_signed",
]

log = Logger(namespace="mailserver.tls")

# TLS 1.2 suites: forward-secret (ECDHE) AEAD only, as in Mozilla's "intermediate" profile.
# The DHE suites of that profile are left out: pyOpenSSL cannot turn on OpenSSL's automatic DH
# parameters, so they could never be chosen. TLS 1.3 keeps OpenSSL's defaults (all AEAD, all FS).
_TLS12_CIPHERS = b":".join(
    [
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-CHACHA20-POLY1305",
    ]
)
_OPTIONS = (
    SSL.OP_NO_COMPRESSION  # CRIME
    | SSL.OP_NO_RENEGOTIATION  # client-initiated renegotiation costs us CPU, gives nothing
    | SSL.OP_SINGLE_ECDH_USE
    | SSL.OP_SINGLE_DH_USE
)
_SESSION_ID_CONTEXT = b"mailserver"

_CERTIFICATE_PEM = re.compile(rb"-----BEGIN (?:X509 |TRUSTED )?CERTIFICATE-----")
_PRIVATE_KEY_PEM = re.compile(rb"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----")


@dataclass(frozen=True)
class TLSFiles:
    """Where the server's certificate and key live."""

    certificate: Path  # PEM: the leaf certificate first, then any intermediates (a fullchain.pem)
    private_key: Path  # PEM private key (RSA or EC), unencrypted


class TLSFileError(Exception):
    """A certificate or key file cannot be used; ``str()`` is one line naming the file and why."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def _quoted(path: Path) -> str:
    return f'"{path}"'


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSFileError(path, f"cannot read {_quoted(path)}: {error.strerror}") from None


def _load_certificates(path: Path) -> list[x509.Certificate]:
    data = _read(path)
    if not _CERTIFICATE_PEM.search(data):
        raise TLSFileError(path, f"{_quoted(path)} holds no PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSFileError(path, f"{_quoted(path)} holds a damaged PEM certificate") from None


def _load_private_key(path: Path) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    data = _read(path)
    if not _PRIVATE_KEY_PEM.search(data):
        raise TLSFileError(path, f"{_quoted(path)} holds no PEM private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSFileError(
            path, f"{_quoted(path)} holds an encrypted private key; the server needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSFileError(path, f"{_quoted(path)} holds a damaged PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TLSFileError(
            path,
            f"{_quoted(path)} holds a kind of private key clients rarely accept; "
            "use an RSA or EC key",
        )
    return key


def _load(files: TLSFiles) -> tuple[SSL.Context, x509.Certificate]:
    """The context and the leaf certificate it serves."""
    chain = _load_certificates(files.certificate)
    key = _load_private_key(files.private_key)
    leaf = chain[0]
    public_key = key.public_key()
    if leaf.public_key() != public_key:
        if any(certificate.public_key() == public_key for certificate in chain[1:]):
            raise TLSFileError(
                files.certificate,
                f"{_quoted(files.certificate)} must list the certificate of "
                f"{_quoted(files.private_key)} first, before the intermediates",
            )
        raise TLSFileError(
            files.private_key,
            f"{_quoted(files.private_key)} does not hold the private key of "
            f"{_quoted(files.certificate)}",
        )
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(_OPTIONS)
    context.set_cipher_list(_TLS12_CIPHERS)
    context.set_session_id(_SESSION_ID_CONTEXT)
    try:
        context.use_certificate(leaf)
        for intermediate in chain[1:]:
            context.add_extra_chain_cert(intermediate)
    except SSL.Error as error:  # e.g. a key too small for OpenSSL's security level
        raise TLSFileError(
            files.certificate, f"OpenSSL refuses {_quoted(files.certificate)}: {_reason(error)}"
        ) from None
    try:
        context.use_privatekey(key)
        context.check_privatekey()
    except SSL.Error as error:
        raise TLSFileError(
            files.private_key, f"OpenSSL refuses {_quoted(files.private_key)}: {_reason(error)}"
        ) from None
    return context, leaf


def _reason(error: SSL.Error) -> str:
    """OpenSSL's reason text, e.g. ``ee key too small``, from pyOpenSSL's list of tuples."""
    reasons = [entry[2] for entry in error.args[0] if isinstance(entry, tuple) and len(entry) == 3]
    return "; ".join(str(reason) for reason in reasons) or str(error)


def load_context(files: TLSFiles) -> SSL.Context:
    """Build a server context: TLS 1.2 minimum, forward-secret AEAD suites only for TLS 1.2
    (TLS 1.3 defaults), the certificate chain, the key checked against the certificate.

    Raises :class:`TLSFileError` when a file cannot be used.
    """
    return _load(files)[0]


_Signature = tuple[tuple[int, ...], tuple[int, ...]]


def _stat(path: Path) -> tuple[int, ...]:
    try:
        st = os.stat(path)
    except OSError as error:
        return (-1, error.errno or 0)
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _signature(files: TLSFiles) -> _Signature:
    """What changes when either file is rewritten or replaced (os.stat follows the symlinks a
    certbot ``live/`` directory uses, so a renewal changes the inode seen here)."""
    return (_stat(files.certificate), _stat(files.private_key))


def _describe(leaf: x509.Certificate) -> str:
    return f"serial {leaf.serial_number:x}, valid until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z"


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Creates server TLS connections from ``files``, reloading them when they change."""

    def __init__(self, files: TLSFiles) -> None:
        """Load the files at once; raises :class:`TLSFileError` when they cannot be used."""
        self.files = files
        # Taken before reading, so a change made while reading is seen at the next connection.
        self._seen = _signature(files)
        self._context, leaf = _load(files)
        log.info(
            "TLS certificate {certificate} loaded ({leaf})",
            certificate=str(files.certificate),
            leaf=_describe(leaf),
        )

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """A connection for one new TLS session, after picking up changed files."""
        signature = _signature(self.files)
        if signature != self._seen:
            # Remember the attempt, not only a success: a broken file is reported once, and
            # tried again only when it changes again.
            self._seen = signature
            self._reload()
        return SSL.Connection(self._context, None)

    def reload(self) -> bool:
        """Reload now even if the files look unchanged (for SIGHUP).

        True when the new files are in use; False, with an error logged, when they could not
        be loaded and the previous ones stay in use.
        """
        self._seen = _signature(self.files)
        return self._reload()

    def _reload(self) -> bool:
        try:
            context, leaf = _load(self.files)
        except TLSFileError as error:
            log.error(
                "TLS files not reloaded, still using the previous certificate: {error}",
                error=str(error),
            )
            return False
        self._context = context
        log.info(
            "TLS certificate {certificate} reloaded ({leaf})",
            certificate=str(self.files.certificate),
            leaf=_describe(leaf),
        )
        return True


def describe_connection(transport: object) -> str | None:
    """The TLS part of a Received header, as Postfix writes it (RFC 3848 leaves it free):
    ``TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)``.

    None when the transport is not TLS or its handshake is not done.
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    connection = get_handle()
    if not isinstance(connection, SSL.Connection):
        return None
    # Both Finished messages have passed only once the handshake is complete.
    if connection.get_finished() is None or connection.get_peer_finished() is None:
        return None
    cipher = connection.get_cipher_name()
    bits = connection.get_cipher_bits()
    if cipher is None or bits is None:
        return None
    # Postfix writes "secret bits/algorithm bits"; they differ only for export-grade ciphers,
    # which OpenSSL no longer offers, and pyOpenSSL reports only the first.
    return f"{connection.get_protocol_version_name()} with cipher {cipher} ({bits}/{bits} bits)"


def write_self_signed(hostname: str, certificate: Path, private_key: Path, days: int = 365) -> None:
    """Write a self-signed certificate for ``hostname`` (ASCII, A-labels) and its key, for testing.

    The key is RSA-2048 rather than EC P-256: a self-signed certificate is for trying the server
    with whatever clients are at hand, and every TLS client, however old, speaks RSA. SHA-256,
    subjectAltName DNS:hostname (what clients check) and CN hostname; valid from an hour ago (for
    clocks running behind) for ``days`` days.

    Each file is written under a temporary name in its directory, then linked to its name: the
    link fails if the name exists, so an existing file is never overwritten (FileExistsError,
    naming it), not even one created meanwhile. The key is created with mode 0600, so it is
    never readable by others, not even briefly. On failure nothing new is left behind.
    """
    if not hostname.isascii():
        raise ValueError(f"{hostname!r}: give the hostname in its ASCII (A-label) form")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    certificate, private_key = Path(certificate), Path(private_key)
    if os.path.abspath(certificate) == os.path.abspath(private_key):
        raise ValueError("the certificate and the private key need two different files")
    for path in (certificate, private_key):
        if os.path.lexists(path):
            raise _exists(path)  # before the work of generating a key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    certificate_pem = _self_signed(hostname, key, days).public_bytes(serialization.Encoding.PEM)
    _write_new(private_key, key_pem, 0o600)
    try:
        _write_new(certificate, certificate_pem, 0o644)
    except BaseException:
        durable.remove_quietly(private_key)
        durable.fsync_directory(private_key.parent)
        raise


def _self_signed(hostname: str, key: rsa.RSAPrivateKey, days: int) -> x509.Certificate:
    # A CN is limited to 64 characters (RFC 5280 ub-common-name); a longer name goes in the
    # subjectAltName alone, which is what clients check anyway (RFC 6125 §6.4.4).
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, hostname)] if len(hostname) <= 64 else []
    name = x509.Name(attributes)
    now = datetime.now(UTC)
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=not attributes
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _exists(path: Path) -> FileExistsError:
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` as a new file ``path`` created with ``mode``; never replaces a file."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as error:
        # Name the file the caller asked for, not our temporary name.
        raise type(error)(error.errno, error.strerror, str(path)) from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            durable.fsync_file(fd)
        finally:
            os.close(fd)
        try:
            durable.link(temporary, path)
        except FileExistsError:
            raise _exists(path) from None
        except OSError as error:  # the temporary name, gone by now, would only puzzle
            raise type(error)(error.errno, error.strerror, str(path)) from None
    finally:
        durable.remove_quietly(temporary)
    durable.fsync_directory(path.parent)
