"""DKIM signing keys: making them, reading them, and the DNS record that publishes each one.

Keys are PEM files: RSA (RFC 6376 §3.3.3: 2048 bits is what we make; 1024 is the least any
verifier accepts) or Ed25519 (RFC 8463). The algorithm is read from the key itself, so the
configuration only names the file. Files that other tools made load too (``opendkim-genkey``
writes PKCS#1 RSA keys; ``openssl genpkey`` writes PKCS#8).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = 2048
MIN_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers must refuse shorter keys


class KeyFileError(Exception):
    """A key file cannot be used; the message says why, in a few words."""


@dataclass(frozen=True)
class SigningKey:
    """One loaded key: how to sign with it, and what DNS must publish."""

    algorithm: bytes  # the a= tag: b"rsa-sha256" or b"ed25519-sha256"
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    public: bytes  # the p= tag's value: base64 of the public key

    def sign(self, digest: bytes) -> bytes:
        """The signature over the SHA-256 ``digest`` of the signed header fields."""
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            # RFC 8463 §3: PureEdDSA over the SHA-256 hash, not over the data itself.
            return self.private_key.sign(digest)
        return self.private_key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))

    @property
    def key_type(self) -> str:
        """The k= tag of the DNS record."""
        return "ed25519" if self.algorithm == b"ed25519-sha256" else "rsa"

    def dns_record(self) -> str:
        """The TXT record text for ``SELECTOR._domainkey.DOMAIN`` (RFC 6376 §3.6.1)."""
        return f"v=DKIM1; k={self.key_type}; p={self.public.decode('ascii')}"


def generate(algorithm: str) -> bytes:
    """A new private key as PKCS#8 PEM: ``"rsa"`` (2048 bits) or ``"ed25519"``."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown key algorithm {algorithm!r}")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_new_key(path: Path, algorithm: str) -> SigningKey:
    """Generate a key into ``path``, created 0600; never overwrites (FileExistsError)."""
    pem = generate(algorithm)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
        file.flush()
        os.fsync(file.fileno())
    return parse_key(pem)


def load_key(path: Path) -> SigningKey:
    """Read a key file; raises :class:`KeyFileError` naming what is wrong."""
    try:
        pem = path.read_bytes()
    except OSError as error:
        raise KeyFileError(f'cannot read "{path}": {error.strerror}') from None
    return parse_key(pem)


def parse_key(pem: bytes) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise KeyFileError("not an unencrypted PEM private key") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        # RFC 8463 §4.2: p= is the bare 32-octet public key, in base64.
        return SigningKey(b"ed25519-sha256", key, base64.b64encode(public))
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(f"an RSA key of {key.key_size} bits is too short (at least 1024)")
        # RFC 6376 §3.6.1: p= holds the SubjectPublicKeyInfo, DER, in base64.
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return SigningKey(b"rsa-sha256", key, base64.b64encode(public))
    raise KeyFileError("neither an RSA nor an Ed25519 key")
