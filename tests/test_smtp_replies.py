"""Tests for mailserver.smtp.replies: named replies and their wire form."""

from __future__ import annotations

import pytest

from mailserver.smtp import replies
from mailserver.smtp.replies import Reply

ALL = {name: value for name, value in vars(replies).items() if isinstance(value, Reply)}
# RFC 2034 §3: no enhanced code on the greeting and EHLO/HELO replies; 354 is intermediate.
# RFC 2034 §3 and RFC 4954 §4: no enhanced code on these (a 334 carries only base64 text).
WITHOUT_ENHANCED = {"GREETING", "EHLO_OK", "HELO_OK", "START_DATA", "AUTH_CHALLENGE"}


def test_single_line() -> None:
    """A one-line reply is ``code SP enhanced SP text CRLF``."""
    assert replies.RELAY_DENIED.to_bytes() == b"554 5.7.1 Relay access denied\r\n"


def test_multi_line_uses_continuations() -> None:
    """Every line but the last has ``code-``; the last has ``code SP`` (RFC 5321 §4.2.1)."""
    reply = replies.EHLO_OK.with_text("mx.example greets c\nPIPELINING\nCHUNKING")
    assert reply.to_bytes() == (b"250-mx.example greets c\r\n250-PIPELINING\r\n250 CHUNKING\r\n")


def test_enhanced_code_on_every_line() -> None:
    """A multi-line reply carries its enhanced code on each line (RFC 2034 §3)."""
    wire = replies.HELP.to_bytes()
    lines = wire.split(b"\r\n")
    assert lines[-1] == b""
    assert len(lines[:-1]) == 2
    assert lines[0].startswith(b"214-2.0.0 Commands: ")
    assert lines[1].startswith(b"214 2.0.0 See RFC 5321")


def test_greeting_has_no_enhanced_code() -> None:
    """The greeting is ``220 text`` with no enhanced code."""
    assert replies.GREETING.with_text("mx.example ESMTP ready").to_bytes() == (
        b"220 mx.example ESMTP ready\r\n"
    )


def test_non_ascii_text_is_utf8() -> None:
    """Reply text is sent as UTF-8."""
    assert replies.OK.with_text("héllo").to_bytes() == "250 2.0.0 héllo\r\n".encode()


def test_equality_ignores_text() -> None:
    """Two replies with the same name and codes are equal whatever their text."""
    assert replies.RELAY_DENIED.with_text("Relaying to x denied") == replies.RELAY_DENIED
    assert replies.RELAY_DENIED != replies.NO_SUCH_USER
    assert replies.TOO_MANY_ERRORS != replies.TOO_MANY_CONNECTIONS  # same codes, other name


def test_with_text_keeps_codes() -> None:
    """``with_text`` changes only the text."""
    reply = replies.NO_SUCH_USER.with_text("nobody")
    assert (reply.code, reply.enhanced, reply.name, reply.text) == (
        550,
        "5.1.1",
        "NO_SUCH_USER",
        "nobody",
    )


def test_is_error() -> None:
    """4xx and 5xx replies are errors; 2xx and 3xx are not."""
    assert replies.TOO_MANY_RECIPIENTS.is_error
    assert replies.RELAY_DENIED.is_error
    assert not replies.START_DATA.is_error
    assert not replies.VRFY_CANNOT_VERIFY.is_error


@pytest.mark.parametrize("name", sorted(ALL))
def test_reply_is_named_after_itself(name: str) -> None:
    """Each module-level reply carries its own name, so test failures show which one."""
    assert ALL[name].name == name


@pytest.mark.parametrize("name", sorted(ALL))
def test_enhanced_code_matches_reply_class(name: str) -> None:
    """Enhanced codes are present where RFC 2034 wants them and share the reply's class."""
    reply = ALL[name]
    if name in WITHOUT_ENHANCED:
        assert reply.enhanced is None
        return
    assert reply.enhanced is not None
    klass, subject, detail = reply.enhanced.split(".")
    assert klass == str(reply.code)[0]
    assert subject.isdigit() and detail.isdigit()


@pytest.mark.parametrize("name", sorted(ALL))
def test_single_line_replies_are_one_line(name: str) -> None:
    """Every reply's wire form is CRLF-terminated lines all starting with its code."""
    wire = ALL[name].to_bytes()
    assert wire.endswith(b"\r\n")
    lines = wire.split(b"\r\n")[:-1]
    for index, text in enumerate(lines):
        separator = b" " if index == len(lines) - 1 else b"-"
        assert text.startswith(str(ALL[name].code).encode() + separator)
        assert b"\r" not in text and b"\n" not in text


def test_own_trouble_is_temporary() -> None:
    """Failures of ours are 4xx, never 5xx (DESIGN: never 5xx for our own trouble)."""
    assert replies.INSUFFICIENT_STORAGE.code == 452
    assert replies.LOCAL_ERROR.code == 451
