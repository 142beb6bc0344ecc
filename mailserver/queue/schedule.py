"""When to try a queued message again, and when to give up: pure rules, no I/O, no clock.

Transient failures are retried with exponential backoff (RFC 5321 §4.5.4.1 asks for at least
30 minutes between tries to one destination; shorter first retries are common practice and
help greylisted mail arrive sooner), with jitter so that messages that failed together do not
all come back at once. A sender is told once when a message has been delayed for
``delay_notice``, and the message is bounced when ``lifetime`` ends (RFC 5321 §4.5.4.1: "at
least 4-5 days"). What happened is decided from the courier's answer alone: delivered,
failed for good, or failed for now.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailserver.dsn import Action, wants_notice
from mailserver.interfaces import DeliveryOutcome, RecipientResult, ReplyInfo
from mailserver.queue.record import QueuedRecipient, QueueRecord, RecipientState

EXPIRED = "Delivery time expired: gave up after {days} days of trying"


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = 300.0  # seconds before the first retry
    maximum: float = 3600.0  # the backoff doubles up to this
    delay_notice: float = 4 * 3600.0  # tell the sender after this long (once)
    lifetime: float = 5 * 86400.0  # bounce after this long
    jitter: float = 0.1  # each wait is stretched or shrunk by up to this fraction

    def retry_after(self, attempts: int, rng: random.Random) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        base = min(self.initial * 2 ** max(attempts - 1, 0), self.maximum)
        return base * (1 + rng.uniform(-self.jitter, self.jitter))


@dataclass
class Notice:
    """A notification to send for some recipients of one message."""

    action: Action
    recipients: list[QueuedRecipient] = field(default_factory=list)


@dataclass
class Outcome:
    """The notices one attempt calls for, by action: only those the sender is to get (never
    for the null sender, RFC 3461 §6.2; as each recipient's NOTIFY asks, §4.1), so that
    nothing is written down for a notice nobody wants."""

    sender: str
    notices: dict[Action, Notice] = field(default_factory=dict)

    def notify(self, action: Action, recipient: QueuedRecipient) -> None:
        if self.sender and wants_notice(recipient.outbound, action):
            self.notices.setdefault(action, Notice(action)).recipients.append(recipient)


def apply_results(
    record: QueueRecord,
    attempted: Sequence[QueuedRecipient],
    results: Sequence[RecipientResult],
    now: float,
    policy: RetryPolicy,
    rng: random.Random,
) -> Outcome:
    """Record one attempt's results on ``record`` and decide what follows."""
    outcome = Outcome(record.sender)
    for recipient, result in zip(attempted, results, strict=True):
        recipient.attempts += 1
        recipient.last_attempt = now
        recipient.last_reply = result.reply
        recipient.remote_host = result.remote_host
        if result.outcome is DeliveryOutcome.DELIVERED:
            recipient.state = RecipientState.DELIVERED
            if not result.dsn_passed:  # else the next server reports it (RFC 3461 §5.2.1)
                outcome.notify(Action.RELAYED, recipient)
        elif result.outcome is DeliveryOutcome.PERMANENT:
            recipient.state = RecipientState.FAILED
            outcome.notify(Action.FAILED, recipient)
        elif now >= record.created + policy.lifetime:
            expire(recipient, policy)
            outcome.notify(Action.FAILED, recipient)
        else:
            recipient.next_attempt = now + policy.retry_after(recipient.attempts, rng)
    check_delay(record, now, policy, outcome)
    return outcome


def expire(recipient: QueuedRecipient, policy: RetryPolicy) -> None:
    """Give up on a recipient whose lifetime is over; its last reply stays as the reason."""
    recipient.state = RecipientState.FAILED
    last = recipient.last_reply
    detail = f" (last reply: {last})" if last is not None else ""
    days = f"{policy.lifetime / 86400:g}"
    recipient.last_reply = ReplyInfo(451, "4.4.7", EXPIRED.format(days=days) + detail)


def check_delay(record: QueueRecord, now: float, policy: RetryPolicy, outcome: Outcome) -> None:
    """Once per message, past ``delay_notice``, tell the sender which recipients are late."""
    if record.delay_notified or now < record.created + policy.delay_notice:
        return
    pending = record.pending
    if not pending:
        return
    record.delay_notified = True
    for recipient in pending:
        outcome.notify(Action.DELAYED, recipient)


def bounce_by_administrator(record: QueueRecord, now: float) -> Outcome:
    """``mailserver queue bounce``: every pending recipient fails now, with a notice."""
    outcome = Outcome(record.sender)
    for recipient in record.pending:
        recipient.state = RecipientState.FAILED
        recipient.last_attempt = now
        recipient.last_reply = ReplyInfo(550, "5.0.0", "Returned to sender by the postmaster")
        outcome.notify(Action.FAILED, recipient)
    return outcome
