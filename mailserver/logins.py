"""Checking a login, the same way for every protocol (SMTP AUTH, POP3 USER/PASS and AUTH).

A check first waits out the delay the client's address has earned with failed logins
(:mod:`mailserver.authlimit`), then asks the user database, which takes the same time for an
unknown user as for a wrong password; then it applies the SASL rule that a user acts only as
itself (:func:`mailserver.sasl.authorizes`), records the outcome with the throttle and logs it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from mailserver import events
from mailserver.authlimit import LoginThrottle
from mailserver.interfaces import IUserDatabase
from mailserver.sasl import Credentials, authorizes


class LoginChecker:
    """Throttled credential checks; one instance shared by every protocol's listeners, so
    guesses spread over SMTP and POP3 share one delay."""

    def __init__(self, users: IUserDatabase, throttle: LoginThrottle, clock: IReactorTime) -> None:
        self.users = users
        self.throttle = throttle
        self._clock = clock

    def check(self, protocol: str, client: str, credentials: Credentials) -> Deferred[str | None]:
        """The mailbox address the credentials log in to, or None.

        Cancelling the result (the client went away) cancels the wait before the check.
        It fails only for trouble on our side (the user database is unavailable).
        """
        wait = self.throttle.reserve(client)
        ready: Deferred[None] = (
            deferLater(self._clock, wait, lambda: None) if wait > 0 else succeed(None)
        )

        def check(_: None) -> Deferred[str | None]:
            return self.users.authenticate(credentials.login, credentials.password)

        def decided(address: str | None) -> str | None:
            if address is not None and not authorizes(credentials, address):
                address = None
            if address is None:
                self.throttle.failed(client, credentials.login)
                events.login_failed(
                    protocol=protocol,
                    login=credentials.login,
                    client=client,
                    mechanism=credentials.mechanism,
                )
            else:
                self.throttle.succeeded(client, credentials.login)
                events.logged_in(
                    protocol=protocol,
                    address=address,
                    client=client,
                    mechanism=credentials.mechanism,
                )
            return address

        return ready.addCallback(check).addCallback(decided)
