"""Slowing down password guessing: failed logins delay the next attempts from that address.

Each client address with recent failures has an entry: how many failures in a row, and the
earliest time its next attempt may be checked. Every attempt first asks :meth:`reserve` how
long to wait; the delay grows with the failures (by default 0, 2, 4, 8, then 15 s each) and
attempts from one address are spaced out one after the other, so opening many connections
at once gains nothing. A success forgets the failures of the login that succeeded, not the
others': whoever owns one account cannot reset the delay between guesses at another.

Memory is bounded: an entry is forgotten once it has been quiet for ``forget_after`` seconds,
and past ``max_entries`` addresses the oldest is dropped. The clock is injected (any object
with ``seconds()``, such as the reactor or a ``twisted.internet.task.Clock``), so tests
advance time instead of sleeping. Protocol-neutral: SMTP AUTH can share one instance with POP3.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

DEFAULT_DELAYS: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0, 15.0)


@dataclass
class _Entry:
    failures: Counter[str]  # per login name tried
    not_before: float  # the next attempt is checked no earlier than this
    last_seen: float


class LoginThrottle:
    """Per-client-address failed-login tracking with increasing delays."""

    def __init__(
        self,
        clock: IReactorTime,
        delays: Sequence[float] = DEFAULT_DELAYS,
        forget_after: float = 3600.0,
        max_entries: int = 100_000,
    ) -> None:
        if not delays:
            raise ValueError("delays must not be empty")
        self._clock = clock
        self._delays = tuple(delays)
        self._forget_after = forget_after
        self._max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently seen first

    def delay(self, failures: int) -> float:
        """The spacing between attempts after ``failures`` failures in a row."""
        return self._delays[min(failures, len(self._delays) - 1)]

    def reserve(self, client: str) -> float:
        """Seconds to wait before checking an attempt from ``client`` that arrives now.

        The attempt takes the next free slot: a further attempt arriving before this one
        is decided waits one more delay after it.
        """
        now = self._clock.seconds()
        self._expire(now)
        entry = self._entries.get(client)
        if entry is None:
            return 0.0
        start = max(now, entry.not_before)
        entry.not_before = start + self.delay(entry.failures.total())
        self._touch(client, entry, now)
        return start - now

    def failed(self, client: str, login: str) -> None:
        """An attempt from ``client`` to log in as ``login`` failed: its next ones wait longer."""
        now = self._clock.seconds()
        entry = self._entries.get(client)
        if entry is None:
            entry = _Entry(failures=Counter(), not_before=now, last_seen=now)
        entry.failures[login.casefold()] += 1
        entry.not_before = max(entry.not_before, now + self.delay(entry.failures.total()))
        self._touch(client, entry, now)
        self._expire(now)

    def succeeded(self, client: str, login: str) -> None:
        """``client`` logged in as ``login``: forget that login's failures."""
        entry = self._entries.get(client)
        if entry is None:
            return
        entry.failures.pop(login.casefold(), None)
        if not entry.failures:
            del self._entries[client]

    def __len__(self) -> int:
        return len(self._entries)

    def _touch(self, client: str, entry: _Entry, now: float) -> None:
        entry.last_seen = now
        self._entries[client] = entry
        self._entries.move_to_end(client)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            client, oldest = next(iter(entries.items()))
            quiet_since = max(oldest.last_seen, oldest.not_before)
            if len(entries) <= self._max_entries and now - quiet_since < self._forget_after:
                break
            del entries[client]
