"""Tests for ``mailserver queue`` (mailserver.cli_queue), run through cli.main."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mailserver.cli import main
from mailserver.interfaces import ReplyInfo
from mailserver.queue import control
from mailserver.queue.store import QueueStore
from tests.queue_helpers import queue_message

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def store(tmp_path: Path) -> QueueStore:
    (tmp_path / "mailserver.toml").write_text('[server]\nhostname = "mx.ours.example"\n')
    return QueueStore(tmp_path / "var")


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str) -> tuple[int, str, str]:
        status = main(["--config", str(tmp_path / "mailserver.toml"), *args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_list_shows_each_message_and_its_pending_recipients(store: QueueStore, run: Run) -> None:
    """``list`` gives one line per message, oldest first, and each pending recipient with
    its attempts and last reply."""
    record = queue_message(store, "B2", ["bob@elsewhere.example"], created=2000.0)
    record.recipients[0].attempts = 3
    record.recipients[0].last_reply = ReplyInfo(451, "4.7.1", "Greylisted")
    store.save_blocking(record)
    queue_message(store, "A1", ["carol@far.example"], created=1000.0)
    status, out, _ = run("queue", "list")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("A1 ")
    assert "from <alice@ours.example>" in lines[0]
    assert "1 of 1 pending" in lines[0]
    assert lines[2].startswith("B2 ")
    assert "<bob@elsewhere.example>  3 attempts: 451 4.7.1 Greylisted" in lines[3]
    assert lines[-1] == "2 messages queued"


def test_list_of_an_empty_queue(store: QueueStore, run: Run) -> None:
    """No queue directory yet is an empty queue."""
    assert run("queue", "list") == (0, "0 messages queued\n", "")


def test_show(store: QueueStore, run: Run) -> None:
    """``show`` prints the envelope and every recipient's state."""
    queue_message(store, "A1", ["bob@elsewhere.example"], ret="HDRS")
    status, out, _ = run("queue", "show", "A1")
    assert status == 0
    assert "sender:        <alice@ours.example>" in out
    assert "DSN:           RET=HDRS ENVID=-" in out
    assert "recipient <bob@elsewhere.example>" in out
    assert "state:         pending" in out


def test_unknown_id_is_one_line_and_exit_1(store: QueueStore, run: Run) -> None:
    """An id that is not queued is refused at once, for every command that takes one."""
    for command in ("show", "retry", "delete", "bounce"):
        assert run("queue", command, "NOPE") == (1, "", "mailserver: no queued message NOPE\n")


def test_commands_are_left_for_the_server(store: QueueStore, run: Run) -> None:
    """retry, delete and bounce become commands for the queue runner, in order."""
    queue_message(store, "A1", ["bob@elsewhere.example"])
    assert run("queue", "retry")[0] == 0
    assert run("queue", "bounce", "A1")[0] == 0
    status, out, _ = run("queue", "delete", "A1")
    assert status == 0
    assert "handed to the server" in out
    assert control.take_commands(store) == [
        control.Command("retry", None),
        control.Command("bounce", "A1"),
        control.Command("delete", "A1"),
    ]
