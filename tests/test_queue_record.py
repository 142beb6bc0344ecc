"""Tests for mailserver.queue.record: the envelope record and its JSON form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailserver.interfaces import OutboundRecipient, ReplyInfo
from mailserver.queue.record import (
    QueuedRecipient,
    QueueRecord,
    RecipientState,
    RecordError,
)


def sample() -> QueueRecord:
    record = QueueRecord.for_transaction(
        id="ABC123",
        sender="alice@ours.example",
        recipients=[
            OutboundRecipient(
                "Bob@Elsewhere.Example", frozenset({"FAILURE", "DELAY"}), "rfc822;b@e"
            ),
            OutboundRecipient("carol@other.example"),
        ],
        created=1000.0,
        size=42,
        body_8bit=True,
        envid="env 1",
        ret="HDRS",
    )
    record.recipients[1].state = RecipientState.DELIVERED
    record.recipients[0].last_reply = ReplyInfo(451, "4.7.1", "Greylisted\nTry later")
    record.recipients[0].attempts = 2
    return record


def test_round_trip() -> None:
    """Everything in a record survives writing and reading its JSON."""
    record = sample()
    assert QueueRecord.from_json(record.to_json()) == record


def test_record_is_readable_json() -> None:
    """The stored form is indented JSON with plain field names, for an operator to read."""
    document = json.loads(sample().to_json())
    assert document["version"] == 1
    assert document["recipients"][0]["state"] == "pending"
    assert document["recipients"][0]["last_reply"] == {
        "code": 451,
        "enhanced": "4.7.1",
        "text": "Greylisted\nTry later",
    }
    assert b"\n " in sample().to_json()


def test_new_record_is_due_at_once() -> None:
    """A record made for a transaction has every recipient pending and due when it arrived."""
    record = sample()
    assert [r.next_attempt for r in record.recipients] == [1000.0, 1000.0]
    assert record.next_attempt() == 1000.0
    assert [r.address for r in record.pending] == ["Bob@Elsewhere.Example"]
    assert not record.done


def test_domain_is_normalised_for_routing() -> None:
    """Routing compares lowercase A-labels; the address itself keeps its case."""
    assert QueuedRecipient("Bob@B\u00fccher.Example").domain == "xn--bcher-kva.example"


def test_outbound_message_carries_the_envelope() -> None:
    """The courier's view names the file and carries the DSN parameters."""
    record = sample()
    message = record.outbound_message(Path("/q/ABC123.msg"), record.pending)
    assert message.recipients == (record.recipients[0].outbound,)
    assert (message.envid, message.ret, message.body_8bit, message.size) == (
        "env 1",
        "HDRS",
        True,
        42,
    )


def test_unknown_keys_are_kept() -> None:
    """A record written by a newer version keeps the keys this one does not know."""
    document = json.loads(sample().to_json())
    document["future"] = {"x": 1}
    record = QueueRecord.from_json(json.dumps(document).encode())
    assert json.loads(record.to_json())["future"] == {"x": 1}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"version": 2}',
        b'{"version": 1, "id": "x"}',
        b'{"version": 1, "id": "x", "sender": "", "created": 1, "size": 1, "recipients": []}',
        b'{"version": 1, "id": 5, "sender": "", "created": 1, "size": 1, "recipients": [{}]}',
        b"\xff",
    ],
)
def test_damaged_records_are_refused(data: bytes) -> None:
    """Anything that is not a whole record raises RecordError, never another exception."""
    with pytest.raises(RecordError):
        QueueRecord.from_json(data)
