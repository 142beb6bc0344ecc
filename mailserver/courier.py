"""The SMTP courier: delivers queued messages for one domain to the servers that take its mail.

It asks the router (:mod:`mailserver.routing`) for the servers to try, in order, and opens a
connection to the first that answers; several messages for the domain then go over that one
connection (:mod:`mailserver.smtp.client`). A server that cannot be reached, or that will not
start a session, is passed over for the next (RFC 5321 §5.1: every MX is tried before the
attempt is given up); a server that answers a recipient or a message, for good or for now,
has the last word on it. It never decides when to try again: the queue runner does, from the
outcomes alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
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
from mailserver.smtp.client import ConnectFailed, connect
from mailserver.smtp.client_session import ClientSettings

log = Logger()


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

    def deliver(
        self, domain: str, messages: Sequence[OutboundMessage]
    ) -> Deferred[list[list[RecipientResult]]]:
        return Deferred.fromCoroutine(self._deliver(domain, list(messages)))

    async def _deliver(
        self, domain: str, messages: list[OutboundMessage]
    ) -> list[list[RecipientResult]]:
        settings = self._domain_settings.get(domain, self._settings)
        try:
            hops = await self._router.hops(domain)
        except RoutingError as error:
            outcome = DeliveryOutcome.PERMANENT if error.permanent else DeliveryOutcome.TRANSIENT
            return [_all(message, outcome, error.reply, None) for message in messages]
        results: list[list[RecipientResult] | None] = [None] * len(messages)
        last_problem = ReplyInfo(451, "4.4.1", f"No server for {domain} could be reached")
        last_host: str | None = None
        for hop in hops:
            waiting = [index for index, result in enumerate(results) if result is None]
            if not waiting:
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
            for index in waiting:
                if not connection.usable:
                    break  # lost: the rest go to the next server
                results[index] = await connection.send(messages[index])
            await connection.close()
        return [
            result
            if result is not None
            else _all(messages[index], DeliveryOutcome.TRANSIENT, last_problem, last_host)
            for index, result in enumerate(results)
        ]


def _all(
    message: OutboundMessage, outcome: DeliveryOutcome, reply: ReplyInfo, host: str | None
) -> list[RecipientResult]:
    return [
        RecipientResult(recipient.address, outcome, reply, host) for recipient in message.recipients
    ]
