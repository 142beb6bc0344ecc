"""Connection limits shared by the listeners of one service: overall and per client address."""

from __future__ import annotations

import enum
from collections import Counter


class Admission(enum.Enum):
    ADMITTED = "admitted"
    TOO_MANY_FROM_CLIENT = "too-many-from-client"
    TOO_MANY_OVERALL = "too-many-overall"


class ConnectionLimiter:
    """Counts open connections; :meth:`admit` and :meth:`release` pair up per connection."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self._max_total = max_total
        self._max_per_client = max_per_client
        self._per_client: Counter[str] = Counter()
        self._total = 0

    def admit(self, client: str) -> Admission:
        if self._total >= self._max_total:
            return Admission.TOO_MANY_OVERALL
        if self._per_client[client] >= self._max_per_client:
            return Admission.TOO_MANY_FROM_CLIENT
        self._per_client[client] += 1
        self._total += 1
        return Admission.ADMITTED

    def release(self, client: str) -> None:
        self._total -= 1
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]

    @property
    def open_connections(self) -> int:
        return self._total
