"""Tests for mailserver.passwords: argon2id hashing, equal-time refusals, rehash detection."""

from __future__ import annotations

import time

import pytest
from argon2 import PasswordHasher

from mailserver.passwords import VERIFIED_TTL, Passwords

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class CountingHasher(PasswordHasher):
    """A cheap hasher that counts verifications."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # type: ignore[override]
        self.verifications += 1
        return super().verify(hash, password)


def test_default_is_argon2id_with_library_defaults() -> None:
    """Without a hasher, hashes are argon2id with argon2-cffi's default parameters."""
    defaults = PasswordHasher()
    stored = Passwords().hash("secret")
    assert stored.startswith("$argon2id$")
    assert f"m={defaults.memory_cost},t={defaults.time_cost},p={defaults.parallelism}" in stored


def test_verify_accepts_the_right_password_only() -> None:
    """A hash verifies its own password and refuses any other."""
    passwords = Passwords(CHEAP)
    stored = passwords.hash("secret")
    assert passwords.verify(stored, "secret")
    assert not passwords.verify(stored, "Secret")
    assert not passwords.verify(stored, "")


def test_hashes_are_salted() -> None:
    """The same password hashes differently each time."""
    passwords = Passwords(CHEAP)
    assert passwords.hash("secret") != passwords.hash("secret")


def test_missing_hash_costs_one_verification_and_is_refused() -> None:
    """No stored hash (unknown user) still runs one argon2 verification, then says no."""
    hasher = CountingHasher()
    passwords = Passwords(hasher)
    stored = passwords.hash("secret")
    hasher.verifications = 0
    assert not passwords.verify(None, "secret")
    assert hasher.verifications == 1
    assert not passwords.verify(stored, "wrong")
    assert hasher.verifications == 2


def test_dummy_password_does_not_open_a_missing_account() -> None:
    """Guessing the dummy hash's password gives nothing when there is no stored hash."""
    passwords = Passwords(CHEAP)
    assert not passwords.verify(None, "dummy password for unknown users")


def test_dummy_hash_is_computed_once() -> None:
    """The dummy hash is made on first use and reused afterwards."""
    passwords = Passwords(CHEAP)
    passwords.verify(None, "x")
    first = passwords._dummy_hash
    passwords.verify(None, "y")
    assert first is not None and passwords._dummy_hash is first


def test_malformed_hash_is_a_refusal() -> None:
    """A corrupt stored hash refuses the login instead of raising."""
    passwords = Passwords(CHEAP)
    assert not passwords.verify("not a hash", "secret")
    assert passwords.needs_rehash("not a hash")


def test_needs_rehash_when_parameters_change() -> None:
    """A hash made with other parameters than the current ones needs rehashing."""
    old = Passwords(CHEAP).hash("secret")
    current = Passwords(PasswordHasher(time_cost=2, memory_cost=8, parallelism=1))
    assert current.needs_rehash(old)
    assert not current.needs_rehash(current.hash("secret"))
    assert current.verify(old, "secret")


def test_a_verified_login_is_remembered() -> None:
    """After one successful verification the same password is accepted without argon2; a
    wrong password still costs a full verification every time."""
    hasher = CountingHasher()
    passwords = Passwords(hasher)
    stored = passwords.hash("secret")
    assert passwords.verify(stored, "secret")
    assert hasher.verifications == 1
    assert passwords.verify(stored, "secret")
    assert hasher.verifications == 1
    assert not passwords.verify(stored, "wrong")
    assert not passwords.verify(stored, "wrong")
    assert hasher.verifications == 3


def test_remembered_login_is_tied_to_the_stored_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new password (a new stored hash) is not covered by an old success, and a success is
    remembered for VERIFIED_TTL seconds only."""
    hasher = CountingHasher()
    passwords = Passwords(hasher)
    old, new = passwords.hash("secret"), passwords.hash("secret")
    assert passwords.verify(old, "secret")
    assert passwords.verify(new, "secret")
    assert hasher.verifications == 2
    now = [time.monotonic() + VERIFIED_TTL + 1]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    assert passwords.verify(old, "secret")
    assert hasher.verifications == 3
