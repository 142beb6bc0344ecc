"""Checking a login, the same way for every protocol (SMTP AUTH, POP3 USER/PASS and AUTH).

A check first waits out the delay the client's address has earned with failed logins
(:mod:`mailserver.authlimit`), then asks the user database, which takes the same time for an
unknown user as for a wrong password; then it applies the SASL rule that a user acts only as
itself (:func:`mailserver.sasl.authorizes`), records the outcome with the throttle and logs it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

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

        Cancelling the result (the client went away) cancels only the wait before the check:
        a check already under way runs to its end and is counted, so hanging up cannot make
        password guesses free of the delay. It fails only for trouble on our side (the user
        database is unavailable).
        """
        waiting: IDelayedCall | None = None

        def stop_waiting(_: Deferred[str | None]) -> None:
            if waiting is not None and waiting.active():
                waiting.cancel()

        result: Deferred[str | None] = Deferred(stop_waiting)

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

        def answer(outcome: str | Failure | None) -> None:
            if not result.called:  # else cancelled: nobody is waiting any more
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)

        def start() -> None:
            checked = self.users.authenticate(credentials.login, credentials.password)
            checked.addCallback(decided).addBoth(answer)  # counted even if cancelled

        wait = self.throttle.reserve(client)
        if wait > 0:
            waiting = self._clock.callLater(wait, start)
        else:
            start()
        return result
