"""Tests for mailserver.durable: the one module that fsyncs, links and renames."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from mailserver import durable


@pytest.fixture
def synced_directories(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every directory fsync'd through durable.fsync_directory (and still does it)."""
    synced: list[Path] = []
    real = durable.fsync_directory

    def recording(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(durable, "fsync_directory", recording)
    return synced


def test_ensure_directory_creates_parents(tmp_path: Path, synced_directories: list[Path]) -> None:
    """Missing parents are created, each private (0700), and each new entry is made durable by
    fsyncing the directory that holds it."""
    target = tmp_path / "a" / "b" / "c"
    durable.ensure_directory(target)
    assert target.is_dir()
    for path in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert synced_directories == [tmp_path, tmp_path / "a", tmp_path / "a" / "b"]


def test_ensure_directory_existing(tmp_path: Path, synced_directories: list[Path]) -> None:
    """An existing directory is left as it is, with no fsync."""
    durable.ensure_directory(tmp_path)
    assert synced_directories == []


def test_ensure_directory_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    """A file where the directory should be raises OSError instead of reporting success
    (it used to return quietly, leaving no directory behind)."""
    (tmp_path / "mail").write_bytes(b"")
    with pytest.raises(OSError):
        durable.ensure_directory(tmp_path / "mail")
    with pytest.raises(OSError):
        durable.ensure_directory(tmp_path / "mail" / "inside")


def test_ensure_directory_created_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When another thread creates the directory between the check and mkdir, that counts as
    success."""
    target = tmp_path / "raced"
    real_mkdir = Path.mkdir

    def racing_mkdir(self: Path, mode: int = 0o777) -> None:
        real_mkdir(self, mode)
        raise FileExistsError(self)

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    durable.ensure_directory(target)
    assert target.is_dir()


def test_link_gives_a_second_name(tmp_path: Path) -> None:
    """link() makes a hard link (same inode) and refuses to replace an existing target."""
    source = tmp_path / "source"
    source.write_bytes(b"content")
    target = tmp_path / "target"
    durable.link(source, target)
    assert target.stat().st_ino == source.stat().st_ino
    assert source.stat().st_nlink == 2
    with pytest.raises(FileExistsError):
        durable.link(source, target)


def test_fsync_directories_once_each(tmp_path: Path, synced_directories: list[Path]) -> None:
    """fsync_directories syncs each distinct directory once, in first-seen order."""
    first, second = tmp_path / "1", tmp_path / "2"
    first.mkdir()
    second.mkdir()
    durable.fsync_directories([first, second, first, second, first])
    assert synced_directories == [first, second]


def test_fsync_directory_of_missing_path_raises(tmp_path: Path) -> None:
    """A directory that cannot be opened raises OSError (callers turn it into 4xx)."""
    with pytest.raises(OSError):
        durable.fsync_directory(tmp_path / "missing")


def test_fsync_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync_file flushes the given descriptor with os.fsync."""
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    durable.fsync_file(7)
    assert calls == [7]


def test_remove_quietly(tmp_path: Path) -> None:
    """remove_quietly removes a file and ignores one that is already gone."""
    path = tmp_path / "file"
    path.write_bytes(b"")
    durable.remove_quietly(path)
    assert not path.exists()
    durable.remove_quietly(path)


def test_is_full() -> None:
    """ENOSPC and EDQUOT mean full (try later); other errors do not."""
    assert durable.is_full(OSError(errno.ENOSPC, "full"))
    assert durable.is_full(OSError(errno.EDQUOT, "quota"))
    assert not durable.is_full(OSError(errno.EIO, "I/O"))
    assert not durable.is_full(ValueError("no"))
