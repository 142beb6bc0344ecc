"""Tests for mailserver.smtp.session: the SMTP server state machine, with no transport."""

from __future__ import annotations

import base64
import dataclasses
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailserver.address import Mailbox
from mailserver.interfaces import Lookup, OutboundRecipient, RecipientLookup
from mailserver.sasl import Credentials
from mailserver.smtp import replies
from mailserver.smtp.data import ContentInspector, ContentSummary
from mailserver.smtp.replies import Reply
from mailserver.smtp.session import (
    ALLOWED,
    MAX_COMMAND_LINE,
    OUT_OF_SEQUENCE,
    Authenticate,
    CheckOwnership,
    CheckRecipient,
    ClientInfo,
    Close,
    Deliver,
    Outcome,
    ReceiveContent,
    Security,
    SessionPolicy,
    SMTPSession,
    StartTLS,
    State,
)

HOSTNAME = "mx.ours.example"
MAX_SIZE = 10_000
POLICY = SessionPolicy(
    hostname=HOSTNAME,
    max_message_size=MAX_SIZE,
    max_recipients=3,
    max_received_headers=5,
    max_errors=20,
    postmaster="postmaster@ours.example",
)
GOOD = ContentSummary(size=100, too_big=False, bare_line_ending=False, received_headers=0)
DELIVER = RecipientLookup(Lookup.DELIVER, ("rcpt@ours.example",))


def make_session(policy: SessionPolicy = POLICY) -> SMTPSession:
    return SMTPSession(policy, ClientInfo("192.0.2.1", 1234), now=lambda: 0.0, new_id=lambda: "ID1")


def line(session: SMTPSession, text: str) -> Outcome:
    return session.handle_line(text.encode("utf-8"))


def ready(policy: SessionPolicy = POLICY, hello: str = "EHLO client.example") -> SMTPSession:
    session = make_session(policy)
    assert line(session, hello) in (replies.EHLO_OK, replies.HELO_OK)
    return session


def in_mail(sender: str = "MAIL FROM:<sender@client.example>") -> SMTPSession:
    session = ready()
    assert line(session, sender) == replies.SENDER_OK
    return session


def add_recipient(session: SMTPSession, address: str, lookup: RecipientLookup = DELIVER) -> Outcome:
    outcome = line(session, f"RCPT TO:<{address}>")
    assert isinstance(outcome, CheckRecipient), outcome
    return session.recipient_checked(lookup)


def in_rcpt() -> SMTPSession:
    session = in_mail()
    assert add_recipient(session, "rcpt@ours.example") == replies.RECIPIENT_OK
    return session


def in_bdat() -> SMTPSession:
    session = in_rcpt()
    action = line(session, "BDAT 10")
    assert isinstance(action, ReceiveContent)
    assert session.content_received(GOOD, last=False) == replies.CHUNK_OK
    return session


SESSION_IN = {
    State.GREETED: make_session,
    State.READY: ready,
    State.MAIL: in_mail,
    State.RCPT: in_rcpt,
    State.BDAT: in_bdat,
}
COMMANDS = {
    "EHLO": "EHLO client.example",
    "HELO": "HELO client.example",
    "MAIL": "MAIL FROM:<other@client.example>",
    "RCPT": "RCPT TO:<rcpt2@ours.example>",
    "DATA": "DATA",
    "BDAT": "BDAT 10 LAST",
    "STARTTLS": "STARTTLS",
    "AUTH": "AUTH PLAIN",
}
ANYTIME = {
    "RSET": replies.RESET_OK,
    "NOOP": replies.OK,
    "VRFY bob": replies.VRFY_CANNOT_VERIFY,
    "HELP": replies.HELP,
}


def trace_headers(session: SMTPSession) -> str:
    action = line(session, "DATA")
    assert isinstance(action, ReceiveContent), action
    return action.trace_headers.decode("utf-8")


# -- greeting and hello -------------------------------------------------------------------------


def test_greeting() -> None:
    """The greeting is 220 and names the host."""
    greeting = make_session().greeting()
    assert greeting == replies.GREETING
    assert HOSTNAME in greeting.text


def test_ehlo_lists_extensions() -> None:
    """EHLO answers 250 with exactly the extensions we implement, SIZE with the limit."""
    session = make_session()
    outcome = line(session, "EHLO client.example")
    assert outcome == replies.EHLO_OK
    assert isinstance(outcome, replies.Reply)
    assert outcome.text.split("\n")[1:] == [
        "PIPELINING",
        f"SIZE {MAX_SIZE}",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "DSN",
    ]
    assert session.state is State.READY
    assert session.esmtp


def test_helo() -> None:
    """HELO answers 250 without extensions and leaves ESMTP off."""
    session = make_session()
    outcome = line(session, "HELO client.example")
    assert outcome == replies.HELO_OK
    assert isinstance(outcome, replies.Reply)
    assert "\n" not in outcome.text
    assert session.state is State.READY
    assert not session.esmtp
    assert session.helo == "client.example"


@pytest.mark.parametrize(
    "argument", ["[192.0.2.9]", "[IPv6:2001:db8::9]", "under_score.example", "localhost"]
)
def test_hello_accepts_domains_and_literals(argument: str) -> None:
    """A domain (underscores tolerated) or an address literal is a valid EHLO argument."""
    assert line(make_session(), f"EHLO {argument}") == replies.EHLO_OK


@pytest.mark.parametrize(
    "argument",
    [
        "",
        "two words",
        "bad..domain",
        "-bad.example",
        "[192.0.2.300]",
        "[192.0.2.1",
        "[IPv6:fe80::1%eth0]",
        "[IPv6:fe80::1%x);\tby]",
        "bad\tchar",
    ],
)
def test_invalid_hello_argument(argument: str) -> None:
    """An empty, spaced, malformed or zone-id argument gets BAD_HELO; the state is unchanged."""
    for verb in ("EHLO", "HELO"):
        session = make_session()
        assert line(session, f"{verb} {argument}") == replies.BAD_HELO
        assert session.state is State.GREETED
        assert session.helo is None


@given(st.text(max_size=60))
def test_hello_argument_cannot_inject_header_text(argument: str) -> None:
    """Whatever follows EHLO, an accepted name holds no whitespace or control characters."""
    session = make_session()
    outcome = session.handle_line(b"EHLO " + argument.encode("utf-8"))
    if outcome == replies.EHLO_OK:
        assert session.helo is not None
        assert session.helo.isprintable()
        assert not any(char.isspace() for char in session.helo)


# -- command sequencing -----------------------------------------------------------------------


OUT_OF_ORDER = [
    (verb, state)
    for verb, allowed in ALLOWED.items()
    for state in SESSION_IN
    if state not in allowed
]


@pytest.mark.parametrize("verb, state", OUT_OF_ORDER)
def test_out_of_sequence_commands(verb: str, state: State) -> None:
    """A command outside its states gets the table's 503 reply and changes nothing.

    BDAT's octets must still be read first (RFC 3030 §3): it asks for them to be discarded
    and the refusal comes once they have been.
    """
    session = SESSION_IN[state]()
    outcome = line(session, COMMANDS[verb])
    expected = OUT_OF_SEQUENCE[state]
    if verb in ("STARTTLS", "AUTH") and state is not State.GREETED:
        expected = replies.IN_TRANSACTION  # RFC 3207 §4, RFC 4954 §4
    assert expected.code == 503
    if verb == "BDAT":
        assert isinstance(outcome, ReceiveContent)
        assert outcome.discard == expected
        assert outcome.chunk_size == 10
        assert session.chunk_discarded(outcome.discard) == expected
    else:
        assert outcome == expected
    assert session.state is state


def test_out_of_sequence_table_covers_states() -> None:
    """Every state a command can arrive in has a 503 reply named for it."""
    assert set(OUT_OF_SEQUENCE) == set(SESSION_IN)
    assert OUT_OF_ORDER  # the parametrised test above is not empty


@pytest.mark.parametrize("state", list(SESSION_IN))
@pytest.mark.parametrize("command", list(ANYTIME))
def test_commands_allowed_in_every_state(command: str, state: State) -> None:
    """RSET, NOOP, VRFY and HELP are never out of sequence."""
    session = SESSION_IN[state]()
    assert line(session, command) == ANYTIME[command]


@pytest.mark.parametrize("state", list(SESSION_IN))
def test_quit_in_every_state(state: State) -> None:
    """QUIT closes with 221 in every state."""
    session = SESSION_IN[state]()
    outcome = line(session, "QUIT")
    assert isinstance(outcome, Close)
    assert outcome.reply == replies.CLOSING
    assert session.closed


@pytest.mark.parametrize("state", [State.READY, State.MAIL, State.RCPT, State.BDAT])
def test_rset_ends_transaction(state: State) -> None:
    """RSET ends any transaction and returns to READY."""
    session = SESSION_IN[state]()
    assert line(session, "RSET") == replies.RESET_OK
    assert session.state is State.READY
    assert session.transaction is None


def test_rset_before_hello_stays_greeted() -> None:
    """RSET before EHLO does not count as a greeting."""
    session = make_session()
    assert line(session, "RSET") == replies.RESET_OK
    assert session.state is State.GREETED


@pytest.mark.parametrize("state", [State.MAIL, State.RCPT])
def test_ehlo_ends_transaction(state: State) -> None:
    """EHLO in a transaction ends it (RFC 5321 §4.1.4)."""
    session = SESSION_IN[state]()
    assert line(session, "EHLO again.example") == replies.EHLO_OK
    assert session.state is State.READY
    assert session.transaction is None
    assert session.helo == "again.example"


def test_commands_are_case_insensitive() -> None:
    """Verbs and the FROM:/TO: keywords may be in any case."""
    session = make_session()
    assert line(session, "ehlo client.example") == replies.EHLO_OK
    assert line(session, "mail from:<a@client.example>") == replies.SENDER_OK
    assert isinstance(line(session, "rcpt to:<b@ours.example>"), CheckRecipient)


# -- MAIL -------------------------------------------------------------------------------------


def test_mail_starts_transaction() -> None:
    """MAIL FROM records the sender under a new id."""
    session = in_mail()
    assert session.state is State.MAIL
    assert session.transaction is not None
    assert session.transaction.sender == Mailbox("sender", "client.example")
    assert session.transaction.id == "ID1"


def test_mail_null_sender() -> None:
    """``MAIL FROM:<>`` (bounces) is accepted with no sender."""
    session = in_mail("MAIL FROM:<>")
    assert session.transaction is not None
    assert session.transaction.sender is None


def test_mail_space_after_colon_tolerated() -> None:
    """``MAIL FROM: <a@b>`` is accepted, as many clients send it."""
    session = in_mail("MAIL FROM: <sender@client.example>")
    assert session.transaction is not None
    assert session.transaction.sender == Mailbox("sender", "client.example")


def test_mail_quoted_local_part_with_specials_then_parameters() -> None:
    """A quoted ``>`` and space do not end the path; the parameters after it are parsed."""
    session = in_mail('MAIL FROM:<"odd> name"@client.example> SIZE=100 BODY=8BITMIME')
    assert session.transaction is not None
    assert session.transaction.sender == Mailbox("odd> name", "client.example")
    assert session.transaction.body_8bit
    session = ready()
    outcome = line(session, f'MAIL FROM:<"odd> name"@client.example> SIZE={MAX_SIZE + 1}')
    assert outcome == replies.MESSAGE_TOO_BIG


def test_mail_size_within_limit() -> None:
    """SIZE up to the limit is accepted."""
    in_mail(f"MAIL FROM:<a@client.example> SIZE={MAX_SIZE}")


def test_mail_size_over_limit() -> None:
    """SIZE over the limit is refused with 552 (RFC 1870 §6.2) and no transaction starts."""
    session = ready()
    outcome = line(session, f"MAIL FROM:<a@client.example> SIZE={MAX_SIZE + 1}")
    assert outcome == replies.MESSAGE_TOO_BIG
    assert session.state is State.READY


@pytest.mark.parametrize(
    "value", ["SIZE=abc", "SIZE", "SIZE=-1", "SIZE=1e3", "SIZE=\u00b2", "SIZE=\u0661\u0662"]
)
def test_mail_bad_size(value: str) -> None:
    """A SIZE that is not ASCII digits is refused (Unicode digits included, never a crash)."""
    session = ready()
    assert line(session, f"MAIL FROM:<a@client.example> {value}") == replies.BAD_SIZE_PARAMETER
    assert session.state is State.READY


@pytest.mark.parametrize(
    "value, eight_bit", [("8BITMIME", True), ("7BIT", False), ("8bitmime", True)]
)
def test_mail_body(value: str, eight_bit: bool) -> None:
    """BODY=8BITMIME and BODY=7BIT are accepted and recorded."""
    session = in_mail(f"MAIL FROM:<a@client.example> BODY={value}")
    assert session.transaction is not None
    assert session.transaction.body_8bit is eight_bit


@pytest.mark.parametrize("value", ["BODY=BINARYMIME", "BODY"])
def test_mail_bad_body(value: str) -> None:
    """Any other BODY value is refused."""
    assert line(ready(), f"MAIL FROM:<a@client.example> {value}") == replies.BAD_BODY_PARAMETER


@pytest.mark.parametrize("parameter", ["FOO=bar", "AUTH=<>", "SMTPUTF8=yes", "NOTIFY=NEVER"])
def test_mail_unknown_parameter(parameter: str) -> None:
    """A parameter we do not implement is refused with 555."""
    assert line(ready(), f"MAIL FROM:<a@client.example> {parameter}") == replies.UNKNOWN_PARAMETER


@pytest.mark.parametrize("parameter", ["SIZE=10", "BODY=8BITMIME", "SMTPUTF8", "RET=FULL"])
def test_mail_parameters_need_ehlo(parameter: str) -> None:
    """After HELO no ESMTP parameter is known."""
    session = ready(hello="HELO client.example")
    assert line(session, f"MAIL FROM:<a@client.example> {parameter}") == replies.UNKNOWN_PARAMETER


@pytest.mark.parametrize(
    "argument",
    [
        "FROM:<a@client.example>SIZE=10",
        "FROM:<a@client.example> SIZE=1 SIZE=2",
        "FROM:<a@client.example> =x",
        "FROM:<a@client.example> SIZE=",
        'FROM:<"unterminated@client.example>',
        "TO:<a@client.example>",
        "FROM:",
    ],
)
def test_mail_syntax_errors(argument: str) -> None:
    """Malformed MAIL arguments get 501 SYNTAX_ERROR."""
    session = ready()
    assert line(session, f"MAIL {argument}") == replies.SYNTAX_ERROR
    assert session.state is State.READY


@pytest.mark.parametrize(
    "path", ["<a@client.example.>", "<a@>", "<a..b@client.example>", "<a@[192.0.2.300]>"]
)
def test_mail_bad_sender(path: str) -> None:
    """An invalid reverse-path gets BAD_SENDER_SYNTAX."""
    assert line(ready(), f"MAIL FROM:{path}") == replies.BAD_SENDER_SYNTAX


def test_mail_smtputf8() -> None:
    """A non-ASCII sender is accepted with SMTPUTF8 (RFC 6531)."""
    session = in_mail("MAIL FROM:<jöran@bücher.example> SMTPUTF8")
    assert session.transaction is not None
    assert session.transaction.smtputf8


def test_mail_non_ascii_without_smtputf8() -> None:
    """A non-ASCII sender without SMTPUTF8 is refused with 553 5.6.7 (RFC 6531 §3.5)."""
    session = ready()
    assert line(session, "MAIL FROM:<jöran@client.example>") == replies.NEEDS_SMTPUTF8
    assert session.state is State.READY


# -- RCPT -------------------------------------------------------------------------------------


def test_rcpt_asks_for_lookup() -> None:
    """RCPT returns CheckRecipient with the parsed recipient."""
    session = in_mail()
    outcome = line(session, "RCPT TO:<Rcpt@Ours.Example>")
    assert outcome == CheckRecipient(Mailbox("Rcpt", "Ours.Example"))


@pytest.mark.parametrize(
    "lookup, expected",
    [
        (Lookup.NOT_OUR_DOMAIN, replies.RELAY_DENIED),
        (Lookup.NO_SUCH_USER, replies.NO_SUCH_USER),
        (Lookup.ALIAS_LOOP, replies.ALIAS_LOOP),
    ],
)
def test_rcpt_refused_by_lookup(lookup: Lookup, expected: replies.Reply) -> None:
    """Each refusing look-up outcome gets its reply; the recipient is not added."""
    session = in_mail()
    assert add_recipient(session, "x@ours.example", RecipientLookup(lookup)) == expected
    assert session.state is State.MAIL
    assert session.transaction is not None
    assert session.transaction.recipients == []


def test_rcpt_accepted() -> None:
    """A DELIVER look-up accepts the recipient and records its mailboxes."""
    session = in_mail()
    lookup = RecipientLookup(Lookup.DELIVER, ("a@ours.example", "b@ours.example"))
    assert add_recipient(session, "list@ours.example", lookup) == replies.RECIPIENT_OK
    assert session.state is State.RCPT
    assert session.transaction is not None
    assert session.transaction.recipients == [Mailbox("list", "ours.example")]
    assert session.transaction.mailboxes == ["a@ours.example", "b@ours.example"]


def test_rcpt_lookup_failure_is_temporary() -> None:
    """A look-up that fails on our side answers 451 LOCAL_ERROR."""
    session = in_mail()
    assert isinstance(line(session, "RCPT TO:<x@ours.example>"), CheckRecipient)
    assert session.recipient_unavailable() == replies.LOCAL_ERROR


def test_rcpt_null_path_refused() -> None:
    """``RCPT TO:<>`` is a syntax error."""
    assert line(in_mail(), "RCPT TO:<>") == replies.BAD_RECIPIENT_SYNTAX


def test_rcpt_unknown_parameters_refused() -> None:
    """RCPT knows only the DSN parameters (RFC 3461 §4.1, §4.2); others get 555."""
    assert line(in_mail(), "RCPT TO:<x@ours.example> FOO=bar") == replies.UNKNOWN_PARAMETER
    assert line(in_mail(), "RCPT TO:<x@ours.example> RET=FULL") == replies.UNKNOWN_PARAMETER


@pytest.mark.parametrize(
    "parameters",
    [
        "NOTIFY=NEVER,SUCCESS",
        "NOTIFY=SOMETIMES",
        "NOTIFY",
        "ORCPT=bob@x.example",
        "ORCPT=rfc822;bob+zz@x.example",
        "ORCPT=rfc822;" + "a" * 600,
    ],
)
def test_bad_dsn_recipient_parameters(parameters: str) -> None:
    """NOTIFY is NEVER alone or a list of SUCCESS, FAILURE, DELAY; ORCPT is type;xtext."""
    outcome = line(in_mail(), f"RCPT TO:<x@ours.example> {parameters}")
    assert outcome == replies.BAD_DSN_PARAMETER


@pytest.mark.parametrize("parameters", ["RET=PART", "ENVID=a+zz", "ENVID=" + "x" * 101])
def test_bad_dsn_mail_parameters(parameters: str) -> None:
    """RET is FULL or HDRS; ENVID is xtext of at most 100 characters."""
    assert line(ready(), f"MAIL FROM:<a@client.example> {parameters}") == replies.BAD_DSN_PARAMETER


def queueing() -> SMTPSession:
    session = secured(SUBMISSION, encrypted=True)
    authenticate(session)
    outcome = line(session, f"MAIL FROM:<{USER}> RET=HDRS ENVID=QQ+2B1")
    assert isinstance(outcome, CheckOwnership)
    assert session.ownership_checked([RecipientLookup(Lookup.DELIVER, (USER,))]) == (
        replies.SENDER_OK
    )
    return session


def test_remote_recipients_go_to_the_queue_with_their_dsn_parameters() -> None:
    """With an outbound queue, an authenticated user's recipients in other domains are
    accepted for it, as given (case kept), with NOTIFY and ORCPT decoded; MAIL's RET and
    ENVID travel with the transaction."""
    session = queueing()
    outcome = line(
        session, "RCPT TO:<Friend@Elsewhere.example> NOTIFY=success,FAILURE ORCPT=rfc822;f+2Bx@e"
    )
    assert isinstance(outcome, CheckRecipient)
    assert session.recipient_checked(RecipientLookup(Lookup.NOT_OUR_DOMAIN)) == (
        replies.RECIPIENT_OK
    )
    assert add_recipient(session, "rcpt@ours.example") == replies.RECIPIENT_OK
    transaction = session.transaction
    assert transaction is not None
    assert transaction.remote == [
        OutboundRecipient(
            "Friend@Elsewhere.example", frozenset({"SUCCESS", "FAILURE"}), "rfc822;f+x@e"
        )
    ]
    assert transaction.mailboxes == ["rcpt@ours.example"]
    assert (transaction.ret, transaction.envid) == ("HDRS", "QQ+1")


def test_unauthenticated_clients_never_reach_the_queue() -> None:
    """Even with an outbound queue, a client that has not logged in cannot relay."""
    session = ready()
    line(session, "MAIL FROM:<a@client.example>")
    line(session, "RCPT TO:<x@elsewhere.example>")
    assert session.recipient_checked(RecipientLookup(Lookup.NOT_OUR_DOMAIN)) == (
        replies.RELAY_DENIED
    )


def test_rcpt_non_ascii_needs_smtputf8() -> None:
    """A non-ASCII recipient needs SMTPUTF8 on MAIL; with it, it is looked up."""
    assert line(in_mail(), "RCPT TO:<jöran@ours.example>") == replies.NEEDS_SMTPUTF8
    session = in_mail("MAIL FROM:<a@client.example> SMTPUTF8")
    assert line(session, "RCPT TO:<jöran@ours.example>") == CheckRecipient(
        Mailbox("jöran", "ours.example")
    )


def test_recipient_limit() -> None:
    """After max_recipients accepted, the next RCPT gets 452 TOO_MANY_RECIPIENTS."""
    session = in_mail()
    for number in range(POLICY.max_recipients):
        assert add_recipient(session, f"r{number}@ours.example") == replies.RECIPIENT_OK
    outcome = line(session, "RCPT TO:<one.more@ours.example>")
    assert outcome == replies.TOO_MANY_RECIPIENTS
    assert isinstance(outcome, replies.Reply)
    assert outcome.code == 452


def test_refused_recipients_do_not_count_toward_limit() -> None:
    """Only accepted recipients count toward the limit."""
    session = in_mail()
    for number in range(POLICY.max_recipients + 2):
        refused = add_recipient(
            session, f"r{number}@x.example", RecipientLookup(Lookup.NO_SUCH_USER)
        )
        assert refused == replies.NO_SUCH_USER
    assert add_recipient(session, "ok@ours.example") == replies.RECIPIENT_OK


# -- relay tricks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, looked_up",
    [
        ("<user%other.example@ours.example>", Mailbox("user%other.example", "ours.example")),
        ("<other.example!user@ours.example>", Mailbox("other.example!user", "ours.example")),
        ('<"user@other.example"@ours.example>', Mailbox("user@other.example", "ours.example")),
        ("<@ours.example:user@other.example>", Mailbox("user", "other.example")),
    ],
)
def test_relay_tricks_are_looked_up_not_relayed(path: str, looked_up: Mailbox) -> None:
    """Percent hacks, bang paths and quoted ``@`` stay in our domain for the user database;
    a source route is dropped and the real destination looked up (and so denied)."""
    session = in_mail()
    assert line(session, f"RCPT TO:{path}") == CheckRecipient(looked_up)


def test_source_route_to_other_domain_is_relay_denied() -> None:
    """``<@ours:user@other>`` ends as RELAY_DENIED when the look-up says not our domain."""
    session = in_mail()
    outcome = add_recipient(
        session, "@ours.example:user@other.example", RecipientLookup(Lookup.NOT_OUR_DOMAIN)
    )
    assert outcome == replies.RELAY_DENIED


@pytest.mark.parametrize("path", ["<user@[192.0.2.1]>", "<user@[IPv6:2001:db8::1]>"])
def test_address_literal_recipient_refused_without_lookup(path: str) -> None:
    """Address-literal recipients are relay-denied without asking the user database."""
    session = in_mail()
    assert line(session, f"RCPT TO:{path}") == replies.RELAY_DENIED
    assert session.state is State.MAIL


def test_trailing_dot_recipient_is_syntax_error() -> None:
    """``<user@other.example.>`` is refused as bad syntax, not looked up."""
    assert line(in_mail(), "RCPT TO:<user@other.example.>") == replies.BAD_RECIPIENT_SYNTAX


# -- DATA and trace headers -----------------------------------------------------------------------


def test_data_starts_content() -> None:
    """DATA returns ReceiveContent with 354, dot-stuffed framing and the size limit."""
    session = in_rcpt()
    action = line(session, "DATA")
    assert isinstance(action, ReceiveContent)
    assert action.reply == replies.START_DATA
    assert action.chunk_size is None
    assert action.last
    assert action.discard is None
    assert action.max_size == MAX_SIZE
    assert action.trace_headers.startswith(b"Return-Path: <sender@client.example>\r\n")


def test_data_with_argument_is_syntax_error() -> None:
    """DATA takes no argument."""
    assert line(in_rcpt(), "DATA now") == replies.SYNTAX_ERROR


def test_data_after_only_refused_recipients() -> None:
    """DATA with no accepted recipient gets 554 and ends the transaction (RFC 2920 §3.1)."""
    session = in_mail()
    add_recipient(session, "x@ours.example", RecipientLookup(Lookup.NO_SUCH_USER))
    assert line(session, "DATA") == replies.NO_VALID_RECIPIENTS
    assert session.state is State.READY
    assert session.transaction is None


def test_trace_headers_single_recipient() -> None:
    """Return-Path, Delivered-To and a Received with from, by, with, id and for (§4.4)."""
    session = in_rcpt()
    headers = trace_headers(session)
    lines = headers.split("\r\n")
    assert lines[0] == "Return-Path: <sender@client.example>"
    assert lines[1] == "Delivered-To: rcpt@ours.example"
    assert lines[2] == "Received: from client.example ([192.0.2.1])"
    assert lines[3] == f"\tby {HOSTNAME} with ESMTP id ID1"
    assert lines[4] == "\tfor <rcpt@ours.example>;"
    assert lines[5].startswith("\t")
    assert parsedate_to_datetime(lines[5][1:]).timestamp() == 0.0  # the injected clock
    assert lines[6:] == [""]


def test_trace_headers_null_sender() -> None:
    """The null sender gives ``Return-Path: <>``."""
    session = in_mail("MAIL FROM:<>")
    add_recipient(session, "rcpt@ours.example")
    assert trace_headers(session).startswith("Return-Path: <>\r\n")


def test_trace_headers_quote_local_part() -> None:
    """A local part that needs quotes is written quoted in Return-Path."""
    session = in_mail('MAIL FROM:<"john smith"@client.example>')
    add_recipient(session, "rcpt@ours.example")
    assert trace_headers(session).startswith('Return-Path: <"john smith"@client.example>\r\n')


def test_trace_headers_two_recipients_one_mailbox() -> None:
    """Two recipients for one mailbox: Delivered-To, but no ``for`` clause."""
    session = in_mail()
    add_recipient(session, "a@ours.example")
    add_recipient(session, "b@ours.example")
    headers = trace_headers(session)
    assert "Delivered-To: rcpt@ours.example\r\n" in headers
    assert "for <" not in headers


def test_trace_headers_one_recipient_two_mailboxes() -> None:
    """One recipient expanding to two mailboxes: ``for``, but no Delivered-To."""
    session = in_mail()
    add_recipient(
        session,
        "list@ours.example",
        RecipientLookup(Lookup.DELIVER, ("a@o.example", "b@o.example")),
    )
    headers = trace_headers(session)
    assert "Delivered-To" not in headers
    assert "\tfor <list@ours.example>;" in headers


def test_trace_headers_utf8smtp() -> None:
    """With SMTPUTF8 the protocol is UTF8SMTP (RFC 6531 §4.3)."""
    session = in_mail("MAIL FROM:<jöran@client.example> SMTPUTF8")
    add_recipient(session, "rcpt@ours.example")
    headers = trace_headers(session)
    assert f"\tby {HOSTNAME} with UTF8SMTP id ID1" in headers
    assert "Return-Path: <jöran@client.example>" in headers


def test_trace_headers_helo_protocol() -> None:
    """After HELO the protocol is SMTP."""
    session = ready(hello="HELO old.example")
    line(session, "MAIL FROM:<a@old.example>")
    add_recipient(session, "rcpt@ours.example")
    headers = trace_headers(session)
    assert "Received: from old.example ([192.0.2.1])\r\n" in headers
    assert f"\tby {HOSTNAME} with SMTP id ID1" in headers


@pytest.mark.parametrize(
    "command",
    [
        b"HELO a.example\rX-Injected: yes",
        b"EHLO a.example\nX-Injected: yes",
        b"MAIL FROM:<a@b.example>\r\nX-Injected: yes",
        b'MAIL FROM:<"a\rb"@b.example>',
        b"MAIL FROM:<a@b.example\n>",
    ],
)
def test_no_line_ending_can_be_injected(command: bytes) -> None:
    """A CR or LF inside a command line is refused before anything is parsed."""
    session = ready()
    assert session.handle_line(command) == replies.BARE_LINE_ENDING_IN_COMMAND
    assert session.helo == "client.example"
    assert session.transaction is None


@given(st.text(max_size=80))
def test_trace_headers_keep_their_shape(argument: str) -> None:
    """Whatever MAIL argument is accepted, the trace headers keep their fixed line structure."""
    session = ready()
    if session.handle_line(b"MAIL FROM:" + argument.encode("utf-8")) != replies.SENDER_OK:
        return
    add_recipient(session, "rcpt@ours.example")
    lines = trace_headers(session).split("\r\n")
    assert lines[0].startswith("Return-Path: <")
    assert [text[:1] for text in lines[1:]] == ["D", "R", "\t", "\t", "\t", ""]
    for text in lines:
        assert "\r" not in text and "\n" not in text


# -- content ----------------------------------------------------------------------------------


def test_good_content_is_delivered() -> None:
    """A good summary asks for delivery of the transaction."""
    session = in_rcpt()
    line(session, "DATA")
    outcome = session.content_received(GOOD)
    assert isinstance(outcome, Deliver)
    assert outcome.transaction is session.transaction
    assert outcome.transaction.mailboxes == ["rcpt@ours.example"]


@pytest.mark.parametrize(
    "summary, expected",
    [
        (ContentSummary(20_000, True, False, 0), replies.MESSAGE_TOO_BIG),
        (ContentSummary(100, False, True, 0), replies.BARE_LINE_ENDING_IN_DATA),
        (ContentSummary(100, False, False, 5), replies.TOO_MANY_HOPS),
        (ContentSummary(100, False, False, 50), replies.TOO_MANY_HOPS),
    ],
)
def test_bad_content_refused(summary: ContentSummary, expected: replies.Reply) -> None:
    """Too big, bare line endings or too many Received headers refuse and end the transaction."""
    session = in_rcpt()
    line(session, "DATA")
    assert session.content_received(summary) == expected
    assert session.state is State.READY
    assert session.transaction is None


def test_received_headers_below_limit_accepted() -> None:
    """One fewer Received header than the limit is fine: ours makes it the limit (§6.3)."""
    session = in_rcpt()
    line(session, "DATA")
    summary = ContentSummary(100, False, False, POLICY.max_received_headers - 1)
    assert isinstance(session.content_received(summary), Deliver)


def test_delivery_finished_accepts() -> None:
    """A finished delivery answers 250 with the id and ends the transaction."""
    session = in_rcpt()
    line(session, "DATA")
    session.content_received(GOOD)
    reply = session.delivery_finished(None)
    assert reply == replies.MESSAGE_ACCEPTED
    assert "ID1" in reply.text
    assert session.state is State.READY
    assert session.transaction is None


def test_delivery_failure_passed_through() -> None:
    """A failed delivery answers the failure given (e.g. 452 INSUFFICIENT_STORAGE)."""
    session = in_rcpt()
    line(session, "DATA")
    session.content_received(GOOD)
    assert session.delivery_finished(replies.INSUFFICIENT_STORAGE) == replies.INSUFFICIENT_STORAGE
    assert session.state is State.READY


def test_delivery_failure_is_not_a_client_error() -> None:
    """Our own delivery failures do not count toward the client's error limit."""
    policy = SessionPolicy(HOSTNAME, MAX_SIZE, 3, 5, max_errors=0, postmaster="pm@ours.example")
    session = ready(policy)
    for _ in range(3):
        assert line(session, "MAIL FROM:<a@client.example>") == replies.SENDER_OK
        add_recipient(session, "rcpt@ours.example")
        line(session, "DATA")
        session.content_received(GOOD)
        assert session.delivery_finished(replies.LOCAL_ERROR) == replies.LOCAL_ERROR
    assert not session.closed


def test_second_transaction_after_delivery() -> None:
    """After a delivery the session accepts a new MAIL."""
    session = in_rcpt()
    line(session, "DATA")
    session.content_received(GOOD)
    session.delivery_finished(None)
    assert line(session, "MAIL FROM:<again@client.example>") == replies.SENDER_OK


# -- BDAT -------------------------------------------------------------------------------------


def test_bdat_chunks_then_last() -> None:
    """BDAT chunks: trace headers with the first only; the LAST one leads to delivery."""
    session = in_rcpt()
    first = line(session, "BDAT 100")
    assert isinstance(first, ReceiveContent)
    assert first.reply is None
    assert first.chunk_size == 100
    assert not first.last
    assert first.trace_headers.startswith(b"Return-Path: ")
    assert session.content_received(GOOD, last=False) == replies.CHUNK_OK
    assert session.state is State.BDAT
    second = line(session, "BDAT 50 LAST")
    assert isinstance(second, ReceiveContent)
    assert second.chunk_size == 50
    assert second.last
    assert second.trace_headers == b""
    assert isinstance(session.content_received(GOOD, last=True), Deliver)


def test_bdat_zero_last() -> None:
    """``BDAT 0 LAST`` is a valid final chunk."""
    session = in_bdat()
    action = line(session, "BDAT 0 last")
    assert isinstance(action, ReceiveContent)
    assert action.chunk_size == 0
    assert action.last


def test_bdat_without_recipients_discards() -> None:
    """BDAT after only refused recipients reads the octets, then answers NO_VALID_RECIPIENTS."""
    session = in_mail()
    action = line(session, "BDAT 20 LAST")
    assert isinstance(action, ReceiveContent)
    assert action.discard == replies.NO_VALID_RECIPIENTS
    assert action.chunk_size == 20
    assert session.chunk_discarded(action.discard) == replies.NO_VALID_RECIPIENTS
    assert session.transaction is None


def test_bdat_without_mail_discards() -> None:
    """BDAT with no transaction: the octets are read and discarded, then 503."""
    session = ready()
    action = line(session, "BDAT 20")
    assert isinstance(action, ReceiveContent)
    assert action.discard == replies.NEED_MAIL
    assert action.chunk_size == 20


@pytest.mark.parametrize("state", [State.READY, State.RCPT])
@pytest.mark.parametrize(
    "argument", ["", "x", "10 MORE", "-1", "10 LAST extra", "\u00b2", "\u0661\u0660 LAST"]
)
def test_malformed_bdat_closes(argument: str, state: State) -> None:
    """A BDAT whose size cannot be read closes the connection: its octets cannot be skipped."""
    session = SESSION_IN[state]()
    outcome = line(session, f"BDAT {argument}")
    assert isinstance(outcome, Close)
    assert outcome.reply == replies.SYNTAX_ERROR
    assert session.closed


def test_bdat_crlf_split_across_chunks() -> None:
    """A CRLF split between two BDAT chunks is not a bare line ending (RFC 3030 chunks are
    arbitrary octet counts)."""
    session = in_rcpt()
    inspector = ContentInspector(lambda data: None, MAX_SIZE)
    assert isinstance(line(session, "BDAT 11"), ReceiveContent)
    inspector.feed(b"Subject: x\r")
    assert session.content_received(inspector.summary(), last=False) == replies.CHUNK_OK
    assert isinstance(line(session, "BDAT 9 LAST"), ReceiveContent)
    inspector.feed(b"\n\r\nbody\r\n")
    assert isinstance(session.content_received(inspector.summary(), last=True), Deliver)


def test_bdat_bare_cr_at_end_of_last_chunk() -> None:
    """A CR ending the last chunk is a bare line ending."""
    session = in_rcpt()
    inspector = ContentInspector(lambda data: None, MAX_SIZE)
    line(session, "BDAT 8 LAST")
    inspector.feed(b"a\r\nbody\r")
    assert session.content_received(inspector.summary()) == replies.BARE_LINE_ENDING_IN_DATA


def test_bdat_bare_lf_in_earlier_chunk_refused() -> None:
    """A bare LF in a non-final chunk still gets the message refused."""
    session = in_rcpt()
    inspector = ContentInspector(lambda data: None, MAX_SIZE)
    line(session, "BDAT 3")
    inspector.feed(b"a\nb")
    outcome = session.content_received(inspector.summary(), last=False)
    if outcome == replies.CHUNK_OK:
        line(session, "BDAT 2 LAST")
        inspector.feed(b"\r\n")
        outcome = session.content_received(inspector.summary(), last=True)
    assert outcome == replies.BARE_LINE_ENDING_IN_DATA
    assert session.transaction is None


def test_bdat_too_big_chunk_refused_early() -> None:
    """A non-final chunk that passes the size limit ends the transaction at once."""
    session = in_rcpt()
    line(session, "BDAT 20000")
    summary = ContentSummary(20_000, True, False, 0)
    assert session.content_received(summary, last=False) == replies.MESSAGE_TOO_BIG
    assert session.state is State.READY


# -- other commands and errors ----------------------------------------------------------------


def test_vrfy_does_not_verify() -> None:
    """VRFY answers 252 without looking anything up (§3.5.3)."""
    reply = line(ready(), "VRFY bob")
    assert reply == replies.VRFY_CANNOT_VERIFY
    assert isinstance(reply, replies.Reply)
    assert reply.code == 252


def test_vrfy_without_argument() -> None:
    """VRFY needs an argument."""
    assert line(ready(), "VRFY") == replies.SYNTAX_ERROR


@pytest.mark.parametrize("verb", ["EXPN list", "TURN", "ETRN x.example"])
def test_not_implemented(verb: str) -> None:
    """EXPN, TURN and ETRN get 502."""
    assert line(ready(), verb) == replies.NOT_IMPLEMENTED


def test_unknown_command() -> None:
    """An unknown verb gets 500 UNRECOGNIZED_COMMAND."""
    assert line(ready(), "FROB x") == replies.UNRECOGNIZED_COMMAND


def test_line_length_limit() -> None:
    """A 512-octet line (with CRLF) is fine; one octet more gets LINE_TOO_LONG."""
    fits = b"NOOP " + b"x" * (MAX_COMMAND_LINE - 2 - 5)
    assert make_session().handle_line(fits) == replies.OK
    assert make_session().handle_line(fits + b"x") == replies.LINE_TOO_LONG


def test_line_too_long_from_glue() -> None:
    """The glue reporting an over-long line gets LINE_TOO_LONG."""
    assert make_session().line_too_long() == replies.LINE_TOO_LONG


@pytest.mark.parametrize("command", [b"NOOP\r", b"NO\rOP", b"\nNOOP", b"NOOP x\ry"])
def test_cr_or_lf_in_command(command: bytes) -> None:
    """A CR or LF inside a command line gets BARE_LINE_ENDING_IN_COMMAND."""
    assert make_session().handle_line(command) == replies.BARE_LINE_ENDING_IN_COMMAND


def test_invalid_utf8() -> None:
    """A command line that is not UTF-8 gets SYNTAX_ERROR."""
    assert make_session().handle_line(b"EHLO \xff\xfe") == replies.SYNTAX_ERROR


def test_too_many_errors_closes() -> None:
    """After max_errors errors, the next error closes with 421 TOO_MANY_ERRORS."""
    policy = SessionPolicy(HOSTNAME, MAX_SIZE, 3, 5, max_errors=3, postmaster="pm@ours.example")
    session = ready(policy)
    for _ in range(3):
        assert line(session, "FROB") == replies.UNRECOGNIZED_COMMAND
    assert line(session, "NOOP") == replies.OK  # not an error
    outcome = line(session, "MAIL FROM:<bad")
    assert outcome == Close(replies.TOO_MANY_ERRORS)
    assert session.closed


def test_errors_of_every_kind_count() -> None:
    """Sequence errors and refused recipients count toward the error limit too."""
    policy = SessionPolicy(HOSTNAME, MAX_SIZE, 3, 5, max_errors=2, postmaster="pm@ours.example")
    session = ready(policy)
    assert line(session, "RCPT TO:<a@ours.example>") == replies.NEED_MAIL
    line(session, "MAIL FROM:<a@client.example>")
    assert add_recipient(session, "x@ours.example", RecipientLookup(Lookup.NO_SUCH_USER)) == (
        replies.NO_SUCH_USER
    )
    outcome = add_recipient(session, "y@ours.example", RecipientLookup(Lookup.NOT_OUR_DOMAIN))
    assert outcome == Close(replies.TOO_MANY_ERRORS)


def test_quit() -> None:
    """QUIT closes with 221 CLOSING."""
    session = ready()
    outcome = line(session, "QUIT")
    assert outcome == Close(replies.CLOSING)
    assert session.closed


@pytest.mark.parametrize("path", ["<Postmaster>", "<postmaster>", "<POSTMASTER>"])
def test_rcpt_to_bare_postmaster_is_looked_up_as_the_configured_address(path: str) -> None:
    """RFC 5321 §4.1.1.3: <Postmaster> without a domain is accepted and routed to the
    configured postmaster address."""
    session = in_mail()
    outcome = line(session, f"RCPT TO:{path}")
    assert outcome == CheckRecipient(Mailbox("postmaster", "ours.example"))


# -- STARTTLS (RFC 3207) ------------------------------------------------------------------------

SUBMISSION = dataclasses.replace(POLICY, auth=True, auth_required=True)
USER = "alice@ours.example"


def secured(
    policy: SessionPolicy = POLICY,
    encrypted: bool = False,
    starttls: bool = True,
    plaintext_auth: bool = False,
) -> SMTPSession:
    return SMTPSession(
        policy,
        ClientInfo("192.0.2.1", 1234),
        now=lambda: 0.0,
        new_id=lambda: "ID1",
        security=Security(encrypted=encrypted, starttls=starttls, plaintext_auth=plaintext_auth),
    )


def extensions(session: SMTPSession) -> list[str]:
    reply = line(session, "EHLO client.example")
    assert reply == replies.EHLO_OK
    assert isinstance(reply, Reply)
    return reply.text.split("\n")[1:]


def test_starttls_offered_only_with_a_certificate_and_before_tls() -> None:
    """EHLO lists STARTTLS when the listener has a certificate and the connection is not yet
    encrypted, and never inside TLS (RFC 3207 §4.2)."""
    assert "STARTTLS" in extensions(secured(starttls=True))
    assert "STARTTLS" not in extensions(secured(starttls=False))
    assert "STARTTLS" not in extensions(secured(encrypted=True))


def test_starttls_resets_the_session() -> None:
    """STARTTLS answers 220 through a StartTLS action and forgets the EHLO: the client must
    greet again, and the session counts as encrypted from then on (RFC 3207 §4.2)."""
    session = secured()
    extensions(session)
    outcome = line(session, "STARTTLS")
    assert isinstance(outcome, StartTLS)
    assert outcome.reply == replies.READY_FOR_TLS
    assert session.state is State.GREETED
    assert session.helo is None
    assert session.encrypted
    assert line(session, "MAIL FROM:<a@client.example>") == replies.NEED_HELO
    assert line(session, "EHLO again.example") == replies.EHLO_OK
    assert line(session, "STARTTLS") == replies.TLS_ALREADY_ACTIVE


def test_starttls_refusals() -> None:
    """STARTTLS without a certificate is not implemented (502), takes no argument (501), and
    needs EHLO first (503)."""
    assert line(ready(), "STARTTLS") == replies.NOT_IMPLEMENTED
    session = secured()
    assert line(session, "STARTTLS") == replies.NEED_HELO
    extensions(session)
    assert line(session, "STARTTLS now") == replies.SYNTAX_ERROR


def test_received_header_records_tls_and_authentication() -> None:
    """After TLS and AUTH the Received header says ESMTPSA (RFC 3848) and names the TLS
    version and cipher."""
    session = secured(SUBMISSION, encrypted=True)
    session.tls_started("TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)")
    authenticate(session)
    assert line(session, f"MAIL FROM:<{USER}>") == CheckOwnership(
        (Mailbox("alice", "ours.example"),)
    )
    assert (
        session.ownership_checked([RecipientLookup(Lookup.DELIVER, (USER,))]) == replies.SENDER_OK
    )
    assert add_recipient(session, "rcpt@ours.example") == replies.RECIPIENT_OK
    header = trace_headers(session)
    assert "with ESMTPSA id ID1" in header
    assert "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))" in header


@pytest.mark.parametrize(
    "encrypted, authenticated, smtputf8, expected",
    [
        (False, False, False, "ESMTP"),
        (True, False, False, "ESMTPS"),
        (False, True, False, "ESMTPA"),
        (True, True, False, "ESMTPSA"),
        (True, True, True, "UTF8SMTPSA"),
    ],
)
def test_received_protocol_names(
    encrypted: bool, authenticated: bool, smtputf8: bool, expected: str
) -> None:
    """The "with" keyword follows RFC 3848 and RFC 6531 §3.7.3."""
    policy = dataclasses.replace(POLICY, auth=True, check_from_header=False)
    session = secured(policy, encrypted=encrypted, plaintext_auth=True)
    extensions(session)
    if authenticated:
        authenticate(session, greet=False)
    sender = "MAIL FROM:<alice@ours.example>" + (" SMTPUTF8" if smtputf8 else "")
    outcome = line(session, sender)
    if authenticated:
        assert isinstance(outcome, CheckOwnership)
        outcome = session.ownership_checked([RecipientLookup(Lookup.DELIVER, (USER,))])
    assert outcome == replies.SENDER_OK
    assert add_recipient(session, "rcpt@ours.example") == replies.RECIPIENT_OK
    assert f"with {expected} id" in trace_headers(session)


# -- AUTH (RFC 4954) ----------------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def authenticate(session: SMTPSession, greet: bool = True, login: str = USER) -> None:
    if greet:
        extensions(session)
    outcome = line(session, f"AUTH PLAIN {b64(chr(0) + login + chr(0) + 'secret')}")
    assert outcome == Authenticate(Credentials(login, "secret"))
    assert session.authenticated(USER) == replies.AUTHENTICATED


def test_auth_offered_only_inside_tls_or_where_plaintext_is_allowed() -> None:
    """AUTH is listed only on a listener that takes submissions, and only when a password
    may travel on this connection: inside TLS, or where plaintext logins are allowed."""
    auth_line = "AUTH PLAIN LOGIN"
    assert auth_line not in extensions(secured(SUBMISSION))
    assert auth_line in extensions(secured(SUBMISSION, encrypted=True))
    assert auth_line in extensions(secured(SUBMISSION, plaintext_auth=True))
    assert auth_line not in extensions(secured(POLICY, encrypted=True))


def test_auth_before_tls_is_refused_with_538() -> None:
    """A password sent in plaintext is refused before it is even decoded (RFC 4954 §6)."""
    session = secured(SUBMISSION)
    extensions(session)
    assert line(session, f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + 'pw')}") == (
        replies.ENCRYPTION_REQUIRED
    )
    assert session.user is None


def test_auth_on_a_listener_without_submission_is_not_implemented() -> None:
    """The MX listener never authenticates (and so never relays) unless configured to."""
    session = secured(POLICY, encrypted=True)
    extensions(session)
    assert line(session, "AUTH PLAIN") == replies.NOT_IMPLEMENTED


def test_auth_plain_with_a_challenge() -> None:
    """AUTH PLAIN without an initial response gets an empty 334 challenge; the next line is
    the response, which may be up to 12288 octets (RFC 4954 §4)."""
    session = secured(SUBMISSION, encrypted=True)
    extensions(session)
    challenge = line(session, "AUTH PLAIN")
    assert challenge == replies.AUTH_CHALLENGE
    assert isinstance(challenge, Reply)
    assert challenge.to_bytes() == b"334 \r\n"
    assert session.line_limit == 12288
    outcome = line(session, b64(f"{USER}\0{USER}\0pw"))
    assert outcome == Authenticate(Credentials(USER, "pw", authzid=USER))
    assert session.line_limit == MAX_COMMAND_LINE


def test_auth_login_exchange() -> None:
    """AUTH LOGIN asks for the user name and then the password, each base64."""
    session = secured(SUBMISSION, encrypted=True)
    extensions(session)
    first = line(session, "AUTH LOGIN")
    assert isinstance(first, Reply)
    assert first.to_bytes() == b"334 VXNlcm5hbWU6\r\n"
    second = line(session, b64(USER))
    assert isinstance(second, Reply)
    assert second.to_bytes() == b"334 UGFzc3dvcmQ6\r\n"
    outcome = line(session, b64("pass word"))
    assert outcome == Authenticate(Credentials(USER, "pass word", mechanism="LOGIN"))


def test_auth_login_with_initial_user_name() -> None:
    """AUTH LOGIN may carry the user name as its initial response."""
    session = secured(SUBMISSION, encrypted=True)
    extensions(session)
    reply = line(session, f"AUTH LOGIN {b64(USER)}")
    assert isinstance(reply, Reply)
    assert reply.to_bytes() == b"334 UGFzc3dvcmQ6\r\n"


@pytest.mark.parametrize(
    "command, expected",
    [
        ("AUTH", replies.SYNTAX_ERROR),
        ("AUTH PLAIN a b", replies.SYNTAX_ERROR),
        ("AUTH CRAM-MD5", replies.UNKNOWN_MECHANISM),
        ("AUTH PLAIN !!!", replies.BAD_AUTH_RESPONSE),
        ("AUTH PLAIN " + b64("no separators"), replies.BAD_AUTH_RESPONSE),
        ("AUTH PLAIN " + b64("one\0separator"), replies.BAD_AUTH_RESPONSE),
        ("AUTH PLAIN " + b64("\0\0password"), replies.BAD_AUTH_RESPONSE),
        ("AUTH PLAIN =", replies.BAD_AUTH_RESPONSE),
    ],
)
def test_malformed_auth_commands(command: str, expected: Reply) -> None:
    """Each malformed AUTH gets its precise reply and the session goes on unauthenticated."""
    session = secured(SUBMISSION, encrypted=True)
    extensions(session)
    assert line(session, command) == expected
    assert session.user is None
    assert session.line_limit == MAX_COMMAND_LINE
    assert line(session, "NOOP") == replies.OK


@pytest.mark.parametrize(
    "response, expected",
    [
        ("*", replies.AUTH_CANCELLED),
        ("not base64!", replies.BAD_AUTH_RESPONSE),
        (b64("\xff"), replies.BAD_AUTH_RESPONSE),
    ],
)
def test_sasl_response_refusals(response: str, expected: Reply) -> None:
    """ "*" cancels with 501 (RFC 4954 §4); an undecodable response is 501 5.5.2."""
    session = secured(SUBMISSION, encrypted=True)
    extensions(session)
    assert line(session, "AUTH PLAIN") == replies.AUTH_CHALLENGE
    assert session.handle_line(response.encode("latin-1")) == expected
    assert line(session, "NOOP") == replies.OK


def test_overlong_sasl_response_is_refused_with_500_5_5_6() -> None:
    """A response line over 12288 octets cancels the exchange (RFC 4954 §4)."""
    session = secured(SUBMISSION, encrypted=True)
    extensions(session)
    line(session, "AUTH PLAIN")
    assert session.line_too_long() == replies.AUTH_LINE_TOO_LONG
    assert session.line_limit == MAX_COMMAND_LINE


def test_auth_failure_and_limit() -> None:
    """A failed login is 535 5.7.8, the same for unknown users and wrong passwords; the third
    failure on one connection closes it with 421."""
    session = secured(SUBMISSION, encrypted=True)
    extensions(session)
    for _ in range(2):
        assert isinstance(
            line(session, f"AUTH PLAIN {b64(chr(0) + 'x' + chr(0) + 'y')}"), Authenticate
        )
        assert session.authenticated(None) == replies.AUTH_FAILED
    line(session, f"AUTH PLAIN {b64(chr(0) + 'x' + chr(0) + 'y')}")
    outcome = session.authenticated(None)
    assert outcome == Close(replies.TOO_MANY_AUTH_FAILURES)
    assert session.closed


def test_auth_twice_and_temporary_failure() -> None:
    """A second AUTH after success is 503 (RFC 4954 §4); trouble on our side is 454."""
    session = secured(SUBMISSION, encrypted=True)
    extensions(session)
    line(session, f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + 'pw')}")
    assert session.authentication_unavailable() == replies.AUTH_UNAVAILABLE
    assert session.user is None
    authenticate(session, greet=False)
    assert session.user == USER
    assert line(session, "AUTH PLAIN") == replies.ALREADY_AUTHENTICATED
    assert "AUTH PLAIN LOGIN" not in extensions(session)


def test_starttls_forgets_a_plaintext_login() -> None:
    """A login made before STARTTLS does not survive it (RFC 3207 §4.2)."""
    session = secured(SUBMISSION, plaintext_auth=True)
    authenticate(session)
    assert isinstance(line(session, "STARTTLS"), StartTLS)
    assert session.user is None


# -- submission (RFC 6409) ----------------------------------------------------------------------


def submitting(policy: SessionPolicy = SUBMISSION) -> SMTPSession:
    session = secured(policy, encrypted=True)
    authenticate(session)
    return session


def test_submission_requires_auth_before_mail() -> None:
    """MAIL on a submission listener without AUTH is 530 5.7.0."""
    session = secured(SUBMISSION, encrypted=True)
    extensions(session)
    assert line(session, "MAIL FROM:<alice@ours.example>") == replies.AUTH_REQUIRED


def test_sender_must_be_the_users() -> None:
    """The envelope sender is checked: an address that delivers to the user's mailbox is
    theirs; any other is refused with 553 5.7.1 and no transaction starts."""
    session = submitting()
    assert isinstance(line(session, "MAIL FROM:<boss@ours.example>"), CheckOwnership)
    other = RecipientLookup(Lookup.DELIVER, ("boss@ours.example",))
    assert session.ownership_checked([other]) == replies.SENDER_NOT_OWNED
    assert session.state is State.READY
    assert isinstance(line(session, "MAIL FROM:<elsewhere@other.example>"), CheckOwnership)
    assert session.ownership_checked([RecipientLookup(Lookup.NOT_OUR_DOMAIN)]) == (
        replies.SENDER_NOT_OWNED
    )
    assert isinstance(line(session, "MAIL FROM:<sales@ours.example>"), CheckOwnership)
    alias = RecipientLookup(Lookup.DELIVER, (USER, "bob@ours.example"))
    assert session.ownership_checked([alias]) == replies.SENDER_OK
    assert session.state is State.MAIL


def test_null_sender_needs_no_ownership() -> None:
    """MAIL FROM:<> impersonates nobody: accepted without a look-up."""
    assert line(submitting(), "MAIL FROM:<>") == replies.SENDER_OK


def test_mail_auth_parameter_is_accepted_where_auth_is_offered() -> None:
    """RFC 4954 §5: MAIL's AUTH= parameter is accepted (and not trusted) once AUTH is offered."""
    session = submitting()
    assert isinstance(line(session, f"MAIL FROM:<{USER}> AUTH=<>"), CheckOwnership)


def summary_with_header(header: bytes) -> ContentSummary:
    inspector = ContentInspector(lambda data: None, MAX_SIZE, keep_header=True)
    inspector.feed(header + b"\r\nbody\r\n")
    return inspector.summary()


def submitted_message(session: SMTPSession) -> None:
    line(session, "MAIL FROM:<>")
    assert add_recipient(session, "rcpt@ours.example") == replies.RECIPIENT_OK
    action = line(session, "DATA")
    assert isinstance(action, ReceiveContent)
    assert action.keep_header


def test_from_header_must_be_the_users() -> None:
    """With check_from_header, the From addresses are looked up at the end of the data: the
    user's own are delivered, another's is refused with 550 5.7.1."""
    session = submitting()
    submitted_message(session)
    outcome = session.content_received(summary_with_header(b"From: Alice <alice@ours.example>\r\n"))
    assert outcome == CheckOwnership((Mailbox("alice", "ours.example"),))
    assert isinstance(
        session.ownership_checked([RecipientLookup(Lookup.DELIVER, (USER,))]), Deliver
    )

    session = submitting()
    submitted_message(session)
    session.content_received(summary_with_header(b"From: ceo@ours.example\r\n"))
    refusal = session.ownership_checked([RecipientLookup(Lookup.DELIVER, ("ceo@ours.example",))])
    assert refusal == replies.AUTHOR_NOT_OWNED
    assert session.transaction is None


@pytest.mark.parametrize(
    "header",
    [
        b"Subject: hi\r\n",
        b"From: alice@ours.example\r\nFrom: ceo@bank.example\r\n",
        b"From: alice@ours.example <ceo@bank.example>\r\n",
        b"From : ceo@bank.example\r\nFrom: alice@ours.example\r\n",
        b"From: alice@ours.example\r\nnot a field\r\nFrom: ceo@bank.example\r\n",
    ],
)
def test_uncheckable_from_is_refused(header: bytes) -> None:
    """A submitted message whose From cannot be checked strictly is refused with 550 5.6.0:
    none, several, malformed, or hidden behind a line one reader skips (RFC 5322 §3.6)."""
    session = submitting()
    submitted_message(session)
    assert session.content_received(summary_with_header(header)) == replies.UNCHECKABLE_AUTHOR
    assert session.transaction is None


def test_from_check_can_be_turned_off() -> None:
    """Without check_from_header the message is delivered as it is."""
    session = submitting(dataclasses.replace(SUBMISSION, check_from_header=False))
    line(session, "MAIL FROM:<>")
    add_recipient(session, "rcpt@ours.example")
    action = line(session, "DATA")
    assert isinstance(action, ReceiveContent) and not action.keep_header
    assert isinstance(
        session.content_received(summary_with_header(b"From: x@y.example\r\n")), Deliver
    )


def test_auth_needs_ehlo() -> None:
    """After HELO no extension exists, AUTH included: 503 (RFC 4954 §4)."""
    session = secured(SUBMISSION, encrypted=True)
    line(session, "HELO client.example")
    assert line(session, f"AUTH PLAIN {b64(chr(0) + USER + chr(0) + 'pw')}") == replies.NEED_EHLO


def test_a_remote_recipient_given_twice_is_queued_once() -> None:
    """RCPT for the same remote address twice gets 250 both times but one queued copy."""
    session = queueing()
    for _ in range(2):
        line(session, "RCPT TO:<friend@elsewhere.example>")
        assert session.recipient_checked(RecipientLookup(Lookup.NOT_OUR_DOMAIN)) == (
            replies.RECIPIENT_OK
        )
    transaction = session.transaction
    assert transaction is not None
    assert [r.address for r in transaction.remote] == ["friend@elsewhere.example"]
