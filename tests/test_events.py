"""Tests for mailserver.events: one structured log event per thing that happens to a message."""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs, formatEvent

from mailserver import events


def test_message_received() -> None:
    """ "received" carries id, client, helo, sender, recipients (as a list) and size, at info
    level in the mailserver.mail namespace, and reads as one line."""
    with capturedLogs() as captured:
        events.message_received(
            id="ID1",
            client="192.0.2.1",
            helo="client.example",
            sender="alice@client.example",
            recipients=("bob@ours.example",),
            size=42,
        )
    [event] = captured
    assert event["mail_event"] == "received"
    assert event["log_namespace"] == "mailserver.mail"
    assert event["log_level"] is LogLevel.info
    assert (event["id"], event["client"], event["helo"], event["sender"]) == (
        "ID1",
        "192.0.2.1",
        "client.example",
        "alice@client.example",
    )
    assert (event["recipients"], event["size"]) == (["bob@ours.example"], 42)
    assert formatEvent(event) == (
        "received id=ID1 from=<alice@client.example> client=192.0.2.1 helo=client.example"
        " size=42 recipients=bob@ours.example"
    )


def test_message_rejected() -> None:
    """ "rejected" carries id, client, sender, recipient and the reply's code, enhanced code and
    text; the ids may be missing when there is no transaction."""
    with capturedLogs() as captured:
        events.message_rejected(
            id=None,
            client="192.0.2.1",
            sender=None,
            recipient="nobody@ours.example",
            code=550,
            enhanced="5.1.1",
            reason="No such user here",
        )
    [event] = captured
    assert event["mail_event"] == "rejected"
    assert event["log_level"] is LogLevel.info
    assert {
        key: event[key]
        for key in ("id", "client", "sender", "recipient", "code", "enhanced", "reason")
    } == {
        "id": None,
        "client": "192.0.2.1",
        "sender": None,
        "recipient": "nobody@ours.example",
        "code": 550,
        "enhanced": "5.1.1",
        "reason": "No such user here",
    }
    assert formatEvent(event) == (
        "rejected id=None from=<None> to=<nobody@ours.example> client=192.0.2.1:"
        " 550 5.1.1 No such user here"
    )


def test_message_delivered() -> None:
    """ "delivered" carries id, mailboxes (as a list), size and the stored file's name."""
    with capturedLogs() as captured:
        events.message_delivered(
            id="ID1", mailboxes=("a@ours.example", "b@ours.example"), size=7, name="1.M2P3Q4.h,S=9"
        )
    [event] = captured
    assert event["mail_event"] == "delivered"
    assert event["log_level"] is LogLevel.info
    assert (event["id"], event["mailboxes"], event["size"], event["name"]) == (
        "ID1",
        ["a@ours.example", "b@ours.example"],
        7,
        "1.M2P3Q4.h,S=9",
    )
    assert "delivered id=ID1" in formatEvent(event)


def test_delivery_failed() -> None:
    """ "delivery-failed" is a warning with id, mailboxes, the reply code and the reason."""
    with capturedLogs() as captured:
        events.delivery_failed(
            id="ID1", mailboxes=["a@ours.example"], code=452, reason="No space left on device"
        )
    [event] = captured
    assert event["mail_event"] == "delivery-failed"
    assert event["log_level"] is LogLevel.warn
    assert (event["id"], event["mailboxes"], event["code"], event["reason"]) == (
        "ID1",
        ["a@ours.example"],
        452,
        "No space left on device",
    )
    assert formatEvent(event) == (
        "delivery failed id=ID1 to=a@ours.example: 452 No space left on device"
    )


def test_braces_in_client_data_are_text_not_fields() -> None:
    """A sender address with braces (legal in a local part) shows as typed in the text line
    and never breaks or injects into the formatting."""
    with capturedLogs() as captured:
        events.message_received(
            id="ID1", client="192.0.2.1", helo="h.example", sender="{log_namespace}@x.example",
            recipients=["b@ours.example"], size=1,
        )  # fmt: skip
    [event] = captured
    assert event["sender"] == "{log_namespace}@x.example"
    assert "from=<{log_namespace}@x.example>" in formatEvent(event)
