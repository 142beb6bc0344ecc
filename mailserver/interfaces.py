"""Contracts between the protocols and the storage behind them.

Methods that a networked backend would implement with I/O return Deferreds, so such a backend
can replace the embedded one without touching the protocols. Each contract has an in-memory
twin in :mod:`mailserver.memory` for tests.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from zope.interface import Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mailserver.address import Mailbox
    from mailserver.queue.record import QueueRecord
    from mailserver.spool import Spool


class Lookup(enum.Enum):
    """What the user database says about one envelope recipient."""

    DELIVER = "deliver"  # ours: deliver to RecipientLookup.mailboxes
    NOT_OUR_DOMAIN = "not-our-domain"  # somebody else's domain: relaying
    NO_SUCH_USER = "no-such-user"  # our domain, nobody by that name
    ALIAS_LOOP = "alias-loop"  # our domain, but its aliases lead nowhere but back


@dataclass(frozen=True)
class RecipientLookup:
    outcome: Lookup
    mailboxes: tuple[str, ...] = ()  # normalised addresses of the mailboxes that receive it


class IUserDatabase(Interface):
    """Domains, users and aliases; passwords are checked here and never leave."""

    def resolve_recipient(address: Mailbox) -> Deferred[RecipientLookup]:
        """Follow aliases, subaddressing and catch-alls to the mailboxes for ``address``."""

    def authenticate(login: str, password: str) -> Deferred[str | None]:
        """The mailbox address for valid credentials, else None, in equal time either way.

        ``login`` is a full address, or a bare local part when exactly one user has it.
        """


class StorageFull(Exception):
    """The disk or a quota is full: the client should try again later (452 4.3.1)."""


class IMailStore(Interface):
    """Where received mail for local mailboxes is kept."""

    def deliver(
        spool: Spool, mailboxes: Sequence[str], queued: QueueRecord | None = None
    ) -> Deferred[str]:
        """Store the spooled message durably in every mailbox, and with ``queued`` in the
        outbound queue for the recipients its record lists; fires with the stored name.

        Fires only once every copy and its directory entry are on stable storage. Fails with
        :class:`StorageFull` when space runs out and with ``OSError`` for other trouble, after
        removing any copy it had made, so nothing half-delivered stays visible.
        """


# --- Reading mailboxes (POP3) -------------------------------------------------------------------


class MailboxInUse(Exception):
    """Another session, in this process or another one, holds the mailbox's lock (``[IN-USE]``)."""


class MailboxUnavailable(Exception):
    """The mailbox cannot be opened for a reason that will not go away by itself
    (``[SYS/PERM]``); temporary trouble is reported as ``OSError`` instead."""


class MessageGone(Exception):
    """A message of the session's snapshot was removed by another program meanwhile."""


class MessageInfo(NamedTuple):
    """One message of a mailbox snapshot, as POP3 lists it (a tuple: cheap to make by the
    hundred thousand)."""

    uid: str  # RFC 1939 §7: 1 to 70 characters in 0x21-0x7E, stable and never reused
    size: int  # octets of the stored message: exactly what RETR sends before byte-stuffing


class IMailbox(Interface):
    """One mailbox opened for a POP3 session: locked, with a fixed snapshot of its messages.

    The snapshot is taken when the mailbox is opened; mail arriving later belongs to the next
    session and nothing this session does touches it.
    """

    messages: Sequence[MessageInfo]  # the snapshot, oldest first; POP3 numbers are index + 1

    def read_message(index: int, offset: int, size: int) -> Deferred[bytes]:
        """Octets ``offset`` to ``offset + size`` of message ``index`` of the snapshot, or fewer
        only where the message ends: a shorter result (``b""`` included) means the end, so a
        reader needs no extra call to find it. Fails with :class:`MessageGone` if another
        program removed the message, ``OSError`` for other trouble.

        Stateless, so a reader that goes away mid-message leaves nothing open.
        """

    def commit(deleted: Sequence[int], seen: Sequence[int]) -> Deferred[None]:
        """Apply the end of a session (RFC 1939 §6): remove the ``deleted`` messages and mark
        the ``seen`` ones as read, durably. Fires once done; fails with ``OSError`` if some
        deleted message could not be removed (after removing all the others)."""

    def close() -> None:
        """Release the lock without changing anything; calling it again does nothing."""


class IMailboxStore(Interface):
    """Where POP3 finds the mailboxes that :class:`IMailStore` delivers into."""

    def open_mailbox(address: str) -> Deferred[IMailbox]:
        """Lock the mailbox of a normalised address and take a snapshot of its messages.

        Fails with :class:`MailboxInUse` when another session holds it, with
        :class:`MailboxUnavailable` for a permanent problem and ``OSError`` for the rest.
        """


# --- Delivering to other servers (the outbound queue) -------------------------------------------


class DeliveryOutcome(enum.Enum):
    """What became of one recipient of one delivery attempt (RFC 5321 §4.2.1 reply classes)."""

    DELIVERED = "delivered"  # the receiving server took responsibility (2xx after the data)
    TRANSIENT = "transient"  # try again later (4xx, a timeout, no server reachable)
    PERMANENT = "permanent"  # never going to work (5xx, null MX, no such domain)


@dataclass(frozen=True)
class ReplyInfo:
    """An SMTP reply as the queue records and reports it: the remote server's, or one we
    wrote to describe what happened (a refused connection is ``451 4.4.1``)."""

    code: int
    enhanced: str | None
    text: str  # lines joined by newlines

    def __str__(self) -> str:
        prefix = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        return prefix + self.text.replace("\n", " ")


@dataclass(frozen=True)
class RecipientResult:
    """The outcome for one recipient, with the reply that decided it."""

    recipient: str
    outcome: DeliveryOutcome
    reply: ReplyInfo
    remote_host: str | None = None  # the server that answered (DSN Remote-MTA), if any
    # RFC 3461 §5.2.1: accepted by a server that offers DSN, with our NOTIFY passed on to it.
    # That server now owes the success notice, so we must not send a "relayed" one.
    dsn_passed: bool = False


@dataclass(frozen=True)
class OutboundRecipient:
    """One envelope recipient of a queued message, with its DSN parameters (RFC 3461 §4)."""

    address: str  # the address as RCPT TO gave it (normalised form of our Mailbox)
    notify: frozenset[str] | None = None  # {"NEVER"} or a subset of SUCCESS/FAILURE/DELAY
    orcpt: str | None = None  # "rfc822;bob@example.org", xtext already decoded


@dataclass(frozen=True)
class OutboundMessage:
    """A queued message on its way to one destination: what a courier needs to deliver it."""

    id: str
    sender: str  # "" for the null sender <>
    recipients: tuple[OutboundRecipient, ...]
    path: Path  # the message file: header and body, CRLF line endings, no dot-stuffing
    size: int  # octets to send: the file from ``offset`` on
    # Octets at the start of the file that belong to the local copies only (Return-Path and
    # Delivered-To, RFC 5321 §4.4: added at final delivery), skipped when sending it on.
    offset: int = 0
    body_8bit: bool = False  # BODY=8BITMIME was given
    smtputf8: bool = False  # SMTPUTF8 was given
    envid: str | None = None  # RFC 3461 §4.4, xtext already decoded
    ret: str | None = None  # RFC 3461 §4.3: "FULL" or "HDRS"


class ICourier(Interface):
    """Delivers queued messages to one destination; knows how, never when (that is the
    queue runner's business, decided from the outcomes alone)."""

    def deliver(
        domain: str, messages: Sequence[OutboundMessage]
    ) -> Deferred[list[list[RecipientResult]]]:
        """Try to deliver each message to its recipients, all in ``domain``; fires with one list
        of results per message, one result per recipient in order. Never fails: trouble of
        any kind becomes TRANSIENT or PERMANENT results."""
