"""The envelope record of a queued message: who sent it, to whom, and how each recipient fares.

Pure data with no I/O. The record is stored next to the message file as JSON, readable by a
person (``mailserver queue show`` prints it, an operator can read it with ``cat``), and written
again after every attempt. Each recipient has its own state: delivery to one domain may
succeed while another keeps failing, and only the recipients still pending are tried again.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from mailserver.address import AddressError, normalize_domain
from mailserver.interfaces import OutboundMessage, OutboundRecipient, ReplyInfo

VERSION = 1
NOTICE_ACTIONS = ("failed", "delayed", "delivered", "relayed")


class RecordError(ValueError):
    """A record file that cannot be read back: damaged, or from an unknown version."""


class RecipientState(enum.Enum):
    PENDING = "pending"  # still to be delivered
    DELIVERED = "delivered"
    FAILED = "failed"  # given up: bounced (or the sender needs no notice)


@dataclass
class QueuedRecipient:
    address: str
    notify: frozenset[str] | None = None
    orcpt: str | None = None
    state: RecipientState = RecipientState.PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float | None = None
    last_reply: ReplyInfo | None = None
    remote_host: str | None = None

    @cached_property
    def domain(self) -> str:
        """The destination domain, as routing compares it (lowercase A-labels); worked out
        once, as the runner asks for it on every scheduling decision."""
        domain = self.address.rpartition("@")[2]
        try:
            return normalize_domain(domain)
        except AddressError:
            return domain.lower()  # a record from before a rule change: routing will refuse it

    @property
    def outbound(self) -> OutboundRecipient:
        return OutboundRecipient(self.address, self.notify, self.orcpt)


@dataclass
class QueueRecord:
    """One queued message: its envelope, DSN parameters and recipients."""

    id: str
    sender: str  # "" for the null sender
    created: float  # when we accepted it (Arrival-Date, and the start of its lifetime)
    size: int
    recipients: list[QueuedRecipient]
    body_8bit: bool = False
    smtputf8: bool = False
    envid: str | None = None
    ret: str | None = None
    delay_notified: bool = False  # a delay notice went out already (one per message)
    offset: int = 0  # OutboundMessage.offset: the local copies' own headers, not sent on
    # Notices decided but not yet handed over (action, recipient addresses): kept on disk so
    # that a crash or a failure to send never loses a bounce; the record stays until they go.
    owed: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys, kept as they were

    @classmethod
    def for_transaction(
        cls,
        *,
        id: str,
        sender: str,
        recipients: Sequence[OutboundRecipient],
        created: float,
        size: int,
        body_8bit: bool = False,
        smtputf8: bool = False,
        envid: str | None = None,
        ret: str | None = None,
        offset: int = 0,
        delivered: Sequence[OutboundRecipient] = (),
    ) -> QueueRecord:
        """A new record for a message just accepted: every recipient due at once, and those
        ``delivered`` locally already, with the "delivered" notice their NOTIFY asked for
        owed (RFC 3461 §5.2.3)."""
        done = [
            QueuedRecipient(
                r.address, r.notify, r.orcpt, state=RecipientState.DELIVERED, last_attempt=created
            )
            for r in delivered
        ]
        owed = [("delivered", tuple(r.address for r in delivered))] if delivered else []
        return cls(
            id=id,
            sender=sender,
            created=created,
            size=size,
            recipients=[
                QueuedRecipient(r.address, r.notify, r.orcpt, next_attempt=created)
                for r in recipients
            ]
            + done,
            owed=owed,
            body_8bit=body_8bit,
            smtputf8=smtputf8,
            envid=envid,
            ret=ret,
            offset=offset,
        )

    @property
    def pending(self) -> list[QueuedRecipient]:
        return [r for r in self.recipients if r.state is RecipientState.PENDING]

    @property
    def done(self) -> bool:
        """Nothing left to deliver (notices may still be owed)."""
        return not self.pending

    def next_attempt(self) -> float | None:
        """When the earliest pending recipient is due, or None when nothing is pending."""
        return min((r.next_attempt for r in self.pending), default=None)

    def outbound_message(self, path: Path, recipients: list[QueuedRecipient]) -> OutboundMessage:
        return OutboundMessage(
            id=self.id,
            sender=self.sender,
            recipients=tuple(r.outbound for r in recipients),
            path=path,
            size=self.size - self.offset,
            offset=self.offset,
            body_8bit=self.body_8bit,
            smtputf8=self.smtputf8,
            envid=self.envid,
            ret=self.ret,
        )

    # -- JSON ---------------------------------------------------------------------------

    def to_json(self) -> bytes:
        document: dict[str, Any] = {
            "version": VERSION,
            "id": self.id,
            "sender": self.sender,
            "created": self.created,
            "size": self.size,
            "body_8bit": self.body_8bit,
            "smtputf8": self.smtputf8,
            "envid": self.envid,
            "ret": self.ret,
            "delay_notified": self.delay_notified,
            "offset": self.offset,
            "notices_owed": [
                {"action": action, "recipients": list(addresses)} for action, addresses in self.owed
            ],
            "recipients": [_recipient_to_json(r) for r in self.recipients],
            **self.extra,
        }
        return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> QueueRecord:
        try:
            document = json.loads(data.decode("utf-8"))
            if not isinstance(document, dict) or document.get("version") != VERSION:
                raise RecordError(f"not a version {VERSION} queue record")
            known = {
                "version",
                "id",
                "sender",
                "created",
                "size",
                "body_8bit",
                "smtputf8",
                "envid",
                "ret",
                "delay_notified",
                "offset",
                "notices_owed",
                "recipients",
            }
            recipients = [_recipient_from_json(item) for item in document["recipients"]]
            if not recipients:
                raise RecordError("no recipients")
            return cls(
                id=_text(document["id"]),
                sender=_text(document["sender"]),
                created=float(document["created"]),
                size=int(document["size"]),
                recipients=recipients,
                body_8bit=bool(document.get("body_8bit", False)),
                smtputf8=bool(document.get("smtputf8", False)),
                envid=_optional_text(document.get("envid")),
                ret=_optional_text(document.get("ret")),
                delay_notified=bool(document.get("delay_notified", False)),
                offset=int(document.get("offset", 0)),
                owed=[
                    (_action(item["action"]), tuple(_text(a) for a in item["recipients"]))
                    for item in document.get("notices_owed", [])
                ],
                extra={k: v for k, v in document.items() if k not in known},
            )
        except RecordError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise RecordError(f"damaged queue record: {error!r}") from error


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise RecordError(f"expected text, got {value!r}")
    return value


def _action(value: object) -> str:
    """A notice's action as the runner can send it (RFC 3464 §2.3.3)."""
    action = _text(value)
    if action not in NOTICE_ACTIONS:
        raise RecordError(f"unknown notice action {action!r}")
    return action


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _reply_to_json(reply: ReplyInfo | None) -> dict[str, Any] | None:
    if reply is None:
        return None
    return {"code": reply.code, "enhanced": reply.enhanced, "text": reply.text}


def _reply_from_json(value: Any) -> ReplyInfo | None:
    if value is None:
        return None
    return ReplyInfo(
        int(value["code"]), _optional_text(value.get("enhanced")), _text(value["text"])
    )


def _recipient_to_json(recipient: QueuedRecipient) -> dict[str, Any]:
    return {
        "address": recipient.address,
        "notify": sorted(recipient.notify) if recipient.notify is not None else None,
        "orcpt": recipient.orcpt,
        "state": recipient.state.value,
        "attempts": recipient.attempts,
        "next_attempt": recipient.next_attempt,
        "last_attempt": recipient.last_attempt,
        "last_reply": _reply_to_json(recipient.last_reply),
        "remote_host": recipient.remote_host,
    }


def _recipient_from_json(value: Any) -> QueuedRecipient:
    notify = value.get("notify")
    return QueuedRecipient(
        address=_text(value["address"]),
        notify=frozenset(_text(item) for item in notify) if notify is not None else None,
        orcpt=_optional_text(value.get("orcpt")),
        state=RecipientState(value.get("state", "pending")),
        attempts=int(value.get("attempts", 0)),
        next_attempt=float(value.get("next_attempt", 0.0)),
        last_attempt=None if value.get("last_attempt") is None else float(value["last_attempt"]),
        last_reply=_reply_from_json(value.get("last_reply")),
        remote_host=_optional_text(value.get("remote_host")),
    )
