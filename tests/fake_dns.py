"""In-memory DNS for unit tests, at the level of :class:`mailserver.dnsquery.DNSQuery`: records
answered at once from a table, or the exception a look-up should fail with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import dns

from mailserver.dnsquery import NoSuchName


class FakeTexts:
    """TXT records by name, for code that only asks ``texts``; every name asked is noted."""

    def __init__(self, records: Mapping[str, list[bytes] | Exception]) -> None:
        self.records = records
        self.asked: list[str] = []

    async def texts(self, name: str) -> list[bytes]:
        self.asked.append(name)
        found = self.records.get(name, [])
        result: Deferred[list[bytes]] = (
            fail(found) if isinstance(found, Exception) else succeed(found)
        )
        return await result


class TextsFromRecords:
    """``texts`` as DNSQuery gives it, from the fake's own ``records``."""

    async def records(self, kind: int, name: str) -> list[Any]:
        raise NotImplementedError

    async def texts(self, name: str) -> list[bytes]:
        try:
            found = await self.records(dns.TXT, name)
        except NoSuchName:
            return []
        return [b"".join(record.data) for record in found]


class FakeDNS(TextsFromRecords):
    """Records by (type, name); a value that is an exception is raised instead."""

    def __init__(self, records: Mapping[tuple[int, str], Sequence[Any] | Exception]) -> None:
        self.zone = dict(records)

    async def records(self, kind: int, name: str) -> list[Any]:
        found = self.zone.get((kind, name.lower()))
        if found is None:
            raise NoSuchName(name)
        result: Deferred[list[Any]] = (
            fail(found) if isinstance(found, Exception) else succeed(list(found))
        )
        return await result


def txt(*texts: str) -> list[dns.Record_TXT]:
    return [dns.Record_TXT(text.encode()) for text in texts]
