"""Password hashing with argon2id (RFC 9106) through argon2-cffi.

Every function here is CPU-bound and takes tens of milliseconds with the library's default
parameters: call it from a worker thread, never from the reactor thread. The user database
does so through its thread pool; the admin command calls it directly.

Equal time for unknown users: :meth:`Passwords.verify` given no stored hash verifies the
password against a dummy hash (made once, with the current parameters) and answers False, so
an unknown login costs the same argon2 work as a wrong password and cannot be told apart by
timing.
"""

from __future__ import annotations

import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["Passwords"]


class Passwords:
    """Hash and verify passwords; thread-safe.

    ``hasher`` defaults to ``argon2.PasswordHasher()`` (argon2id with the library's current
    default parameters, which follow RFC 9106's recommendations). Tests pass a cheap one.
    """

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher if hasher is not None else PasswordHasher()
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()

    def hash(self, password: str) -> str:
        """The argon2id hash (PHC string, with its own random salt) to store for ``password``."""
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored_hash``; None (no such user) is always False.

        Always does one full argon2 verification, against a dummy hash when ``stored_hash``
        is None, so both refusals take the same time. A malformed stored hash is a refusal.
        """
        dummy = self._dummy()
        try:
            matches = self._hasher.verify(
                stored_hash if stored_hash is not None else dummy, password
            )
        except (VerificationError, InvalidHashError):
            # VerifyMismatchError (the usual wrong password) is a VerificationError.
            return False
        # Whoever guesses the dummy's password is still nobody.
        return matches and stored_hash is not None

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
