"""The POP3 session state machine, with plain calls and no I/O (mailserver.pop3.session)."""

from __future__ import annotations

import base64

import pytest

from mailserver.interfaces import MessageInfo
from mailserver.pop3 import replies
from mailserver.pop3.replies import Reply
from mailserver.pop3.session import (
    MAX_COMMAND_LINE,
    MAX_SASL_RESPONSE_LINE,
    Authenticate,
    Close,
    Commit,
    OpenMailbox,
    Outcome,
    POP3Session,
    SendMessage,
    SessionPolicy,
    StartTLS,
    State,
)
from mailserver.sasl import Credentials

POLICY = SessionPolicy(hostname="mx.example.org", max_errors=20, max_auth_failures=3)
MESSAGES = [MessageInfo("uid-a", 120), MessageInfo("uid-b", 200), MessageInfo("uid-c", 35)]


def send(session: POP3Session, line: str) -> Outcome:
    return session.handle_line(line.encode())


def reply(outcome: Outcome) -> Reply:
    assert isinstance(outcome, Reply), outcome
    return outcome


def logged_in(messages: list[MessageInfo] | None = None) -> POP3Session:
    session = POP3Session(POLICY, plaintext_allowed=True)
    assert send(session, "USER alice") == replies.USER_OK
    assert isinstance(send(session, "PASS secret"), Authenticate)
    assert session.authenticated("alice@example.org") == OpenMailbox("alice@example.org")
    opened = session.mailbox_opened("alice@example.org", MESSAGES if messages is None else messages)
    assert opened == replies.LOGGED_IN
    return session


def plain(authzid: str, authcid: str, password: str) -> str:
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def credentials(outcome: Outcome) -> Credentials:
    assert isinstance(outcome, Authenticate), outcome
    return outcome.credentials


# -- AUTHORIZATION ----------------------------------------------------------------------------


def test_greeting_has_no_apop_banner() -> None:
    """RFC 1939 §4: +OK greeting; no <timestamp>, since APOP is not offered."""
    greeting = POP3Session(POLICY, plaintext_allowed=True).greeting()
    assert greeting == replies.GREETING
    assert "<" not in greeting.text and greeting.to_bytes().startswith(b"+OK mx.example.org")


def test_capa_lists_exactly_what_works() -> None:
    """RFC 2449 §5: CAPA names TOP UIDL USER SASL RESP-CODES AUTH-RESP-CODE PIPELINING
    IMPLEMENTATION, and the same list once logged in."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    capabilities = reply(send(session, "CAPA"))
    assert capabilities == replies.CAPABILITIES
    assert capabilities.lines == (
        "TOP",
        "UIDL",
        "USER",
        "SASL PLAIN LOGIN",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "IMPLEMENTATION mailserver",
    )
    assert reply(send(logged_in(), "CAPA")).lines == capabilities.lines


def test_without_plaintext_no_login_mechanism_is_offered_or_accepted() -> None:
    """Where plaintext is not allowed, CAPA omits USER and SASL and both are refused [AUTH]."""
    session = POP3Session(POLICY, plaintext_allowed=False)
    lines = reply(send(session, "CAPA")).lines
    assert lines is not None and "USER" not in lines
    assert not any(line.startswith("SASL") for line in lines)
    assert send(session, "USER alice") == replies.PLAINTEXT_DISALLOWED
    assert send(session, f"AUTH PLAIN {plain('', 'alice', 'pw')}") == replies.PLAINTEXT_DISALLOWED
    assert replies.PLAINTEXT_DISALLOWED.code == "AUTH"
    assert reply(send(session, "AUTH")).lines == ()


def test_user_pass_asks_for_a_credential_check() -> None:
    """USER then PASS gives Authenticate; spaces in the password are kept (RFC 1939 §7)."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    assert send(session, "user alice@example.org") == replies.USER_OK
    action = send(session, "PASS correct horse  battery ")
    assert action == Authenticate(
        Credentials("alice@example.org", "correct horse  battery ", mechanism="USER")
    )
    assert "horse" not in repr(action)


def test_pass_only_immediately_after_user() -> None:
    """RFC 1939 §7: PASS without USER, or after another command, is refused."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    assert send(session, "PASS secret") == replies.USER_FIRST
    send(session, "USER alice")
    send(session, "CAPA")
    assert send(session, "PASS secret") == replies.USER_FIRST


def test_failed_login_same_reply_and_limit() -> None:
    """A failure is -ERR [AUTH] whatever the reason; the third closes the connection."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    for _ in range(2):
        send(session, "USER nobody")
        send(session, "PASS x")
        failed = reply(session.authenticated(None))
        assert failed == replies.AUTH_FAILED and failed.to_bytes().startswith(b"-ERR [AUTH] ")
    send(session, "USER nobody")
    send(session, "PASS x")
    assert session.authenticated(None) == Close(replies.TOO_MANY_FAILURES)
    assert session.closed


def test_login_opens_the_mailbox_then_transaction() -> None:
    """Valid credentials lead to OpenMailbox, and the opened snapshot to TRANSACTION."""
    session = logged_in()
    assert session.state is State.TRANSACTION
    assert session.address == "alice@example.org"


def test_mailbox_in_use_stays_in_authorization() -> None:
    """RFC 1939 §4: no lock, -ERR [IN-USE]; the client may try again later."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    send(session, "USER alice")
    send(session, "PASS secret")
    session.authenticated("alice@example.org")
    in_use = session.mailbox_in_use()
    assert in_use == replies.IN_USE and in_use.to_bytes().startswith(b"-ERR [IN-USE] ")
    assert session.state is State.AUTHORIZATION
    assert send(session, "USER alice") == replies.USER_OK


def test_trouble_on_our_side_is_sys_temp_or_perm() -> None:
    """Credential-check and mailbox failures answer [SYS/TEMP], a permanent one [SYS/PERM]."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    send(session, "USER alice")
    send(session, "PASS secret")
    assert session.authentication_unavailable().code == "SYS/TEMP"
    assert session.mailbox_unavailable(permanent=False).code == "SYS/TEMP"
    assert session.mailbox_unavailable(permanent=True).code == "SYS/PERM"


def test_sasl_plain_with_initial_response() -> None:
    """RFC 5034 §4 / RFC 4616: AUTH PLAIN <base64> carries authzid, authcid and password."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    action = send(session, f"AUTH PLAIN {plain('', 'alice', 'pw with space')}")
    assert action == Authenticate(Credentials("alice", "pw with space", mechanism="PLAIN"))


def test_sasl_plain_with_challenge() -> None:
    """AUTH PLAIN alone gets "+ ", and the next line is the response, not a command."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    challenge = reply(send(session, "auth plain"))
    assert challenge == replies.SASL_CHALLENGE and challenge.to_bytes() == b"+ \r\n"
    action = send(session, plain("", "alice", "pw"))
    assert action == Authenticate(Credentials("alice", "pw", mechanism="PLAIN"))


def test_sasl_cancel_and_malformed_responses() -> None:
    """RFC 5034 §4: "*" cancels with -ERR; bad base64, "=" (empty) and a missing NUL fail."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    send(session, "AUTH PLAIN")
    assert send(session, "*") == replies.AUTH_CANCELLED
    assert send(session, "AUTH PLAIN =") == replies.BAD_SASL_RESPONSE
    assert send(session, "AUTH PLAIN !!!notbase64") == replies.BAD_SASL_RESPONSE
    no_nul = base64.b64encode(b"alice pw").decode()
    assert send(session, f"AUTH PLAIN {no_nul}") == replies.BAD_SASL_RESPONSE


def test_sasl_login_asks_for_user_name_then_password() -> None:
    """AUTH LOGIN: "+ " challenges "Username:" and "Password:" in base64, each answered by
    one base64 line, then the credentials are checked (mechanism LOGIN)."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    first = reply(send(session, "AUTH LOGIN"))
    assert first == replies.SASL_CHALLENGE and first.to_bytes() == b"+ VXNlcm5hbWU6\r\n"
    second = reply(send(session, b64("alice@example.org")))
    assert second.to_bytes() == b"+ UGFzc3dvcmQ6\r\n"
    action = send(session, b64("pw with space"))
    assert action == Authenticate(
        Credentials("alice@example.org", "pw with space", mechanism="LOGIN")
    )


def test_sasl_login_with_initial_response_and_cancel() -> None:
    """An initial response to AUTH LOGIN is the user name; "*" at the password prompt
    cancels with -ERR, and the next line is a command again."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    assert reply(send(session, f"AUTH LOGIN {b64('alice')}")).text == b64("Password:")
    assert send(session, "*") == replies.AUTH_CANCELLED
    assert reply(send(session, "CAPA")) == replies.CAPABILITIES


def test_sasl_unknown_mechanism_and_listing() -> None:
    """PLAIN and LOGIN are offered (CAPA's SASL line, RFC 5034 §3); others get -ERR; a bare
    AUTH lists them for older clients."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    assert send(session, "AUTH CRAM-MD5") == replies.UNKNOWN_MECHANISM
    listing = reply(send(session, "AUTH"))
    assert listing == replies.MECHANISMS and listing.lines == ("PLAIN", "LOGIN")


def test_sasl_authzid_goes_to_the_login_check() -> None:
    """The session passes the authorization identity on; the login checker decides whether
    it names the user's own mailbox (RFC 4616 §2), and the session only hears the answer."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    action = send(session, f"AUTH PLAIN {plain('bob@example.org', 'alice', 'pw')}")
    assert credentials(action).authzid == "bob@example.org"
    assert session.authenticated(None) == replies.AUTH_FAILED


def test_sasl_response_line_limit() -> None:
    """A response may be longer than a command line (RFC 5034 §4), up to its own limit; past
    that the exchange ends with -ERR and the next line is a command."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    send(session, "AUTH PLAIN")
    assert session.line_limit == MAX_SASL_RESPONSE_LINE > MAX_COMMAND_LINE
    assert session.handle_line(b"A" * MAX_SASL_RESPONSE_LINE) == replies.BAD_SASL_RESPONSE
    assert session.line_limit == MAX_COMMAND_LINE
    send(session, "AUTH PLAIN")
    long_password = "p" * 1000
    assert credentials(send(session, plain("", "alice", long_password))).password == long_password


def test_commands_outside_their_state() -> None:
    """The state table: TRANSACTION commands need a login, USER/PASS/AUTH refuse after one."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    for command in ("STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 0", "UIDL"):
        assert send(session, command) == replies.NOT_LOGGED_IN, command
    session = logged_in()
    for command in ("USER alice", "PASS x", "AUTH PLAIN", "STLS"):
        assert send(session, command) == replies.ALREADY_LOGGED_IN, command


def test_apop_and_unknown_commands() -> None:
    """APOP is not offered; unknown keywords get -ERR; too many errors close the session."""
    strict = SessionPolicy(hostname="mx.example.org", max_errors=5)
    session = POP3Session(strict, plaintext_allowed=True)
    assert send(session, "APOP alice 0123456789abcdef") == replies.UNKNOWN_COMMAND
    assert send(session, "LAST") == replies.UNKNOWN_COMMAND
    for _ in range(strict.max_errors - 2):
        assert send(session, "BOGUS") == replies.UNKNOWN_COMMAND
    assert send(session, "BOGUS") == Close(replies.TOO_MANY_ERRORS)


def test_line_length_limit_is_255_with_crlf() -> None:
    """RFC 2449 §4: 255 octets with CRLF pass, one more is refused."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    longest = "USER " + "a" * (MAX_COMMAND_LINE - 2 - 5)
    assert send(session, longest) == replies.USER_OK
    assert send(session, longest + "a") == replies.LINE_TOO_LONG


def test_bad_octets_in_a_command() -> None:
    """Non-UTF-8 and NUL in a command line are syntax errors."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    assert session.handle_line(b"USER \xff") == replies.SYNTAX_ERROR
    assert session.handle_line(b"USER a\0b") == replies.SYNTAX_ERROR


def test_quit_in_authorization_touches_nothing() -> None:
    """RFC 1939 §4: QUIT before login closes without an UPDATE state."""
    session = POP3Session(POLICY, plaintext_allowed=True)
    assert send(session, "QUIT") == Close(replies.BYE)
    assert session.closed


# -- TLS (RFC 2595, RFC 8314) ------------------------------------------------------------------


def tls_session(plaintext_allowed: bool = False) -> POP3Session:
    return POP3Session(POLICY, plaintext_allowed=plaintext_allowed, tls_available=True)


def test_capa_offers_stls_only_while_it_can_be_used() -> None:
    """RFC 2595 §4: STLS is listed when the listener has TLS and the connection is still
    plaintext; not without a certificate, not inside TLS (after STLS or implicit TLS)."""
    session = tls_session()
    assert reply(send(session, "CAPA")).lines == (
        "TOP",
        "UIDL",
        "STLS",
        "RESP-CODES",
        "AUTH-RESP-CODE",
        "PIPELINING",
        "IMPLEMENTATION mailserver",
    )
    assert send(session, "STLS") == StartTLS(replies.TLS_READY)
    after = reply(send(session, "CAPA")).lines
    assert after is not None and "STLS" not in after
    assert "USER" in after and "SASL PLAIN LOGIN" in after
    plain_only = reply(send(POP3Session(POLICY, plaintext_allowed=True), "CAPA")).lines
    assert plain_only is not None and "STLS" not in plain_only


def test_stls_then_plaintext_login_is_allowed() -> None:
    """Where plaintext is not allowed, USER and AUTH are refused [AUTH] before STLS and
    accepted after it: the password now travels inside TLS."""
    session = tls_session()
    assert send(session, "USER alice") == replies.PLAINTEXT_DISALLOWED
    assert send(session, "STLS") == StartTLS(replies.TLS_READY)
    assert session.encrypted and session.plaintext_allowed
    assert send(session, "USER alice") == replies.USER_OK
    assert isinstance(send(session, "PASS secret"), Authenticate)


def test_stls_refusals() -> None:
    """STLS with an argument is a syntax error; a second STLS gets RFC 2595's "-ERR Command
    not permitted when TLS active"; without a certificate STLS is not available."""
    session = tls_session()
    assert send(session, "STLS now") == replies.SYNTAX_ERROR
    assert not session.encrypted
    assert send(session, "stls") == StartTLS(replies.TLS_READY)
    assert send(session, "STLS") == replies.TLS_ACTIVE
    assert replies.TLS_ACTIVE.to_bytes() == b"-ERR Command not permitted when TLS active\r\n"
    without = POP3Session(POLICY, plaintext_allowed=True)
    assert send(without, "STLS") == replies.TLS_UNAVAILABLE
    assert not without.encrypted


def test_user_before_stls_is_forgotten() -> None:
    """A USER sent in plaintext does not carry over into TLS: PASS after STLS is refused as
    if USER had never been sent (RFC 1939 §7's -ERR), and that counts as an error."""
    session = tls_session(plaintext_allowed=True)
    assert send(session, "USER bob") == replies.USER_OK
    assert send(session, "STLS") == StartTLS(replies.TLS_READY)
    assert send(session, "PASS x") == replies.USER_FIRST


def test_stls_during_a_sasl_exchange_is_its_response() -> None:
    """RFC 5034 §4: while an exchange waits for a response, "STLS" is that response (here
    malformed, ending the exchange), not a command: TLS is not started."""
    session = tls_session(plaintext_allowed=True)
    send(session, "AUTH PLAIN")
    assert send(session, "STLS") == replies.BAD_SASL_RESPONSE
    assert not session.encrypted
    assert send(session, "STLS") == StartTLS(replies.TLS_READY)


def test_implicit_tls_starts_encrypted() -> None:
    """RFC 8314 (port 995): a session that starts inside TLS offers no STLS, refuses it as
    already active, and allows plaintext logins whatever the plaintext policy says."""
    session = POP3Session(POLICY, plaintext_allowed=False, tls_available=True, encrypted=True)
    lines = reply(send(session, "CAPA")).lines
    assert lines is not None and "STLS" not in lines and "USER" in lines
    assert send(session, "STLS") == replies.TLS_ACTIVE
    assert send(session, "USER alice") == replies.USER_OK


# -- TRANSACTION ------------------------------------------------------------------------------


def test_stat_list_uidl() -> None:
    """STAT, LIST and UIDL with and without an argument (RFC 1939 §5 and §7)."""
    session = logged_in()
    assert reply(send(session, "STAT")).text == "3 355"
    listing = reply(send(session, "LIST"))
    assert listing == replies.SCAN_LISTING and listing.lines == ("1 120", "2 200", "3 35")
    assert reply(send(session, "LIST 2")).to_bytes() == b"+OK 2 200\r\n"
    uidl = reply(send(session, "UIDL"))
    assert uidl.lines == ("1 uid-a", "2 uid-b", "3 uid-c")
    assert reply(send(session, "uidl 3")).to_bytes() == b"+OK 3 uid-c\r\n"


def test_multi_line_listing_is_one_piece() -> None:
    """A multi-line reply's wire form is the status line, the lines and "." in one bytes."""
    assert reply(send(logged_in(), "LIST")).to_bytes() == (
        b"+OK 3 messages (355 octets)\r\n1 120\r\n2 200\r\n3 35\r\n.\r\n"
    )


def test_message_number_errors() -> None:
    """Out of range, not a number, several numbers: -ERR, nothing sent."""
    session = logged_in()
    assert send(session, "LIST 0") == replies.NO_SUCH_MESSAGE
    assert send(session, "LIST 4") == replies.NO_SUCH_MESSAGE
    assert send(session, "RETR x") == replies.SYNTAX_ERROR
    assert send(session, "RETR -1") == replies.SYNTAX_ERROR
    assert send(session, "DELE 1 2") == replies.SYNTAX_ERROR
    assert send(session, "RETR") == replies.SYNTAX_ERROR


def test_dele_marks_and_hides_until_rset() -> None:
    """RFC 1939 §5: a deleted message leaves STAT/LIST/UIDL and cannot be used; RSET undoes."""
    session = logged_in()
    assert send(session, "DELE 2") == replies.DELETED
    assert send(session, "DELE 2") == replies.ALREADY_DELETED
    assert send(session, "RETR 2") == replies.ALREADY_DELETED
    assert send(session, "LIST 2") == replies.ALREADY_DELETED
    assert reply(send(session, "STAT")).text == "2 155"
    assert reply(send(session, "LIST")).lines == ("1 120", "3 35")
    assert reply(send(session, "UIDL")).lines == ("1 uid-a", "3 uid-c")
    assert send(session, "RSET") == replies.RESET
    assert reply(send(session, "STAT")).text == "3 355"


def test_retr_and_top_ask_for_the_message() -> None:
    """RETR sends the whole message with its size; TOP the header and n lines."""
    session = logged_in()
    retr = send(session, "RETR 2")
    assert retr == SendMessage(replies.MESSAGE_FOLLOWS, 1)
    assert isinstance(retr, SendMessage) and retr.reply.text == "200 octets"
    assert send(session, "TOP 1 0") == SendMessage(replies.TOP_FOLLOWS, 0, top_lines=0)
    assert send(session, "TOP 1") == replies.SYNTAX_ERROR
    assert send(session, "TOP 1 -2") == replies.SYNTAX_ERROR


def test_quit_commits_deletions_and_retrieved_messages() -> None:
    """QUIT enters UPDATE: deleted messages go, RETR'd kept ones are marked seen, TOP'd not."""
    session = logged_in()
    send(session, "RETR 1")
    send(session, "RETR 2")
    send(session, "TOP 3 1")
    send(session, "DELE 2")
    assert send(session, "QUIT") == Commit(deleted=(1,), seen=(0,))
    assert session.state is State.UPDATE
    bye = session.committed()
    assert bye == Close(replies.BYE) and "2 messages left" in bye.reply.text
    assert session.closed


def test_commit_failure_is_reported() -> None:
    """RFC 1939 §6: if removal fails, QUIT answers -ERR [SYS/TEMP]."""
    session = logged_in()
    send(session, "DELE 1")
    send(session, "QUIT")
    assert session.commit_failed() == Close(replies.NOT_ALL_DELETED)


def test_vanished_message_is_not_marked_seen() -> None:
    """A message another program removed gets -ERR and is not in the seen list."""
    session = logged_in()
    send(session, "RETR 1")
    assert session.message_unavailable(0, gone=True) == replies.MESSAGE_GONE
    assert session.message_unavailable(0, gone=False) == replies.TEMPORARY_FAILURE
    assert send(session, "QUIT") == Commit(deleted=(), seen=())


@pytest.mark.parametrize("command", ["NOOP", "noop"])
def test_noop(command: str) -> None:
    """NOOP answers a bare +OK; keywords are case-insensitive."""
    assert reply(send(logged_in(), command)).to_bytes() == b"+OK\r\n"


def test_empty_mailbox() -> None:
    """An empty maildrop lists nothing and STAT says 0 0."""
    session = logged_in([])
    assert reply(send(session, "STAT")).text == "0 0"
    assert reply(send(session, "LIST")).to_bytes() == b"+OK 0 messages (0 octets)\r\n.\r\n"
    assert send(session, "RETR 1") == replies.NO_SUCH_MESSAGE
