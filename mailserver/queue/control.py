"""Commands from ``mailserver queue`` to the running server, through the queue directory.

The admin command never changes a queue record itself: the queue runner is the only writer
of records, so the two can never overwrite each other's changes. Instead it drops a command
file in ``queue/commands/`` (an empty file whose name says what to do); the runner looks
there every second, carries the commands out in order and removes them. A server that is not
running picks them up when it starts.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mailserver import durable

ACTIONS = ("retry", "delete", "bounce")
_NAME = re.compile(r"(\d+)-(retry|delete|bounce)-([0-9A-Za-z_.-]+)")
ALL = "all"


class _Store(Protocol):
    directory: Path


@dataclass(frozen=True)
class Command:
    action: str  # one of ACTIONS
    id: str | None  # None: every queued message (retry only)


def commands_directory(store: _Store) -> Path:
    return store.directory / "commands"


def submit(store: _Store, command: Command) -> Path:
    """Leave ``command`` for the runner (blocking)."""
    if command.action not in ACTIONS:
        raise ValueError(f"unknown queue action {command.action!r}")
    if command.id is None and command.action != "retry":
        raise ValueError(f"{command.action} needs a message id")
    directory = commands_directory(store)
    durable.ensure_directory(directory)
    path = directory / f"{time.time_ns()}-{command.action}-{command.id or ALL}"
    durable.write_atomically(path, b"")
    return path


def take_commands(store: _Store) -> list[Command]:
    """The waiting commands, oldest first, removed from the directory as they are taken."""
    directory = commands_directory(store)
    try:
        names = sorted(os.listdir(directory), key=_sort_key)
    except FileNotFoundError:
        return []
    commands = []
    for name in names:
        if name.startswith("."):
            continue  # a command still being written (durable.write_atomically)
        match = _NAME.fullmatch(name)
        durable.remove_quietly(directory / name)
        if match is not None:
            id = None if match[3] == ALL else match[3]
            commands.append(Command(match[2], id))
    return commands


def _sort_key(name: str) -> tuple[int, str]:
    number = name.partition("-")[0]
    return (int(number) if number.isdigit() else 0, name)
