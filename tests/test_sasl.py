"""SASL exchanges shared by SMTP AUTH and POP3 AUTH, with plain calls (mailserver.sasl)."""

from __future__ import annotations

import pytest

from mailserver.sasl import (
    MECHANISMS,
    Credentials,
    Exchange,
    SASLError,
    authorizes,
    decode_response,
    encode_challenge,
)


def test_mechanisms_offered() -> None:
    """PLAIN and LOGIN, in the order CAPA and EHLO list them; nothing else is accepted."""
    assert MECHANISMS == ("PLAIN", "LOGIN")
    with pytest.raises(ValueError):
        Exchange("CRAM-MD5")


def test_decode_response_is_strict_base64() -> None:
    """An empty line is an empty response; stray characters or bad padding are malformed."""
    assert decode_response(b"YWxpY2U=") == b"alice"
    assert decode_response(b"") == b""
    for bad in (b"YWxpY2U", b"YWxp Y2U=", b"!!!!", b"YWxpY2U=\xff"):
        with pytest.raises(SASLError):
            decode_response(bad)


def test_encode_challenge() -> None:
    """Challenges are base64 without a line break; an empty one is empty."""
    assert encode_challenge(b"Username:") == "VXNlcm5hbWU6"
    assert encode_challenge(b"") == ""


def test_plain_with_and_without_initial_response() -> None:
    """RFC 4616 §2: the challenge is empty; ``authzid NUL authcid NUL passwd`` gives the
    credentials, spaces in the password kept."""
    exchange = Exchange("PLAIN")
    assert exchange.start(None) == b""
    assert exchange.respond(b"\0alice\0pw with space") == Credentials(
        "alice", "pw with space", mechanism="PLAIN"
    )
    assert Exchange("PLAIN").start(b"bob@example.org\0alice\0pw") == Credentials(
        "alice", "pw", authzid="bob@example.org", mechanism="PLAIN"
    )


@pytest.mark.parametrize(
    "response",
    [b"", b"alice pw", b"\0alice", b"\0\0pw", b"\0alice\0pw\0more", b"\0al\xffice\0pw"],
)
def test_plain_malformed(response: bytes) -> None:
    """Not exactly two NULs, an empty user name, or not UTF-8: malformed."""
    with pytest.raises(SASLError):
        Exchange("PLAIN").respond(response)


def test_login_asks_user_name_then_password() -> None:
    """LOGIN: "Username:", then "Password:", then the credentials; an initial response is
    the user name. An empty password is passed on for the check to refuse."""
    exchange = Exchange("LOGIN")
    assert exchange.start(None) == b"Username:"
    assert exchange.respond(b"alice@example.org") == b"Password:"
    assert exchange.respond(b"secret") == Credentials(
        "alice@example.org", "secret", mechanism="LOGIN"
    )
    initial = Exchange("LOGIN")
    assert initial.start(b"alice") == b"Password:"
    assert initial.respond(b"") == Credentials("alice", "", mechanism="LOGIN")


def test_login_malformed() -> None:
    """LOGIN with an empty user name, or a response that is not UTF-8, is malformed."""
    with pytest.raises(SASLError):
        Exchange("LOGIN").respond(b"")
    exchange = Exchange("LOGIN")
    exchange.start(None)
    exchange.respond(b"alice")
    with pytest.raises(SASLError):
        exchange.respond(b"\xff")


def test_credentials_repr_hides_the_password() -> None:
    """Credentials can be logged by accident without leaking the password."""
    text = repr(Credentials("alice", "hunter2", mechanism="LOGIN"))
    assert "hunter2" not in text and "alice" in text and "LOGIN" in text


def test_authorizes_only_oneself() -> None:
    """RFC 4616 §2: no authorization identity, or one naming the user's own mailbox (as the
    login, the address, or any spelling that normalises to it), is allowed; another user or
    a malformed identity is not."""
    address = "alice@example.org"

    def check(authzid: str, login: str = "alice") -> bool:
        return authorizes(Credentials(login, "pw", authzid=authzid), address)

    assert check("")
    assert check("alice")
    assert check("alice@example.org", login="Alice")
    assert check("Alice@Example.ORG")
    assert not check("bob@example.org")
    assert not check("not an address")
