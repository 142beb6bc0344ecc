"""Delivery status notifications (RFC 3464) sent to the senders of queued mail.

A notice is written from the null sender ``<>`` (RFC 3461 §6.2, RFC 5321 §4.5.5), so it can
never cause another one, and is never written for a message that came from ``<>``. It goes
where any mail for the sender would go: into a local mailbox when the sender is one of our
users (the usual case for mail submitted here), else into the outbound queue like any other
message. The notice is built in a worker thread, reading the original message from the queue
in chunks.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from mailserver.address import AddressError, Mailbox, parse_path
from mailserver.dsn import Action, RecipientReport, build_notification, status_for, wants_notice
from mailserver.interfaces import IMailStore, IUserDatabase, Lookup, OutboundRecipient
from mailserver.queue.record import QueuedRecipient, QueueRecord
from mailserver.queue.schedule import Notice, RetryPolicy
from mailserver.queue.store import QueueStore
from mailserver.spool import Spool

log = Logger()


class Notifier:
    """Builds notices with :func:`mailserver.dsn.build_notification` and delivers them."""

    def __init__(
        self,
        hostname: str,
        store: IMailStore,
        queue: QueueStore,
        users: IUserDatabase,
        spool_directory: Path,
        clock: IReactorTime,
        threads: IReactorFromThreads,
        pool: ThreadPool,
        policy: RetryPolicy,
        postmaster: Mailbox | None = None,
    ) -> None:
        self._postmaster = postmaster
        self._hostname = hostname
        self._store = store
        self._queue = queue
        self._users = users
        self._spool_directory = spool_directory
        self._clock = clock
        self._threads = threads
        self._pool = pool
        self._policy = policy

    def send(self, record: QueueRecord, notice: Notice) -> Deferred[None]:
        if not record.sender:
            return succeed(None)  # never a notice about a notice (RFC 3461 §6.2)
        recipients = [r for r in notice.recipients if wants_notice(r.outbound, notice.action)]
        if not recipients:
            return succeed(None)
        try:
            sender = parse_path(f"<{record.sender}>", allow_null=False)
        except AddressError:
            log.warn("no notice for {id}: cannot parse its sender", id=record.id)
            return succeed(None)
        assert sender is not None
        reports = [self._report(record, recipient, notice.action) for recipient in recipients]
        id = secrets.token_hex(8).upper()
        spool = Spool(self._spool_directory)
        now = self._clock.seconds()
        message = record.outbound_message(self._queue.message_path(record.id), recipients)

        def build() -> None:
            build_notification(
                reporting_mta=self._hostname,
                message=message,
                reports=reports,
                arrival_date=record.created,
                now=now,
                message_id=f"<{id}@{self._hostname}>",
                sink=spool.write,
            )

        async def deliver() -> None:
            try:
                lookup = await self._users.resolve_recipient(sender)
                if lookup.outcome not in (Lookup.DELIVER, Lookup.NOT_OUR_DOMAIN):
                    # The sender is gone from our domains: the postmaster gets the notice,
                    # as nobody else can act on it (and it must not wait for ever).
                    if self._postmaster is not None:
                        lookup = await self._users.resolve_recipient(self._postmaster)
                    if lookup.outcome is not Lookup.DELIVER:
                        log.warn(
                            "notice {action} for {id} dropped: <{sender}> has no mailbox here"
                            " and the postmaster none either",
                            action=notice.action.value,
                            id=record.id,
                            sender=record.sender,
                        )
                        return
                # The headers final delivery adds (RFC 5321 §4.4), for a local copy only.
                local = b"Return-Path: <>\r\n"
                if len(lookup.mailboxes) == 1:
                    local += f"Delivered-To: {lookup.mailboxes[0]}\r\n".encode()
                spool.write(local)
                await deferToThreadPool(self._threads, self._pool, build)
                if lookup.outcome is Lookup.DELIVER:
                    await self._store.deliver(spool, lookup.mailboxes)
                else:
                    queued = QueueRecord.for_transaction(
                        id=id,
                        sender="",
                        recipients=[OutboundRecipient(str(sender))],
                        created=now,
                        size=spool.size,
                        # The notice holds the original's 8-bit octets, if it had any.
                        body_8bit=record.body_8bit or record.smtputf8,
                        # Its UTF-8 is in the body (message/global), which needs 8BITMIME only.
                        smtputf8=not sender.is_ascii,
                        offset=len(local),
                    )
                    await self._store.deliver(spool, [], queued)
            finally:
                spool.discard()  # done with it either way (the store discards it too)
            log.info(
                "notice {action} for {id} sent to <{sender}> as {notice}",
                action=notice.action.value,
                id=record.id,
                sender=record.sender,
                notice=id,
            )

        return Deferred.fromCoroutine(deliver())

    def _report(
        self, record: QueueRecord, recipient: QueuedRecipient, action: Action
    ) -> RecipientReport:
        retry_until = record.created + self._policy.lifetime if action is Action.DELAYED else None
        return RecipientReport(
            recipient=recipient.outbound,
            action=action,
            status=status_for(action, recipient.last_reply),
            reply=recipient.last_reply,
            remote_host=recipient.remote_host,
            last_attempt=recipient.last_attempt,
            will_retry_until=retry_until,
        )
