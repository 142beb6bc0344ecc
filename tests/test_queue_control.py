"""Tests for mailserver.queue.control: commands from the admin command to the runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailserver.queue import control
from mailserver.queue.control import Command
from mailserver.queue.store import QueueStore


def test_commands_come_back_in_order_once(tmp_path: Path) -> None:
    """Commands are taken oldest first and removed as they are taken."""
    store = QueueStore(tmp_path)
    control.submit(store, Command("retry", None))
    control.submit(store, Command("bounce", "ABC"))
    control.submit(store, Command("delete", "DEF"))
    assert control.take_commands(store) == [
        Command("retry", None),
        Command("bounce", "ABC"),
        Command("delete", "DEF"),
    ]
    assert control.take_commands(store) == []


def test_no_commands_directory(tmp_path: Path) -> None:
    """Before any command was ever given there is simply nothing to do."""
    assert control.take_commands(QueueStore(tmp_path)) == []


def test_stray_files_are_dropped(tmp_path: Path) -> None:
    """A file that is not a command is removed, not obeyed."""
    store = QueueStore(tmp_path)
    directory = control.commands_directory(store)
    directory.mkdir(parents=True)
    (directory / "1-explode-all").write_text("")
    assert control.take_commands(store) == []
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("command", [Command("delete", None), Command("shred", "A")])
def test_invalid_commands_refused(tmp_path: Path, command: Command) -> None:
    """Only retry may apply to the whole queue; unknown actions are refused."""
    with pytest.raises(ValueError):
        control.submit(QueueStore(tmp_path), command)
