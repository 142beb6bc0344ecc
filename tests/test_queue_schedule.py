"""Tests for mailserver.queue.schedule: retry timing, giving up, and which notices to send."""

from __future__ import annotations

import random

from mailserver.dsn import Action
from mailserver.interfaces import DeliveryOutcome, OutboundRecipient, RecipientResult, ReplyInfo
from mailserver.queue.record import QueueRecord, RecipientState
from mailserver.queue.schedule import (
    RetryPolicy,
    apply_results,
    bounce_by_administrator,
)

POLICY = RetryPolicy(initial=300, maximum=3600, delay_notice=4 * 3600, lifetime=86400, jitter=0)
OK = ReplyInfo(250, "2.0.0", "Queued as 1")
LATER = ReplyInfo(451, "4.7.1", "Greylisted")
NEVER = ReplyInfo(550, "5.1.1", "No such user")


def record(*addresses: str) -> QueueRecord:
    return QueueRecord.for_transaction(
        id="ID",
        sender="alice@ours.example",
        recipients=[OutboundRecipient(address) for address in addresses],
        created=0.0,
        size=10,
    )


def result(address: str, outcome: DeliveryOutcome, reply: ReplyInfo) -> RecipientResult:
    return RecipientResult(address, outcome, reply, "mx.e.example")


def test_backoff_doubles_up_to_the_cap() -> None:
    """Waits double from the initial one and stop at the maximum."""
    rng = random.Random(1)
    assert [POLICY.retry_after(n, rng) for n in range(1, 7)] == [300, 600, 1200, 2400, 3600, 3600]


def test_jitter_stays_within_its_fraction() -> None:
    """With jitter each wait is within that fraction of the plain one."""
    policy = RetryPolicy(initial=100, jitter=0.1)
    rng = random.Random(7)
    waits = [policy.retry_after(1, rng) for _ in range(200)]
    assert all(90 <= wait <= 110 for wait in waits)
    assert len(set(waits)) > 100


def test_outcomes_per_recipient() -> None:
    """Delivered and failed recipients are settled with a notice each; a transient failure is
    retried later, with the reply and the server remembered."""
    queued = record("a@e.example", "b@e.example", "c@e.example")
    queued.recipients[0].notify = frozenset({"SUCCESS", "FAILURE"})
    outcome = apply_results(
        queued,
        queued.recipients,
        [
            result("a@e.example", DeliveryOutcome.DELIVERED, OK),
            result("b@e.example", DeliveryOutcome.PERMANENT, NEVER),
            result("c@e.example", DeliveryOutcome.TRANSIENT, LATER),
        ],
        now=10.0,
        policy=POLICY,
        rng=random.Random(1),
    )
    a, b, c = queued.recipients
    assert (a.state, b.state, c.state) == (
        RecipientState.DELIVERED,
        RecipientState.FAILED,
        RecipientState.PENDING,
    )
    assert c.next_attempt == 310.0
    assert (c.attempts, c.last_reply, c.remote_host) == (1, LATER, "mx.e.example")
    assert [r.address for r in outcome.notices[Action.RELAYED].recipients] == ["a@e.example"]
    assert [r.address for r in outcome.notices[Action.FAILED].recipients] == ["b@e.example"]
    assert Action.DELAYED not in outcome.notices


def test_transient_failure_past_the_lifetime_bounces() -> None:
    """When the lifetime is over, a transient failure is final: 4.4.7, the last reply kept."""
    queued = record("c@e.example")
    outcome = apply_results(
        queued,
        queued.recipients,
        [result("c@e.example", DeliveryOutcome.TRANSIENT, LATER)],
        now=86400.0,
        policy=POLICY,
        rng=random.Random(1),
    )
    [c] = queued.recipients
    assert c.state is RecipientState.FAILED
    assert c.last_reply is not None and c.last_reply.enhanced == "4.4.7"
    assert "Greylisted" in c.last_reply.text
    assert outcome.notices[Action.FAILED].recipients == [c]


def test_delay_notice_once() -> None:
    """Past delay_notice, the still-pending recipients are reported once per message."""
    queued = record("c@e.example")
    transient = [result("c@e.example", DeliveryOutcome.TRANSIENT, LATER)]
    early = apply_results(queued, queued.recipients, transient, 100.0, POLICY, random.Random(1))
    assert early.notices == {}
    late = apply_results(queued, queued.recipients, transient, 4 * 3600.0, POLICY, random.Random(1))
    assert [r.address for r in late.notices[Action.DELAYED].recipients] == ["c@e.example"]
    assert queued.delay_notified
    again = apply_results(
        queued, queued.recipients, transient, 5 * 3600.0, POLICY, random.Random(1)
    )
    assert again.notices == {}


def test_bounce_by_administrator() -> None:
    """``queue bounce`` fails every pending recipient with a notice."""
    queued = record("a@e.example", "b@e.example")
    queued.recipients[0].state = RecipientState.DELIVERED
    outcome = bounce_by_administrator(queued, 50.0)
    assert queued.done
    assert [r.address for r in outcome.notices[Action.FAILED].recipients] == ["b@e.example"]


def test_only_wanted_notices() -> None:
    """No notice for a sender who asked for none (NOTIFY=NEVER), for a success nobody asked
    about, or for mail from the null sender."""
    queued = record("a@e.example", "b@e.example")
    queued.recipients[1].notify = frozenset({"NEVER"})
    results = [
        result("a@e.example", DeliveryOutcome.DELIVERED, OK),
        result("b@e.example", DeliveryOutcome.PERMANENT, NEVER),
    ]
    outcome = apply_results(queued, queued.recipients, results, 10.0, POLICY, random.Random(1))
    assert outcome.notices == {}
    bounce = record("c@e.example")
    bounce.sender = ""
    results = [result("c@e.example", DeliveryOutcome.PERMANENT, NEVER)]
    outcome = apply_results(bounce, bounce.recipients, results, 10.0, POLICY, random.Random(1))
    assert outcome.notices == {}


def test_no_relayed_notice_when_the_next_server_reports() -> None:
    """A success asked for with NOTIFY=SUCCESS is reported by the next server when it took
    the DSN parameters (RFC 3461 §5.2.1): we send no "relayed" notice then."""
    queued = record("a@e.example", "b@e.example")
    for recipient in queued.recipients:
        recipient.notify = frozenset({"SUCCESS"})
    results = [
        RecipientResult("a@e.example", DeliveryOutcome.DELIVERED, OK, "mx", dsn_passed=True),
        RecipientResult("b@e.example", DeliveryOutcome.DELIVERED, OK, "mx", dsn_passed=False),
    ]
    outcome = apply_results(queued, queued.recipients, results, 10.0, POLICY, random.Random(1))
    assert [r.address for r in outcome.notices[Action.RELAYED].recipients] == ["b@e.example"]
