"""Throttled, logged login checks shared by SMTP and POP3 (mailserver.logins)."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from mailserver.authlimit import LoginThrottle
from mailserver.logins import LoginChecker
from mailserver.memory import MemoryUserDatabase
from mailserver.sasl import Credentials

ALICE = "alice@example.org"
CLIENT = "192.0.2.1"


class LoginCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.users = MemoryUserDatabase(
            domains=["example.org"], users={ALICE: "secret", "bob@example.org": "pw"}
        )
        self.throttle = LoginThrottle(self.clock)
        self.logins = LoginChecker(self.users, self.throttle, self.clock)

    def check(self, credentials: Credentials) -> Deferred[str | None]:
        return self.logins.check("pop3", CLIENT, credentials)

    def test_success_gives_the_address_and_is_logged(self) -> None:
        """Right credentials fire with the mailbox address (on the next turn of the clock)
        and log one "login" event with protocol, address, client and mechanism."""
        with capturedLogs() as events:
            result = self.check(Credentials("alice", "secret", mechanism="LOGIN"))
            self.clock.advance(0)
        self.assertEqual(self.successResultOf(result), ALICE)
        [event] = events
        self.assertEqual(event["login_event"], "login")
        self.assertEqual(
            (event["protocol"], event["address"], event["client"], event["mechanism"]),
            ("pop3", ALICE, CLIENT, "LOGIN"),
        )

    def test_failure_gives_none_is_logged_and_delays_the_next(self) -> None:
        """A wrong password fires with None, logs one "login-failed" event with the login
        tried, and the client's next attempt waits out the throttle delay."""
        with capturedLogs() as events:
            result = self.check(Credentials("alice", "wrong", mechanism="USER"))
            self.clock.advance(0)
        self.assertIsNone(self.successResultOf(result))
        [event] = events
        self.assertEqual(event["login_event"], "login-failed")
        self.assertEqual((event["login"], event["mechanism"]), ("alice", "USER"))
        following = self.check(Credentials("alice", "secret"))
        self.clock.advance(1.9)
        self.assertNoResult(following)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(following), ALICE)

    def test_unknown_user_is_a_failure_like_a_wrong_password(self) -> None:
        """An unknown login is None and counted against the client, like a wrong password."""
        result = self.check(Credentials("nobody", "secret"))
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(result))
        self.assertGreater(self.throttle.reserve(CLIENT), 0)

    def test_authorization_identity_of_another_user_fails(self) -> None:
        """RFC 4616 §2: the right password with an authzid naming someone else is a failed
        login (None, logged, counted); naming oneself is fine."""
        with capturedLogs() as events:
            other = self.check(Credentials("alice", "secret", authzid="bob@example.org"))
            self.clock.advance(0)
        self.assertIsNone(self.successResultOf(other))
        self.assertEqual([event["login_event"] for event in events], ["login-failed"])
        self.clock.advance(100)  # past the delay the failure earned
        own = self.check(Credentials("alice", "secret", authzid="Alice@Example.ORG"))
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(own), ALICE)

    def test_cancel_during_the_wait_checks_nothing(self) -> None:
        """Cancelling while the throttle delay runs (the client left) stops it: the password
        is never checked, nothing is logged or counted, and no timer is left."""
        self.throttle.failed(CLIENT, "alice")
        checked: list[str] = []

        def authenticate(login: str, password: str) -> Deferred[str | None]:
            checked.append(login)
            raise AssertionError("must not be called")

        self.users.authenticate = authenticate  # type: ignore[method-assign]
        with capturedLogs() as events:
            result = self.check(Credentials("alice", "secret"))
            self.assertEqual(len(self.clock.getDelayedCalls()), 1)
            result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((checked, list(events)), ([], []))

    def test_user_database_trouble_fails_the_check(self) -> None:
        """If the user database fails, the result fails with its error (our trouble, not the
        client's): no login-failed event and no failure counted against the client."""
        broken: Deferred[str | None] = fail(OSError("gone"))
        self.users.authenticate = lambda login, password: broken  # type: ignore[method-assign]
        with capturedLogs() as events:
            result = self.check(Credentials("alice", "secret"))
            self.clock.advance(0)
        self.failureResultOf(result, OSError)
        self.assertEqual(list(events), [])
        self.assertEqual(self.throttle.reserve(CLIENT), 0)

    def test_cancel_during_the_check_still_counts_it(self) -> None:
        """A client that hangs up while its password is being checked gets no answer, but
        the outcome is counted and logged: hanging up does not make guesses free."""
        pending: Deferred[str | None] = Deferred()
        self.users.authenticate = lambda login, password: pending  # type: ignore[method-assign]
        with capturedLogs() as events:
            result = self.check(Credentials("alice", "wrong"))
            result.cancel()
            self.failureResultOf(result, CancelledError)
            pending.callback(None)
        self.assertEqual([event["login_event"] for event in events], ["login-failed"])
        self.assertGreater(self.throttle.reserve(CLIENT), 0)
