"""One structured log event per thing that happens to a message, and per login.

Each function emits a ``twisted.logger`` event whose fields (``mail_event``, ``id``, ``client``
and the rest) can be filtered and formatted by any observer. The readable line for the text
log is written here once, with the values already in it (braces escaped), because formatting
a template field by field for every message costs more than receiving a small message.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.logger import Logger, LogLevel

log = Logger(namespace="mailserver.mail")


def _emit(level: LogLevel, text: str, **fields: object) -> None:
    log.emit(level, text.replace("{", "{{").replace("}", "}}"), **fields)


def _printable(text: str) -> str:
    """A client-chosen string for the text log: control characters (a forged second log line)
    shown escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def message_received(
    *, id: str, client: str, helo: str | None, sender: str, recipients: Sequence[str], size: int
) -> None:
    _emit(
        LogLevel.info,
        f"received id={id} from=<{sender}> client={client} helo={helo} size={size}"
        f" recipients={','.join(recipients)}",
        mail_event="received",
        id=id,
        client=client,
        helo=helo,
        sender=sender,
        recipients=list(recipients),
        size=size,
    )


def message_rejected(
    *,
    id: str | None,
    client: str,
    sender: str | None,
    recipient: str | None,
    code: int,
    enhanced: str | None,
    reason: str,
) -> None:
    _emit(
        LogLevel.info,
        f"rejected id={id} from=<{sender}> to=<{recipient}> client={client}:"
        f" {code} {enhanced} {reason}",
        mail_event="rejected",
        id=id,
        client=client,
        sender=sender,
        recipient=recipient,
        code=code,
        enhanced=enhanced,
        reason=reason,
    )


def message_checked(*, id: str, results: str) -> None:
    """The SPF, DKIM and DMARC outcome of a message from another server."""
    _emit(LogLevel.info, f"checked id={id} {results}", mail_event="checked", id=id, results=results)


def message_delivered(*, id: str, mailboxes: Sequence[str], size: int, name: str) -> None:
    _emit(
        LogLevel.info,
        f"delivered id={id} to={','.join(mailboxes)} size={size} file={name}",
        mail_event="delivered",
        id=id,
        mailboxes=list(mailboxes),
        size=size,
        name=name,
    )


def delivery_failed(*, id: str, mailboxes: Sequence[str], code: int, reason: str) -> None:
    _emit(
        LogLevel.warn,
        f"delivery failed id={id} to={','.join(mailboxes)}: {code} {reason}",
        mail_event="delivery-failed",
        id=id,
        mailboxes=list(mailboxes),
        code=code,
        reason=reason,
    )


def logged_in(*, protocol: str, address: str, client: str, mechanism: str) -> None:
    _emit(
        LogLevel.info,
        f"{protocol} login address={address} client={client} mechanism={mechanism}",
        login_event="login",
        protocol=protocol,
        address=address,
        client=client,
        mechanism=mechanism,
    )


def login_failed(*, protocol: str, login: str, client: str, mechanism: str) -> None:
    _emit(
        LogLevel.info,
        f"{protocol} login failed login={_printable(login)} client={client} mechanism={mechanism}",
        login_event="login-failed",
        protocol=protocol,
        login=login,
        client=client,
        mechanism=mechanism,
    )


def outbound_attempt(
    *, id: str, recipient: str, outcome: str, remote: str | None, reply: str
) -> None:
    _emit(
        LogLevel.info,
        f"outbound id={id} to=<{recipient}> {outcome} remote={remote}: {_printable(reply)}",
        mail_event=f"outbound-{outcome}",
        id=id,
        recipient=recipient,
        outcome=outcome,
        remote=remote,
        reply=reply,
    )


def outbound_done(*, id: str, recipients: int) -> None:
    _emit(
        LogLevel.info,
        f"outbound done id={id} recipients={recipients}",
        mail_event="outbound-done",
        id=id,
        recipients=recipients,
    )


def message_queued(*, id: str, recipients: Sequence[str]) -> None:
    _emit(
        LogLevel.info,
        f"queued id={id} to={','.join(recipients)}",
        mail_event="queued",
        id=id,
        recipients=list(recipients),
    )
