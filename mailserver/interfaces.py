"""Contracts between the protocols and the storage behind them.

Methods that a networked backend would implement with I/O return Deferreds, so such a backend
can replace the embedded one without touching the protocols. Each contract has an in-memory
twin in :mod:`mailserver.memory` for tests.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zope.interface import Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mailserver.address import Mailbox
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

    def deliver(spool: Spool, mailboxes: Sequence[str]) -> Deferred[str]:
        """Store the spooled message durably in every mailbox; fires with the stored name.

        Fires only once every copy and its directory entry are on stable storage. Fails with
        :class:`StorageFull` when space runs out and with ``OSError`` for other trouble, after
        removing any copy it had made, so nothing half-delivered stays visible.
        """
