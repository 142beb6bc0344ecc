"""Tests for mailserver.queue.notify: where delivery status notifications go."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from mailserver.address import Mailbox
from mailserver.dsn import Action
from mailserver.interfaces import ReplyInfo
from mailserver.memory import MemoryMailStore, MemoryUserDatabase
from mailserver.queue.notify import Notifier
from mailserver.queue.record import QueueRecord, RecipientState
from mailserver.queue.schedule import Notice, RetryPolicy
from mailserver.queue.store import QueueStore
from tests.immediate import ImmediateReactor, ImmediateThreadPool
from tests.queue_helpers import queue_message

NEVER = ReplyInfo(550, "5.1.1", "No such user here")


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.users = MemoryUserDatabase(domains=["ours.example"], users={"alice@ours.example": "x"})
        self.store = MemoryMailStore()
        self.queue = QueueStore(tmp_path, ImmediateReactor(), ImmediateThreadPool())  # type: ignore[arg-type]
        spool = tmp_path / "spool"
        spool.mkdir()
        self.clock = MemoryReactorClock()
        self.clock.advance(5000)
        self.notifier = Notifier(
            "mx.ours.example",
            self.store,
            self.queue,
            self.users,
            spool,
            self.clock,
            ImmediateReactor(),  # type: ignore[arg-type]
            ImmediateThreadPool(),  # type: ignore[arg-type]
            RetryPolicy(),
        )

    def failed(self, record: QueueRecord) -> Notice:
        recipient = record.recipients[0]
        recipient.state = RecipientState.FAILED
        recipient.last_reply = NEVER
        recipient.remote_host = "mx.elsewhere.example"
        return Notice(Action.FAILED, [recipient])


def test_bounce_to_a_local_sender_lands_in_their_mailbox(tmp_path: Path) -> None:
    """A failure notice for one of our users is delivered to their mailbox: an RFC 3464
    report from the null sender naming the recipient, the remote server and its reply."""
    harness = Harness(tmp_path)
    record = queue_message(harness.queue, "ID1", ["bob@elsewhere.example"])
    harness.notifier.send(record, harness.failed(record))
    [notice] = harness.store.mailboxes["alice@ours.example"]
    assert notice.startswith(b"Return-Path: <>\r\nDelivered-To: alice@ours.example\r\n")
    message = email.message_from_bytes(notice, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.ours.example"
    report = notice.decode()
    assert "Final-Recipient: rfc822;bob@elsewhere.example" in report
    assert "Action: failed" in report
    assert "Status: 5.1.1" in report
    assert "Remote-MTA: dns;mx.elsewhere.example" in report.replace("dns; ", "dns;")
    assert harness.store.queued == []


def test_bounce_to_a_remote_sender_is_queued_from_the_null_sender(tmp_path: Path) -> None:
    """A sender elsewhere gets the notice through the outbound queue, sent from <>."""
    harness = Harness(tmp_path)
    record = queue_message(
        harness.queue, "ID1", ["bob@elsewhere.example"], sender="carol@far.example"
    )
    harness.notifier.send(record, harness.failed(record))
    [(queued, content)] = harness.store.queued
    assert queued.sender == ""
    assert content[: queued.offset] == b"Return-Path: <>\r\n"  # for a local copy only
    assert content[queued.offset :].startswith(b"From: Mail Delivery System")
    assert [r.address for r in queued.recipients] == ["carol@far.example"]
    assert queued.size == len(content)
    assert harness.store.mailboxes == {}


def test_no_notice_about_mail_from_the_null_sender(tmp_path: Path) -> None:
    """A message from <> never causes a notice (RFC 3461 §6.2)."""
    harness = Harness(tmp_path)
    record = queue_message(harness.queue, "ID1", ["bob@elsewhere.example"], sender="")
    harness.notifier.send(record, harness.failed(record))
    assert (harness.store.mailboxes, harness.store.queued) == ({}, [])


def test_notify_never_is_respected(tmp_path: Path) -> None:
    """NOTIFY=NEVER on the recipient: no notice at all."""
    harness = Harness(tmp_path)
    record = queue_message(harness.queue, "ID1", ["bob@elsewhere.example"])
    record.recipients[0].notify = frozenset({"NEVER"})
    harness.notifier.send(record, harness.failed(record))
    assert harness.store.mailboxes == {}


def test_sender_without_a_mailbox_any_more(tmp_path: Path) -> None:
    """A local sender removed since: the notice goes to the postmaster; without one, it is
    dropped (logged) rather than tried for ever; no spool file is left either way."""
    harness = Harness(tmp_path)
    harness.users.add_user("postmaster@ours.example", "x")
    harness.notifier._postmaster = Mailbox("postmaster", "ours.example")  # type: ignore[attr-defined]
    record = queue_message(
        harness.queue, "ID1", ["bob@elsewhere.example"], sender="gone@ours.example"
    )
    result = harness.notifier.send(record, harness.failed(record))
    assert result.called and not isinstance(result.result, Failure)
    assert len(harness.store.mailboxes["postmaster@ours.example"]) == 1

    harness.notifier._postmaster = None  # type: ignore[attr-defined]
    result = harness.notifier.send(record, harness.failed(record))
    assert result.called and not isinstance(result.result, Failure)
    assert len(harness.store.mailboxes["postmaster@ours.example"]) == 1
    assert list((tmp_path / "spool").iterdir()) == []
