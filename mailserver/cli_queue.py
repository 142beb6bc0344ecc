"""``mailserver queue``: looking at the outbound queue, and telling the server what to do with it.

``list`` and ``show`` read the queue directory. ``retry``, ``delete`` and ``bounce`` leave a
command for the queue runner (:mod:`mailserver.queue.control`), the only writer of queue
records: a running server carries it out within a second, a stopped one when it starts.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from mailserver.cli import CommandError
from mailserver.cli_config import load_config_for
from mailserver.queue import control
from mailserver.queue.record import QueuedRecipient, QueueRecord, RecordError
from mailserver.queue.store import QueueStore

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``queue`` command group."""
    help = "look at and manage the outbound queue"
    parser = subparsers.add_parser("queue", help=help, description=_sentence(help))
    group = parser.add_subparsers(dest="queue_command", required=True, metavar="COMMAND")
    _command(group, "list", "list the queued messages, oldest first", run_list)
    parser = _command(
        group, "show", "show a queued message's envelope and each recipient", run_show
    )
    parser.add_argument("id", metavar="ID")
    parser = _command(group, "retry", "try a queued message (or every one) again now", run_retry)
    parser.add_argument("id", metavar="ID", nargs="?", help="the message (default: all)")
    parser = _command(group, "delete", "remove a queued message, telling nobody", run_delete)
    parser.add_argument("id", metavar="ID")
    parser = _command(
        group, "bounce", "give up on a queued message and tell its sender", run_bounce
    )
    parser.add_argument("id", metavar="ID")


def _sentence(help: str) -> str:
    return help[0].upper() + help[1:] + "."


def _command(
    group: argparse._SubParsersAction[Any], name: str, help: str, run: Any
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help, description=_sentence(help))
    parser.set_defaults(run=run)
    return parser


def _store(args: argparse.Namespace) -> QueueStore:
    return QueueStore(load_config_for(args).server.data_dir)


def _read(store: QueueStore, id: str) -> QueueRecord:
    try:
        return store.read_blocking(id)
    except FileNotFoundError:
        raise CommandError(f"no queued message {id}") from None
    except (OSError, RecordError) as error:
        raise CommandError(f"queued message {id} cannot be read: {error}") from None


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def run_list(args: argparse.Namespace) -> int:
    store = _store(args)
    records = []
    for id in store.ids_blocking():
        try:
            records.append(store.read_blocking(id))
        except (OSError, RecordError) as error:
            print(f"{id}: cannot be read: {error}", file=sys.stderr)
    records.sort(key=lambda record: record.created)
    for record in records:
        pending = record.pending
        due = record.next_attempt()
        print(
            f"{record.id}  {_when(record.created)}  {record.size:>9} octets  "
            f"from <{record.sender}>  {len(pending)} of {len(record.recipients)} pending  "
            f"next try {_when(due)}"
        )
        for recipient in pending:
            reason = f": {recipient.last_reply}" if recipient.last_reply else ""
            print(f"    <{recipient.address}>  {recipient.attempts} attempts{reason}")
    total = len(records)
    print(f"{total} message{'s' if total != 1 else ''} queued")
    return 0


def run_show(args: argparse.Namespace) -> int:
    store = _store(args)
    record = _read(store, args.id)
    print(f"id:            {record.id}")
    print(f"sender:        <{record.sender}>")
    print(f"received:      {_when(record.created)}")
    print(f"size:          {record.size} octets")
    print(f"message file:  {store.message_path(record.id)}")
    print(f"DSN:           RET={record.ret or '-'} ENVID={record.envid or '-'}")
    print(f"delay notice:  {'sent' if record.delay_notified else 'not sent'}")
    for recipient in record.recipients:
        _show_recipient(recipient)
    return 0


def _show_recipient(recipient: QueuedRecipient) -> None:
    print(f"recipient <{recipient.address}>")
    print(f"    state:         {recipient.state.value}")
    print(f"    attempts:      {recipient.attempts}")
    print(f"    last attempt:  {_when(recipient.last_attempt)}")
    if recipient.state.value == "pending":
        print(f"    next attempt:  {_when(recipient.next_attempt)}")
    print(f"    last reply:    {recipient.last_reply or '-'}")
    print(f"    remote host:   {recipient.remote_host or '-'}")
    notify = ",".join(sorted(recipient.notify)) if recipient.notify else "-"
    print(f"    NOTIFY={notify} ORCPT={recipient.orcpt or '-'}")


def _submit(args: argparse.Namespace, action: str, id: str | None) -> int:
    store = _store(args)
    if id is not None:
        _read(store, id)  # refuse an unknown id now, not silently later
    control.submit(store, control.Command(action, id))
    what = f"message {id}" if id is not None else "every queued message"
    print(f"{action} of {what} handed to the server (done within a second if it is running)")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    return _submit(args, "retry", args.id)


def run_delete(args: argparse.Namespace) -> int:
    return _submit(args, "delete", args.id)


def run_bounce(args: argparse.Namespace) -> int:
    return _submit(args, "bounce", args.id)
