"""SASL authentication exchanges for SMTP AUTH (RFC 4954) and POP3 AUTH (RFC 5034), no I/O.

Both protocols carry the same exchanges: the server sends base64 challenges, the client
answers each with one base64 line, "*" cancels, and an initial response may ride on the AUTH
command itself ("=" standing for an empty one). The protocols own those framing rules and
their replies; this module owns the mechanisms: decoding a response and saying what comes
next, another challenge or the credentials to check.

Mechanisms: PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login, which Outlook and many
older clients still use). Both send the password itself, so the protocols offer them only
inside TLS, or where the configuration allows plaintext. SCRAM is not offered: it needs
secrets stored in a second form next to the argon2 hashes.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from mailserver.address import AddressError, normalize

MECHANISMS = ("PLAIN", "LOGIN")


class SASLError(Exception):
    """The client's response is malformed (bad base64, missing NULs, not UTF-8)."""


@dataclass(frozen=True)
class Credentials:
    """What the client claims: check ``login`` and ``password``, then :func:`authorizes`."""

    login: str
    password: str
    authzid: str = ""  # SASL authorization identity; empty means the login's own
    mechanism: str = "PLAIN"

    def __repr__(self) -> str:  # never log a password by accident
        return f"Credentials(login={self.login!r}, mechanism={self.mechanism!r})"


def decode_response(line: bytes) -> bytes:
    """A client response line decoded from base64 (strictly: no stray characters)."""
    try:
        return binascii.a2b_base64(line, strict_mode=True) if line else b""
    except binascii.Error as error:
        raise SASLError("response is not valid base64") from error


CANCEL = b"*"  # RFC 4954 §4, RFC 5034 §4: the client's response that gives up the exchange


def decode_initial_response(text: str) -> bytes:
    """A response sent with the AUTH command itself: base64, where "=" stands for an empty
    one (RFC 4954 §4, RFC 5034 §4)."""
    if text == "=":
        return b""
    return decode_response(text.encode("ascii", "replace"))  # anything else is not base64


def encode_challenge(challenge: bytes) -> str:
    return binascii.b2a_base64(challenge, newline=False).decode("ascii")


class Exchange:
    """One exchange in progress: :meth:`start`, then :meth:`respond` to each decoded response.

    Each step returns the next challenge (raw bytes, for the protocol to encode) or, when
    the client has said everything, its :class:`Credentials`. Malformed responses raise
    :class:`SASLError`.
    """

    def __init__(self, mechanism: str) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._username: str | None = None

    def start(self, initial: bytes | None) -> bytes | Credentials:
        """Begin, with the decoded initial response if the client sent one."""
        if initial is None:
            # PLAIN's challenge is empty (RFC 4616 §2); LOGIN asks for the user name.
            return b"" if self.mechanism == "PLAIN" else b"Username:"
        return self.respond(initial)

    def respond(self, response: bytes) -> bytes | Credentials:
        if self.mechanism == "PLAIN":
            return _plain(response)
        text = _text(response)
        if self._username is None:
            if not text:
                raise SASLError("empty user name")
            self._username = text
            return b"Password:"
        return Credentials(self._username, text, mechanism="LOGIN")


def _text(response: bytes) -> str:
    try:
        return response.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SASLError("response is not UTF-8") from error


def _plain(message: bytes) -> Credentials:
    """RFC 4616 §2: ``[authzid] NUL authcid NUL passwd``."""
    parts = _text(message).split("\0")
    if len(parts) != 3:
        raise SASLError("PLAIN response needs exactly two NUL separators")
    authzid, authcid, password = parts
    if not authcid:
        raise SASLError("PLAIN response has an empty user name")
    return Credentials(authcid, password, authzid=authzid, mechanism="PLAIN")


def authorizes(credentials: Credentials, address: str) -> bool:
    """Whether the authenticated ``address`` may act as the identity the client asked for.

    RFC 4616 §2: a user may act only as itself here, so an authorization identity must name
    the same mailbox, as the login or as the address it resolves to.
    """
    authzid = credentials.authzid
    if not authzid or authzid in (credentials.login, address):
        return True
    try:
        return normalize(authzid) == address
    except AddressError:
        return False
