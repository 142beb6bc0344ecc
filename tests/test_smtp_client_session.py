"""Tests for mailserver.smtp.client_session: the SMTP client's state machine, reply parser,
capabilities and command building, with plain function calls and no transport."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailserver.interfaces import (
    DeliveryOutcome,
    OutboundMessage,
    OutboundRecipient,
    RecipientResult,
    ReplyInfo,
)
from mailserver.smtp.client_session import (
    BAD_RECIPIENT,
    BAD_SENDER,
    CONNECTION_LOST,
    LOCAL_ERROR,
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    MESSAGE_TOO_BIG,
    NEEDS_SMTPUTF8,
    NO_AUTH_MECHANISM,
    NOT_CONNECTED,
    PASSWORD_NEEDS_TLS,
    PROTOCOL_ERROR,
    TIMEOUT,
    TLS_FAILED,
    TLS_NOT_OFFERED,
    TLS_REFUSED,
    Capabilities,
    ClientAction,
    ClientSession,
    ClientSettings,
    ClientTimeouts,
    Close,
    Finished,
    Ready,
    RemoteProtocolError,
    ReplyParser,
    Send,
    SendContent,
    SetupFailed,
    StartTLS,
    State,
    mail_command,
    needs_smtputf8,
    ours,
    outcome_of,
    rcpt_command,
)

HOST = "mx.remote.example"
PEER = f"{HOST} [192.0.2.25]"
SETTINGS = ClientSettings(hostname="out.ours.example")
TIMEOUTS = ClientTimeouts(
    greeting=1, command=2, mail=3, rcpt=4, data_init=5, data_block=6, data_end=7
)

GREETING = ReplyInfo(220, None, f"{HOST} ESMTP")
PLAIN_EHLO = ReplyInfo(250, None, f"{HOST} greets out.ours.example")
FULL_EHLO = ReplyInfo(
    250,
    None,
    f"{HOST} greets out.ours.example\nPIPELINING\nSIZE 1000\n8BITMIME\nSMTPUTF8\nDSN\n"
    "ENHANCEDSTATUSCODES\nCHUNKING",
)
TLS_EHLO = ReplyInfo(250, None, f"{HOST} greets out.ours.example\nSTARTTLS\nAUTH PLAIN LOGIN")
OK = ReplyInfo(250, "2.0.0", "OK")
SENDER_OK = ReplyInfo(250, "2.1.0", "Sender OK")
RECIPIENT_OK = ReplyInfo(250, "2.1.5", "Recipient OK")
NO_SUCH_USER = ReplyInfo(550, "5.1.1", "No such user")
MAILBOX_BUSY = ReplyInfo(450, "4.2.1", "Mailbox busy")
START_DATA = ReplyInfo(354, None, "Go ahead")
ACCEPTED = ReplyInfo(250, "2.0.0", "Queued as 1234")
NO_VALID_RECIPIENTS = ReplyInfo(554, "5.5.1", "No valid recipients")
CLOSING = ReplyInfo(421, "4.3.2", "Shutting down")


def message(*recipients: str, **fields: object) -> OutboundMessage:
    values: dict[str, object] = {
        "id": "Q1",
        "sender": "alice@ours.example",
        "recipients": tuple(OutboundRecipient(address) for address in recipients),
        "path": Path("/nonexistent/message"),
        "size": 100,
    }
    values.update(fields)
    return OutboundMessage(**values)  # type: ignore[arg-type]


def sent(actions: list[ClientAction]) -> bytes:
    return b"".join(action.data for action in actions if isinstance(action, Send))


def kinds(actions: list[ClientAction]) -> list[type]:
    return [type(action) for action in actions]


def results_of(actions: list[ClientAction]) -> list[RecipientResult]:
    finished = [action for action in actions if isinstance(action, Finished)]
    assert len(finished) == 1, actions
    return finished[0].results


def outcomes(results: list[RecipientResult]) -> list[tuple[DeliveryOutcome, ReplyInfo]]:
    return [(result.outcome, result.reply) for result in results]


def new_session(settings: ClientSettings = SETTINGS) -> ClientSession:
    return ClientSession(settings, HOST, PEER)


def ready(ehlo: ReplyInfo = FULL_EHLO, settings: ClientSettings = SETTINGS) -> ClientSession:
    """A session set up over plaintext with ``ehlo`` as the server's EHLO reply."""
    session = new_session(settings)
    assert sent(session.reply_received(GREETING)) == b"EHLO out.ours.example\r\n"
    actions = session.reply_received(ehlo)
    assert kinds(actions) == [Ready], actions
    return session


def replies(session: ClientSession, *answers: ReplyInfo) -> list[ClientAction]:
    """Feed replies one by one; all the actions they lead to."""
    actions: list[ClientAction] = []
    for answer in answers:
        actions += session.reply_received(answer)
    return actions


# --- The reply parser ---------------------------------------------------------------------------


def parse(data: bytes) -> list[ReplyInfo]:
    parser = ReplyParser()
    parser.feed(data)
    found = []
    while (reply := parser.next_reply()) is not None:
        found.append(reply)
    return found


def test_single_and_multiline_replies() -> None:
    """A one-line reply, a multi-line one joined with newlines, and a code alone."""
    assert parse(b"220 mx ready\r\n250-mx greets\r\n250-PIPELINING\r\n250 SIZE 10\r\n354\r\n") == [
        ReplyInfo(220, None, "mx ready"),
        ReplyInfo(250, None, "mx greets\nPIPELINING\nSIZE 10"),
        ReplyInfo(354, None, ""),
    ]


def test_enhanced_code_taken_off_every_line() -> None:
    """RFC 2034: the enhanced code of the reply's class is split off, from each line that
    repeats it; one of another class is left in the text."""
    assert parse(b"550-5.1.1 No such user\r\n550 5.1.1 here\r\n") == [
        ReplyInfo(550, "5.1.1", "No such user\nhere")
    ]
    assert parse(b"250 5.1.1 odd\r\n") == [ReplyInfo(250, None, "5.1.1 odd")]


def test_bare_lf_accepted_and_control_characters_replaced() -> None:
    """Lines may end with a bare LF; control characters in the text become "?"."""
    assert parse(b"250 a\x1bb\tc\n") == [ReplyInfo(250, None, "a?b\tc")]


@given(st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_any_chunking(cuts: list[int]) -> None:
    """Replies arriving in pieces of any size parse the same."""
    data = b"250-mx greets\r\n250-8BITMIME\r\n250 DSN\r\n451 4.3.0 later\r\n"
    parser = ReplyParser()
    start = 0
    for point in [*sorted(cuts), len(data)]:
        parser.feed(data[start:point])
        start = max(start, point)
    assert [parser.next_reply(), parser.next_reply(), parser.next_reply()] == [
        ReplyInfo(250, None, "mx greets\n8BITMIME\nDSN"),
        ReplyInfo(451, "4.3.0", "later"),
        None,
    ]


@pytest.mark.parametrize(
    "garbage",
    [
        b"hello\r\n",  # no code
        b"250x\r\n",  # no separator
        b"650 nonsense\r\n",  # not a reply class
        b"250-first\r\n550 second\r\n",  # another code in the middle of a reply
        b"25 short\r\n",
    ],
)
def test_malformed_replies(garbage: bytes) -> None:
    """What is not a well-formed reply is the server breaking the protocol."""
    with pytest.raises(RemoteProtocolError):
        parse(garbage)


def test_endless_line_refused_before_its_end() -> None:
    """A line longer than the limit is refused as soon as the limit is passed, not when its
    end arrives (if ever): memory stays bounded."""
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * (MAX_REPLY_LINE - 10))
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"x" * 10)


def test_endless_reply_refused() -> None:
    """More continuation lines than the limit are refused."""
    with pytest.raises(RemoteProtocolError):
        parse(b"250-x\r\n" * MAX_REPLY_LINES + b"250 x\r\n")


def test_unasked_replies_bounded() -> None:
    """Complete replies that nothing takes cannot pile up without limit."""
    parser = ReplyParser()
    with pytest.raises(RemoteProtocolError):
        for _ in range(1000):
            parser.feed(b"250 " + b"x" * 2000 + b"\r\n")


def test_discard() -> None:
    """discard() forgets complete and partial replies alike (RFC 3207 §4.2)."""
    parser = ReplyParser()
    parser.feed(b"250 injected\r\n250-half")
    parser.discard()
    parser.feed(b"220 fresh\r\n")
    assert parser.next_reply() == ReplyInfo(220, None, "fresh")


# --- Capabilities and commands ------------------------------------------------------------------


def test_capabilities_from_ehlo() -> None:
    """Each keyword of the EHLO reply is read, case-insensitively; SIZE without a number is no
    fixed limit; the old AUTH= form counts too."""
    capabilities = Capabilities.from_ehlo(
        ReplyInfo(
            250,
            None,
            "mx greets\npipelining\nSIZE\n8BITMIME\nSMTPUTF8\nDSN\nSTARTTLS\n"
            "ENHANCEDSTATUSCODES\nAUTH=login\nAUTH PLAIN",
        )
    )
    assert capabilities == Capabilities(
        size=0,
        pipelining=True,
        eightbitmime=True,
        smtputf8=True,
        dsn=True,
        starttls=True,
        enhanced_status_codes=True,
        auth=frozenset({"LOGIN", "PLAIN"}),
    )
    assert Capabilities.from_ehlo(ReplyInfo(250, None, "mx\nSIZE 1000")).size == 1000
    assert Capabilities.from_ehlo(ReplyInfo(250, None, "mx")) == Capabilities()


def test_mail_parameters_only_when_offered() -> None:
    """SIZE, BODY=8BITMIME, SMTPUTF8 and the DSN parameters go on MAIL only to a server that
    offers them."""
    dsn_message = message(
        "bob@remote.example", body_8bit=True, envid="id+1=x", ret="hdrs", smtputf8=True
    )
    assert mail_command(dsn_message, Capabilities()) == "MAIL FROM:<alice@ours.example>"
    assert mail_command(dsn_message, Capabilities.from_ehlo(FULL_EHLO)) == (
        "MAIL FROM:<alice@ours.example> SIZE=100 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3Dx"
    )
    assert mail_command(message("bob@remote.example", sender=""), Capabilities()) == (
        "MAIL FROM:<>"
    )


def test_rcpt_parameters_only_when_offered() -> None:
    """NOTIFY (NEVER alone, the rest in order) and ORCPT (xtext) only with DSN; an ORCPT
    that is not ASCII is left out rather than sent wrongly encoded."""
    recipient = OutboundRecipient(
        "bob@remote.example",
        notify=frozenset({"DELAY", "FAILURE", "SUCCESS"}),
        orcpt="rfc822;bob+tag=x@remote.example",
    )
    dsn = Capabilities(dsn=True)
    assert rcpt_command(recipient, Capabilities()) == "RCPT TO:<bob@remote.example>"
    assert rcpt_command(recipient, dsn) == (
        "RCPT TO:<bob@remote.example> NOTIFY=SUCCESS,FAILURE,DELAY"
        " ORCPT=rfc822;bob+2Btag+3Dx@remote.example"
    )
    never = OutboundRecipient("bob@remote.example", notify=frozenset({"NEVER"}), orcpt="rfc822;é@x")
    assert rcpt_command(never, dsn) == "RCPT TO:<bob@remote.example> NOTIFY=NEVER"


def test_settings() -> None:
    """An unknown TLS mode is refused; the password never shows in the repr."""
    with pytest.raises(ValueError):
        ClientSettings(hostname="x", tls="sometimes")
    assert "secret" not in repr(ClientSettings(hostname="x", auth=("me", "secret")))


# --- Setting up -------------------------------------------------------------------------------


def test_greeting_then_ehlo_then_ready() -> None:
    """220, EHLO, 250: ready, with the capabilities the server offered."""
    session = new_session()
    assert session.timeout == ClientTimeouts().greeting
    assert session.reply_received(GREETING) == [Send(b"EHLO out.ours.example\r\n")]
    assert session.reply_received(FULL_EHLO) == [Ready(Capabilities.from_ehlo(FULL_EHLO))]
    assert session.state is State.READY
    assert session.timeout is None


@pytest.mark.parametrize(
    ("greeting", "permanent", "quit"),
    [
        (ReplyInfo(554, "5.7.1", "No SMTP service here"), True, True),
        (ReplyInfo(450, None, "Busy"), False, True),
        (CLOSING, False, False),
    ],
)
def test_refusing_greeting(greeting: ReplyInfo, permanent: bool, quit: bool) -> None:
    """RFC 5321 §3.1: a 554 greeting fails the set-up for good, with QUIT; a 4xx for now;
    after 421 the server is closing, so no QUIT."""
    actions = new_session().reply_received(greeting)
    assert actions[0] == SetupFailed(greeting, permanent)
    assert sent(actions) == (b"QUIT\r\n" if quit else b"")
    assert isinstance(actions[-1], Close)


def test_ehlo_refused_falls_back_to_helo() -> None:
    """RFC 5321 §3.2: EHLO answered 5xx: HELO, and no extension is used."""
    session = new_session()
    session.reply_received(GREETING)
    actions = session.reply_received(ReplyInfo(502, "5.5.1", "Command not implemented"))
    assert actions == [Send(b"HELO out.ours.example\r\n")]
    assert session.reply_received(ReplyInfo(250, None, HOST)) == [Ready(Capabilities())]


def test_ehlo_temporary_failure() -> None:
    """A 4xx to EHLO fails the set-up for now."""
    session = new_session()
    session.reply_received(GREETING)
    actions = session.reply_received(ReplyInfo(451, None, "Later"))
    assert actions[0] == SetupFailed(ReplyInfo(451, None, "Later"), permanent=False)


def starttls_session(settings: ClientSettings = SETTINGS) -> ClientSession:
    """A session whose STARTTLS got its 220 and whose handshake is under way."""
    session = new_session(settings)
    session.reply_received(GREETING)
    assert session.reply_received(TLS_EHLO) == [Send(b"STARTTLS\r\n")]
    assert session.reply_received(ReplyInfo(220, "2.0.0", "Go ahead")) == [StartTLS()]
    assert session.capabilities == Capabilities()  # RFC 3207 §4.2: forgotten
    assert session.timeout == ClientTimeouts().command  # the handshake is timed too
    return session


def test_opportunistic_starttls_then_ehlo_again() -> None:
    """STARTTLS when offered; once TLS is up, EHLO again and the new capabilities count."""
    session = starttls_session()
    assert session.tls_started("TLSv1.3 with cipher X") == [Send(b"EHLO out.ours.example\r\n")]
    assert session.reply_received(FULL_EHLO) == [Ready(Capabilities.from_ehlo(FULL_EHLO))]
    assert session.encrypted and session.tls == "TLSv1.3 with cipher X"


def test_opportunistic_without_starttls_goes_on_in_plaintext() -> None:
    """RFC 7435: not offered, or refused: plaintext."""
    ready(PLAIN_EHLO)
    session = new_session()
    session.reply_received(GREETING)
    session.reply_received(TLS_EHLO)
    actions = session.reply_received(ReplyInfo(454, "4.7.0", "TLS not available"))
    assert kinds(actions) == [Ready]
    assert not session.encrypted


def test_tls_off_never_starts_tls() -> None:
    """With tls = "off", an offered STARTTLS is not used."""
    ready(TLS_EHLO, ClientSettings(hostname="out.ours.example", tls="off"))


def test_required_tls_not_offered_or_refused() -> None:
    """With tls = "required", no STARTTLS (or a refused one) fails the set-up, for now,
    saying why."""
    required = ClientSettings(hostname="out.ours.example", tls="required")
    session = new_session(required)
    session.reply_received(GREETING)
    actions = session.reply_received(PLAIN_EHLO)
    assert actions == [
        SetupFailed(ours(TLS_NOT_OFFERED, host=PEER), permanent=False),
        Send(b"QUIT\r\n"),
        Close(),
    ]
    session = new_session(required)
    session.reply_received(GREETING)
    session.reply_received(TLS_EHLO)
    refusal = ReplyInfo(454, "4.7.0", "TLS not available")
    actions = session.reply_received(refusal)
    assert actions[0] == SetupFailed(ours(TLS_REFUSED, host=PEER, reply=refusal), False)


def test_handshake_failure() -> None:
    """A connection lost, or a timeout, during the handshake fails the set-up, marked as a
    TLS failure (so an opportunistic client may try again in plaintext)."""
    session = starttls_session()
    assert session.connection_lost("certificate verify failed") == [
        SetupFailed(
            ours(TLS_FAILED, host=PEER, reason="certificate verify failed"),
            permanent=False,
            during_tls=True,
        )
    ]
    assert not session.usable
    session = starttls_session()
    timeout = ours(TIMEOUT, host=PEER, doing="in the TLS handshake")
    assert session.timed_out() == [SetupFailed(timeout, False, during_tls=True), Close(True)]


AUTH_SETTINGS = ClientSettings(hostname="out.ours.example", auth=("me@ours.example", "sécret"))


def test_auth_plain_inside_tls() -> None:
    """RFC 4954: AUTH PLAIN with its initial response, once TLS is up; 235 makes it ready."""
    session = starttls_session(AUTH_SETTINGS)
    session.tls_started(None)
    token = base64.b64encode("\0me@ours.example\0sécret".encode()).decode()
    assert session.reply_received(TLS_EHLO) == [Send(f"AUTH PLAIN {token}\r\n".encode())]
    actions = session.reply_received(ReplyInfo(235, "2.7.0", "Authenticated"))
    assert kinds(actions) == [Ready]


def test_auth_login() -> None:
    """A server with only LOGIN gets the user name and the password in two steps."""
    session = starttls_session(AUTH_SETTINGS)
    session.tls_started(None)
    login_only = ReplyInfo(250, None, "mx\nAUTH LOGIN")
    assert session.reply_received(login_only) == [Send(b"AUTH LOGIN\r\n")]
    challenge = ReplyInfo(334, None, "VXNlcm5hbWU6")
    assert session.reply_received(challenge) == [Send(b"bWVAb3Vycy5leGFtcGxl\r\n")]
    assert session.reply_received(challenge) == [Send(b"c8OpY3JldA==\r\n")]
    assert kinds(session.reply_received(ReplyInfo(235, "2.7.0", "OK"))) == [Ready]


def test_auth_refused_is_transient() -> None:
    """Refused credentials fail the set-up for now: the operator fixes them, nothing bounces."""
    session = starttls_session(AUTH_SETTINGS)
    session.tls_started(None)
    session.reply_received(TLS_EHLO)
    refusal = ReplyInfo(535, "5.7.8", "Authentication credentials invalid")
    assert session.reply_received(refusal)[0] == SetupFailed(refusal, permanent=False)


def test_no_password_without_tls() -> None:
    """A password is never sent in plaintext: no STARTTLS means the set-up fails."""
    session = new_session(AUTH_SETTINGS)
    session.reply_received(GREETING)
    actions = session.reply_received(ReplyInfo(250, None, "mx\nAUTH PLAIN"))
    assert actions[0] == SetupFailed(ours(PASSWORD_NEEDS_TLS, host=PEER), permanent=False)
    assert b"AUTH" not in sent(actions)


def test_no_usable_mechanism() -> None:
    """Inside TLS, a server without PLAIN or LOGIN fails the set-up, saying so."""
    session = starttls_session(AUTH_SETTINGS)
    session.tls_started(None)
    actions = session.reply_received(ReplyInfo(250, None, "mx\nAUTH CRAM-MD5"))
    assert actions[0] == SetupFailed(ours(NO_AUTH_MECHANISM, host=PEER), permanent=False)


def test_unexpected_challenge_to_plain() -> None:
    """A 334 after AUTH PLAIN with its initial response is a protocol error."""
    session = starttls_session(AUTH_SETTINGS)
    session.tls_started(None)
    session.reply_received(TLS_EHLO)
    actions = session.reply_received(ReplyInfo(334, None, ""))
    assert isinstance(actions[0], SetupFailed)
    assert actions[0].reply.code == PROTOCOL_ERROR.code


# --- Transactions -------------------------------------------------------------------------------

NON_PIPELINING_EHLO = ReplyInfo(250, None, "mx\nSIZE 1000\n8BITMIME\nDSN")


def test_one_at_a_time_with_mixed_replies() -> None:
    """Without PIPELINING each command waits for its reply, with its own timeout; a refused
    recipient keeps its reply, the accepted ones share the reply to the final "."."""
    session = ready(NON_PIPELINING_EHLO, replace(SETTINGS, timeouts=TIMEOUTS))
    mail = message("a@remote.example", "b@remote.example", "c@remote.example")
    assert sent(session.begin(mail)) == b"MAIL FROM:<alice@ours.example> SIZE=100\r\n"
    assert session.timeout == TIMEOUTS.mail
    assert sent(session.reply_received(SENDER_OK)) == b"RCPT TO:<a@remote.example>\r\n"
    assert session.timeout == TIMEOUTS.rcpt
    assert sent(session.reply_received(RECIPIENT_OK)) == b"RCPT TO:<b@remote.example>\r\n"
    assert sent(session.reply_received(NO_SUCH_USER)) == b"RCPT TO:<c@remote.example>\r\n"
    assert session.reply_received(MAILBOX_BUSY) == [Send(b"DATA\r\n")]
    assert session.timeout == TIMEOUTS.data_init
    assert session.reply_received(START_DATA) == [SendContent(mail)]
    assert session.timeout is None  # the glue times each block
    assert session.content_sent() == []
    assert session.timeout == TIMEOUTS.data_end
    results = results_of(session.reply_received(ACCEPTED))
    assert outcomes(results) == [
        (DeliveryOutcome.DELIVERED, ACCEPTED),
        (DeliveryOutcome.PERMANENT, NO_SUCH_USER),
        (DeliveryOutcome.TRANSIENT, MAILBOX_BUSY),
    ]
    assert [result.recipient for result in results] == [
        "a@remote.example",
        "b@remote.example",
        "c@remote.example",
    ]
    assert {result.remote_host for result in results} == {HOST}
    assert session.state is State.READY


def test_pipelined_group() -> None:
    """RFC 2920: MAIL, every RCPT and DATA go in one write, and each reply is matched to its
    command in order."""
    session = ready()
    mail = message("a@remote.example", "b@remote.example")
    assert session.begin(mail) == [
        Send(
            b"MAIL FROM:<alice@ours.example> SIZE=100\r\n"
            b"RCPT TO:<a@remote.example>\r\nRCPT TO:<b@remote.example>\r\nDATA\r\n"
        )
    ]
    assert replies(session, SENDER_OK, NO_SUCH_USER, RECIPIENT_OK) == []
    assert session.reply_received(START_DATA) == [SendContent(mail)]
    session.content_sent()
    assert outcomes(results_of(session.reply_received(ACCEPTED))) == [
        (DeliveryOutcome.PERMANENT, NO_SUCH_USER),
        (DeliveryOutcome.DELIVERED, ACCEPTED),
    ]


def test_all_refused_without_pipelining_sends_rset_not_data() -> None:
    """Nobody accepted: RSET instead of DATA, and the connection is ready for more."""
    session = ready(NON_PIPELINING_EHLO)
    session.begin(message("a@remote.example"))
    session.reply_received(SENDER_OK)
    assert session.reply_received(NO_SUCH_USER) == [Send(b"RSET\r\n")]
    assert outcomes(results_of(session.reply_received(OK))) == [
        (DeliveryOutcome.PERMANENT, NO_SUCH_USER)
    ]
    assert session.state is State.READY


def test_all_refused_pipelined_data_refused() -> None:
    """RFC 2920 §3.1: every RCPT refused, so the pipelined DATA is refused too: RSET."""
    session = ready()
    session.begin(message("a@remote.example"))
    actions = replies(session, SENDER_OK, MAILBOX_BUSY, NO_VALID_RECIPIENTS)
    assert actions == [Send(b"RSET\r\n")]
    assert outcomes(results_of(session.reply_received(OK))) == [
        (DeliveryOutcome.TRANSIENT, MAILBOX_BUSY)
    ]


def test_all_refused_pipelined_data_accepted_anyway() -> None:
    """RFC 2920 §3.1: DATA accepted although no recipient was: a lone "." ends the empty
    message (no content is sent), then RSET; the recipients keep their RCPT replies."""
    session = ready()
    session.begin(message("a@remote.example"))
    actions = replies(session, SENDER_OK, NO_SUCH_USER, START_DATA)
    assert actions == [Send(b".\r\n")]
    assert session.reply_received(NO_VALID_RECIPIENTS) == [Send(b"RSET\r\n")]
    assert outcomes(results_of(session.reply_received(OK))) == [
        (DeliveryOutcome.PERMANENT, NO_SUCH_USER)
    ]


def test_sender_refused() -> None:
    """A refused MAIL decides every recipient with its reply; pipelined RCPT and DATA replies
    are read and ignored."""
    refusal = ReplyInfo(553, "5.7.1", "Sender refused")
    session = ready()
    session.begin(message("a@remote.example", "b@remote.example"))
    bad_sequence = ReplyInfo(503, "5.5.1", "Need MAIL")
    actions = replies(session, refusal, bad_sequence, bad_sequence, bad_sequence)
    assert actions == [Send(b"RSET\r\n")]
    assert outcomes(results_of(session.reply_received(OK))) == [
        (DeliveryOutcome.PERMANENT, refusal),
        (DeliveryOutcome.PERMANENT, refusal),
    ]


def test_data_refused() -> None:
    """A 4xx to DATA decides the accepted recipients for now."""
    session = ready(NON_PIPELINING_EHLO)
    session.begin(message("a@remote.example"))
    refusal = ReplyInfo(451, "4.3.0", "Try later")
    assert replies(session, SENDER_OK, RECIPIENT_OK, refusal)[-1] == Send(b"RSET\r\n")
    assert outcomes(results_of(session.reply_received(OK))) == [
        (DeliveryOutcome.TRANSIENT, refusal)
    ]


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (ReplyInfo(451, "4.3.0", "Local error"), DeliveryOutcome.TRANSIENT),
        (ReplyInfo(554, "5.6.0", "Content refused"), DeliveryOutcome.PERMANENT),
    ],
)
def test_end_of_data_refused(reply: ReplyInfo, outcome: DeliveryOutcome) -> None:
    """The reply to the final "." decides every accepted recipient; the transaction is over
    and the connection ready for the next message, with no RSET."""
    session = ready()
    session.begin(message("a@remote.example", "b@remote.example"))
    replies(session, SENDER_OK, RECIPIENT_OK, RECIPIENT_OK, START_DATA)
    session.content_sent()
    actions = session.reply_received(reply)
    assert kinds(actions) == [Finished]
    assert outcomes(results_of(actions)) == [(outcome, reply), (outcome, reply)]
    assert session.state is State.READY


def dsn_message(*notify: frozenset[str] | None) -> OutboundMessage:
    """A message to r0@, r1@... with each recipient's NOTIFY as given."""
    recipients = tuple(
        OutboundRecipient(f"r{index}@remote.example", notify=words)
        for index, words in enumerate(notify)
    )
    return message(recipients=recipients)


SUCCESS_NOTIFY = frozenset({"SUCCESS", "FAILURE"})


def test_dsn_passed_to_a_server_with_dsn() -> None:
    """RFC 3461 §5.2.1: a recipient accepted by a server that offers DSN, its NOTIFY sent
    along, is marked ``dsn_passed`` (that server reports success now, and we send no
    "relayed" notice); one whose RCPT carried no NOTIFY (none given, or only unknown words)
    or that was refused is not."""
    session = ready()
    mail = dsn_message(SUCCESS_NOTIFY, None, frozenset({"NEVER"}), frozenset({"BOGUS"}), None)
    session.begin(mail)
    replies(
        session, SENDER_OK, RECIPIENT_OK, RECIPIENT_OK, RECIPIENT_OK, RECIPIENT_OK, NO_SUCH_USER
    )
    session.reply_received(START_DATA)
    session.content_sent()
    results = results_of(session.reply_received(ACCEPTED))
    assert [result.dsn_passed for result in results] == [True, False, True, False, False]
    assert [result.outcome for result in results][:4] == [DeliveryOutcome.DELIVERED] * 4


@pytest.mark.parametrize(
    ("ehlo", "final", "notify_sent"),
    [
        (ReplyInfo(250, None, "mx\nSIZE 1000"), ACCEPTED, False),  # no DSN offered
        (FULL_EHLO, ReplyInfo(451, "4.3.0", "Local error"), True),  # the "." refused
    ],
)
def test_dsn_not_passed(ehlo: ReplyInfo, final: ReplyInfo, notify_sent: bool) -> None:
    """A server without DSN never got the NOTIFY, and a message refused at the "." was
    never taken: either way ``dsn_passed`` stays False, so a success notice, if one is
    asked for, stays ours to send."""
    session = ready(ehlo)
    actions = session.begin(dsn_message(SUCCESS_NOTIFY))
    actions += replies(session, SENDER_OK, RECIPIENT_OK)
    assert (b"NOTIFY=SUCCESS,FAILURE" in sent(actions)) is notify_sent
    session.reply_received(START_DATA)
    session.content_sent()
    [result] = results_of(session.reply_received(final))
    assert result.outcome is outcome_of(final)
    assert not result.dsn_passed


def test_message_too_big() -> None:
    """RFC 1870: larger than the server's SIZE: 552 5.3.4 for all, and nothing sent."""
    session = ready()
    actions = session.begin(message("a@remote.example", "b@remote.example", size=1001))
    too_big = ours(MESSAGE_TOO_BIG, size=1001, limit=1000, host=PEER)
    assert actions == [
        Finished(
            [
                RecipientResult(address, DeliveryOutcome.PERMANENT, too_big, HOST)
                for address in ("a@remote.example", "b@remote.example")
            ]
        )
    ]
    assert session.state is State.READY


@pytest.mark.parametrize(
    "mail",
    [
        message("é@remote.example"),
        message("a@remote.example", "é@remote.example", smtputf8=True),
        message("a@remote.example", sender="jöran@ours.example"),
    ],
)
def test_non_ascii_envelope_needs_smtputf8(mail: OutboundMessage) -> None:
    """RFC 6531 §3.2: a sender or recipient that is not ASCII does not go to a server
    without SMTPUTF8: 553 5.6.7 for all, nothing sent. To a server with it, MAIL carries
    the parameter (§3.4)."""
    assert needs_smtputf8(mail)
    actions = ready(NON_PIPELINING_EHLO).begin(mail)
    assert sent(actions) == b""
    assert outcomes(results_of(actions)) == [
        (DeliveryOutcome.PERMANENT, ours(NEEDS_SMTPUTF8, host=PEER)) for _ in mail.recipients
    ]
    line = sent(ready().begin(mail)).split(b"\r\n")[0]
    assert line == f"MAIL FROM:<{mail.sender}> SIZE=100 SMTPUTF8".encode()


def test_smtputf8_flag_with_ascii_envelope() -> None:
    """A message the queue flagged as internationalised (UTF-8 in its header) needs a server
    with SMTPUTF8 even with an ASCII envelope (RFC 6531 §3.2): refused for all elsewhere,
    sent with the parameter where it is offered."""
    mail = message("a@remote.example", smtputf8=True)
    assert needs_smtputf8(mail)
    actions = ready(NON_PIPELINING_EHLO).begin(mail)
    assert sent(actions) == b""
    assert outcomes(results_of(actions)) == [
        (DeliveryOutcome.PERMANENT, ours(NEEDS_SMTPUTF8, host=PEER))
    ]
    assert sent(ready().begin(mail)).startswith(
        b"MAIL FROM:<alice@ours.example> SIZE=100 SMTPUTF8\r\n"
    )


def test_no_smtputf8_parameter_without_need() -> None:
    """An ASCII envelope without the flag never sends SMTPUTF8, even where it is offered
    (RFC 6531 §3.4: SHOULD NOT when nothing needs it)."""
    mail = message("a@remote.example")
    assert not needs_smtputf8(mail)
    assert b"SMTPUTF8" not in sent(ready().begin(mail))


def test_control_characters_never_sent() -> None:
    """An address with a CR or LF (a damaged queue record) is never put on a command line,
    where it would end the command and start another."""
    session = ready()
    actions = session.begin(message("a@remote.example\r\nRSET", "b@remote.example"))
    assert sent(actions).count(b"RCPT") == 1
    replies(session, SENDER_OK, RECIPIENT_OK, START_DATA)
    session.content_sent()
    assert outcomes(results_of(session.reply_received(ACCEPTED))) == [
        (DeliveryOutcome.PERMANENT, BAD_RECIPIENT),
        (DeliveryOutcome.DELIVERED, ACCEPTED),
    ]
    actions = ready().begin(message("b@remote.example", sender="x\n@ours.example"))
    assert outcomes(results_of(actions)) == [(DeliveryOutcome.PERMANENT, BAD_SENDER)]


def test_server_closing_mid_transaction() -> None:
    """RFC 5321 §3.8: a 421 decides every undecided recipient with it, and the connection is
    closed without QUIT."""
    session = ready()
    session.begin(message("a@remote.example", "b@remote.example"))
    actions = replies(session, SENDER_OK, NO_SUCH_USER, CLOSING)
    assert kinds(actions) == [Finished, Close]
    assert outcomes(results_of(actions)) == [
        (DeliveryOutcome.PERMANENT, NO_SUCH_USER),
        (DeliveryOutcome.TRANSIENT, CLOSING),
    ]
    assert not session.usable


def test_connection_lost_mid_content() -> None:
    """Lost while streaming: the accepted recipients are TRANSIENT with our 451 4.4.2 naming
    the server; the refused keep their replies."""
    session = ready()
    session.begin(message("a@remote.example", "b@remote.example"))
    replies(session, SENDER_OK, NO_SUCH_USER, RECIPIENT_OK, START_DATA)
    actions = session.connection_lost("Connection reset by peer")
    lost = ours(CONNECTION_LOST, host=PEER, reason="Connection reset by peer")
    assert outcomes(results_of(actions)) == [
        (DeliveryOutcome.PERMANENT, NO_SUCH_USER),
        (DeliveryOutcome.TRANSIENT, lost),
    ]
    assert lost.code == 451 and lost.enhanced == "4.4.2"
    assert not session.usable


def test_timeout_aborts() -> None:
    """A timeout names what was awaited, decides the undecided for now and aborts."""
    session = ready()
    session.begin(message("a@remote.example"))
    session.reply_received(SENDER_OK)
    actions = session.timed_out()
    expected = ours(TIMEOUT, host=PEER, doing="waiting for the reply to RCPT")
    assert outcomes(results_of(actions)) == [(DeliveryOutcome.TRANSIENT, expected)]
    assert actions[-1] == Close(abort=True)


def test_unexpected_reply_class() -> None:
    """A 354 to MAIL is the server breaking the protocol: TRANSIENT and abort."""
    session = ready(NON_PIPELINING_EHLO)
    session.begin(message("a@remote.example"))
    actions = session.reply_received(START_DATA)
    [result] = results_of(actions)
    assert result.outcome is DeliveryOutcome.TRANSIENT
    assert (result.reply.code, result.reply.enhanced) == (PROTOCOL_ERROR.code, "4.5.0")
    assert actions[-1] == Close()


def test_local_failure() -> None:
    """Our own trouble mid-content (an unreadable file): TRANSIENT and abort, never "."."""
    session = ready()
    session.begin(message("a@remote.example"))
    replies(session, SENDER_OK, RECIPIENT_OK, START_DATA)
    problem = ours(LOCAL_ERROR, detail="cannot read")
    actions = session.local_failure(problem)
    assert outcomes(results_of(actions)) == [(DeliveryOutcome.TRANSIENT, problem)]
    assert actions[-1] == Close(abort=True)
    assert b"." not in sent(actions)


def test_rset_refused_ends_the_connection() -> None:
    """A server that refuses RSET gets no more messages: results, QUIT, close."""
    session = ready(NON_PIPELINING_EHLO)
    session.begin(message("a@remote.example"))
    replies(session, SENDER_OK, NO_SUCH_USER)
    actions = session.reply_received(ReplyInfo(500, "5.5.1", "What?"))
    assert kinds(actions) == [Finished, Send, Close]
    assert not session.usable


def test_two_messages_then_quit() -> None:
    """The connection takes one message after another, then QUIT and close on its reply."""
    session = ready()
    for _ in range(2):
        session.begin(message("a@remote.example"))
        replies(session, SENDER_OK, RECIPIENT_OK, START_DATA)
        session.content_sent()
        assert kinds(session.reply_received(ACCEPTED)) == [Finished]
    assert session.quit() == [Send(b"QUIT\r\n")]
    assert session.reply_received(ReplyInfo(221, "2.0.0", "Bye")) == [Close()]
    assert session.connection_lost("closed") == []


def test_begin_on_a_closed_connection() -> None:
    """A message for a connection that is gone is TRANSIENT at once, saying so."""
    session = ready()
    session.connection_lost("reset")
    actions = session.begin(message("a@remote.example"))
    assert outcomes(results_of(actions)) == [
        (DeliveryOutcome.TRANSIENT, ours(NOT_CONNECTED, host=PEER))
    ]
