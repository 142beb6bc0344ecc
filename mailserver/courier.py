"""The SMTP courier: delivers queued messages for one domain to the servers that take its mail.

It asks the router (:mod:`mailserver.routing`) for the servers to try, in order, and opens a
connection to the first that answers; several messages for the domain then go over that one
connection (:mod:`mailserver.smtp.client`). A server that cannot be reached, or that will not
start a session, is passed over for the next (RFC 5321 §5.1: every MX is tried before the
attempt is given up); a server that answers a recipient or a message, for good or for now,
has the last word on it. It never decides when to try again: the queue runner does, from the
outcomes alone.

A connection that has sent its messages stays open for :data:`KEEP_IDLE` seconds, and the
next messages for the same domain go over it: a busy destination costs one connection and one
EHLO for many batches, not one per batch. Servers close idle clients after minutes, not
seconds, so a kept connection is very rarely found closed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from mailserver.interfaces import (
    DeliveryOutcome,
    ICourier,
    OutboundMessage,
    RecipientResult,
    ReplyInfo,
)
from mailserver.routing import Router, RoutingError
from mailserver.smtp.client import ConnectFailed, SMTPConnection, connect
from mailserver.smtp.client_session import ClientSettings

log = Logger()

KEEP_IDLE = 2.0  # seconds an idle connection waits for more messages to its domain


@implementer(ICourier)
class SMTPCourier:
    def __init__(
        self,
        router: Router,
        settings: ClientSettings,
        reactor: Any,
        pool: ThreadPool | None = None,
        domain_settings: Mapping[str, ClientSettings] | None = None,
    ) -> None:
        self._pool = pool
        self._router = router
        self._settings = settings
        self._domain_settings = dict(domain_settings or {})
        self._reactor = reactor
        self._idle: dict[str, list[tuple[SMTPConnection, IDelayedCall]]] = {}

    def deliver(
        self, domain: str, messages: Sequence[OutboundMessage]
    ) -> Deferred[list[list[RecipientResult]]]:
        return Deferred.fromCoroutine(self._deliver(domain, list(messages)))

    async def _deliver(
        self, domain: str, messages: list[OutboundMessage]
    ) -> list[list[RecipientResult]]:
        results: list[list[RecipientResult] | None] = [None] * len(messages)
        while None in results and (kept := self._take_idle(domain)) is not None:
            await self._send(kept, messages, results)
            self._keep(domain, kept)
        if None not in results:
            return [result for result in results if result is not None]
        settings = self._domain_settings.get(domain, self._settings)
        try:
            hops = await self._router.hops(domain)
        except RoutingError as error:
            outcome = DeliveryOutcome.PERMANENT if error.permanent else DeliveryOutcome.TRANSIENT
            return [
                result if result is not None else _all(message, outcome, error.reply, None)
                for message, result in zip(messages, results, strict=True)
            ]
        last_problem = ReplyInfo(451, "4.4.1", f"No server for {domain} could be reached")
        last_host: str | None = None
        for hop in hops:
            if None not in results:
                break
            try:
                connection = await connect(
                    self._reactor, hop.address, hop.port, hop.name, settings, pool=self._pool
                )
            except ConnectFailed as error:
                log.info(
                    "outbound: {host} [{address}]:{port} passed over: {reply}",
                    host=hop.name,
                    address=hop.address,
                    port=hop.port,
                    reply=str(error.reply),
                )
                last_problem, last_host = error.reply, hop.name
                continue
            await self._send(connection, messages, results)
            self._keep(domain, connection)
        return [
            result
            if result is not None
            else _all(messages[index], DeliveryOutcome.TRANSIENT, last_problem, last_host)
            for index, result in enumerate(results)
        ]

    async def _send(
        self,
        connection: SMTPConnection,
        messages: list[OutboundMessage],
        results: list[list[RecipientResult] | None],
    ) -> None:
        """Send the messages without a result yet, while the connection lasts (once lost,
        the rest go over another)."""
        for index, message in enumerate(messages):
            if results[index] is None:
                if not connection.usable:
                    return
                results[index] = await connection.send(message)

    def _keep(self, domain: str, connection: SMTPConnection) -> None:
        if not connection.usable:
            return
        timer = self._reactor.callLater(KEEP_IDLE, self._expire, domain, connection)
        self._idle.setdefault(domain, []).append((connection, timer))

    def _take_idle(self, domain: str) -> SMTPConnection | None:
        kept = self._idle.get(domain)
        while kept:
            connection, timer = kept.pop()
            if timer.active():
                timer.cancel()
            if connection.usable:
                return connection
            connection.close()
        self._idle.pop(domain, None)
        return None

    def _expire(self, domain: str, connection: SMTPConnection) -> None:
        kept = self._idle.get(domain, [])
        self._idle[domain] = [(c, timer) for c, timer in kept if c is not connection]
        if not self._idle[domain]:
            del self._idle[domain]
        connection.close()


def _all(
    message: OutboundMessage, outcome: DeliveryOutcome, reply: ReplyInfo, host: str | None
) -> list[RecipientResult]:
    return [
        RecipientResult(recipient.address, outcome, reply, host) for recipient in message.recipients
    ]
