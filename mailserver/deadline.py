"""A timeout that is pushed back on every command and fires rarely.

Cancelling and re-creating a reactor timer for each command costs more than handling many
commands. :class:`Deadline` only records the new expiry time; its one reactor timer, when it
goes off early, reschedules itself for what remains, and it is moved sooner only when a
shorter deadline is set.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Deadline:
    def __init__(self, clock: IReactorTime, on_expiry: Callable[[], None]) -> None:
        self._clock = clock
        self._on_expiry = on_expiry
        self._expires = 0.0
        self._timer: IDelayedCall | None = None

    def set(self, seconds: float) -> None:
        """Expire ``seconds`` from now (replacing any earlier setting)."""
        now = self._clock.seconds()
        self._expires = now + seconds
        if self._timer is None:
            self._timer = self._clock.callLater(seconds, self._check)
        elif self._timer.getTime() > self._expires:
            self._timer.reset(seconds)

    def cancel(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        remaining = self._expires - self._clock.seconds()
        if remaining > 0:
            self._timer = self._clock.callLater(remaining, self._check)
            return
        self._timer = None
        self._on_expiry()
