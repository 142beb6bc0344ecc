"""Password hashing with argon2id (RFC 9106) through argon2-cffi.

Every function here is CPU-bound and takes tens of milliseconds with the library's default
parameters: call it from a worker thread, never from the reactor thread. The user database
does so through its thread pool; the admin command calls it directly.

Equal time for unknown users: :meth:`Passwords.verify` given no stored hash verifies the
password against a dummy hash (made once, with the current parameters) and answers False, so
an unknown login costs the same argon2 work as a wrong password and cannot be told apart by
timing.

Repeated logins: a mail client logs in every few minutes with the same password, and argon2
is slow and memory-hungry by design. After a successful verification, a keyed digest of the
stored hash and the password is remembered for :data:`VERIFIED_TTL` seconds, so the same
login is then checked in microseconds. Only successes are remembered: a wrong password or an
unknown user always costs a full argon2 verification. Changing the password changes the
stored hash, which no remembered digest matches.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["Passwords"]

VERIFIED_TTL = 3600.0  # seconds a successful verification is remembered
VERIFIED_MAX = 10_000  # remembered verifications, at most


class Passwords:
    """Hash and verify passwords; thread-safe.

    ``hasher`` defaults to ``argon2.PasswordHasher()`` (argon2id with the library's current
    default parameters, which follow RFC 9106's recommendations). Tests pass a cheap one.
    """

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher if hasher is not None else PasswordHasher()
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()
        self._key = secrets.token_bytes(32)  # per process: digests are useless elsewhere
        self._verified: dict[bytes, float] = {}

    def hash(self, password: str) -> str:
        """The argon2id hash (PHC string, with its own random salt) to store for ``password``."""
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored_hash``; None (no such user) is always False.

        Always does one full argon2 verification, against a dummy hash when ``stored_hash``
        is None, so both refusals take the same time. A malformed stored hash is a refusal.
        """
        if stored_hash is not None:
            digest = self._digest(stored_hash, password)
            verified_at = self._verified.get(digest)
            if verified_at is not None and time.monotonic() - verified_at < VERIFIED_TTL:
                return True
        dummy = self._dummy()
        try:
            matches = self._hasher.verify(
                stored_hash if stored_hash is not None else dummy, password
            )
        except (VerificationError, InvalidHashError):
            # VerifyMismatchError (the usual wrong password) is a VerificationError.
            return False
        # Whoever guesses the dummy's password is still nobody.
        if not (matches and stored_hash is not None):
            return False
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[digest] = time.monotonic()
        return True

    def _digest(self, stored_hash: str, password: str) -> bytes:
        message = stored_hash.encode() + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.digest(self._key, message, hashlib.sha256)

    def needs_rehash(self, stored_hash: str) -> bool:
        """Whether ``stored_hash`` was made with other parameters than the current ones."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True

    def _dummy(self) -> str:
        # Made on first use, under a lock: the first call of all pays for it, whatever the
        # outcome of that login, so no single kind of refusal is slower.
        if self._dummy_hash is None:
            with self._dummy_lock:
                if self._dummy_hash is None:
                    self._dummy_hash = self._hasher.hash("dummy password for unknown users")
        return self._dummy_hash
