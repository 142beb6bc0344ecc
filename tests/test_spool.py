"""Tests for mailserver.spool: a message buffered in memory, then spilled to a spool file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mailserver.spool import SPILL_THRESHOLD, STALE_AFTER, Spool, clean_stale


def files_in(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def test_small_message_stays_in_memory(tmp_path: Path) -> None:
    """Below the threshold nothing is written to disk, however many writes there are."""
    spool = Spool(tmp_path, spill_threshold=100)
    for _ in range(99):
        spool.write(b"x")
    assert spool.size == 99
    assert files_in(tmp_path) == []


def test_spills_to_a_file_at_the_threshold(tmp_path: Path) -> None:
    """Reaching the threshold moves what was buffered to one file in the spool directory;
    later writes are buffered again until the threshold is reached again."""
    spool = Spool(tmp_path, spill_threshold=100)
    spool.write(b"a" * 60)
    spool.write(b"b" * 40)
    [path] = files_in(tmp_path)
    assert path.read_bytes() == b"a" * 60 + b"b" * 40
    spool.write(b"c" * 99)
    assert path.stat().st_size == 100
    spool.write(b"d")
    assert path.read_bytes() == b"a" * 60 + b"b" * 40 + b"c" * 99 + b"d"
    assert files_in(tmp_path) == [path]
    assert spool.size == 200


def test_default_threshold_is_256_kib(tmp_path: Path) -> None:
    """The default keeps up to 256 KiB in memory per message."""
    spool = Spool(tmp_path)
    spool.write(b"x" * (SPILL_THRESHOLD - 1))
    assert files_in(tmp_path) == []
    spool.write(b"x")
    assert len(files_in(tmp_path)) == 1
    assert SPILL_THRESHOLD == 256 * 1024


def test_finish_writes_everything_and_returns_path_and_descriptor(tmp_path: Path) -> None:
    """finish() writes what was buffered after a spill; the descriptor is open on that file
    (the committer fsyncs it) and the file is private to the server (0600)."""
    spool = Spool(tmp_path, spill_threshold=10)
    spool.write(b"0123456789")  # spilled
    spool.write(b"tail")  # buffered
    path, fd = spool.finish()
    assert path.parent == tmp_path
    assert path.read_bytes() == b"0123456789tail"
    assert os.fstat(fd).st_ino == path.stat().st_ino
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_finish_of_a_small_message_creates_the_file(tmp_path: Path) -> None:
    """A message that never spilled still gets a file at finish (delivery links it)."""
    spool = Spool(tmp_path)
    spool.write(b"short")
    path, _ = spool.finish()
    assert files_in(tmp_path) == [path]
    assert path.read_bytes() == b"short"


def test_discard_removes_the_file(tmp_path: Path) -> None:
    """discard() removes the spool file; calling it again, or on a spool that never made a
    file, does nothing."""
    spool = Spool(tmp_path, spill_threshold=1)
    spool.write(b"data")
    assert len(files_in(tmp_path)) == 1
    spool.discard()
    assert files_in(tmp_path) == []
    spool.discard()
    never_spilled = Spool(tmp_path)
    never_spilled.write(b"x")
    never_spilled.discard()
    assert files_in(tmp_path) == []


def test_discard_after_finish(tmp_path: Path) -> None:
    """The finished file is removed by discard() too (the store discards after linking)."""
    spool = Spool(tmp_path)
    spool.write(b"x")
    path, _ = spool.finish()
    spool.discard()
    assert not path.exists()


def test_spool_files_do_not_collide(tmp_path: Path) -> None:
    """Many spools in one directory each get their own file."""
    spools = [Spool(tmp_path, spill_threshold=1) for _ in range(50)]
    for index, spool in enumerate(spools):
        spool.write(b"%d" % index)
    assert len(files_in(tmp_path)) == 50
    assert {spool.finish()[0].read_bytes() for spool in spools} == {b"%d" % i for i in range(50)}


def test_clean_stale_removes_only_old_files(tmp_path: Path) -> None:
    """clean_stale removes files older than a day (crash debris) and leaves newer files and
    directories alone; it returns how many it removed."""
    now = 2_000_000_000.0
    old = tmp_path / "old"
    recent = tmp_path / "recent"
    directory = tmp_path / "old-directory"
    for path in (old, recent):
        path.write_bytes(b"x")
    directory.mkdir()
    os.utime(old, (now - STALE_AFTER - 1, now - STALE_AFTER - 1))
    os.utime(recent, (now - STALE_AFTER + 60, now - STALE_AFTER + 60))
    os.utime(directory, (now - 10 * STALE_AFTER, now - 10 * STALE_AFTER))
    assert clean_stale(tmp_path, now) == 1
    assert files_in(tmp_path) == [directory, recent]
    assert clean_stale(tmp_path, now) == 0


def test_insert_into_a_message_in_memory(tmp_path: Path) -> None:
    """Header fields inserted before finish land at their offset, and count in the size."""
    spool = Spool(tmp_path, spill_threshold=1000)
    spool.write(b"Return-Path: <a@b>\r\n")
    spool.write(b"Received: x\r\nSubject: s\r\n\r\nbody\r\n")
    spool.insert(20, b"Authentication-Results: mx; none\r\n")
    path, fd = spool.finish()
    os.close(fd)
    assert path.read_bytes() == (
        b"Return-Path: <a@b>\r\nAuthentication-Results: mx; none\r\n"
        b"Received: x\r\nSubject: s\r\n\r\nbody\r\n"
    )
    assert spool.size == path.stat().st_size


def test_insert_into_a_spilled_message_rewrites_the_file(tmp_path: Path) -> None:
    """A message already in its file is rewritten at finish with the insertion in place; the
    old file is gone and the content after the offset is copied whole."""
    spool = Spool(tmp_path, spill_threshold=100)
    spool.write(b"L" * 10)
    body = bytes(range(256)) * 4000
    spool.write(body)
    [old] = files_in(tmp_path)
    spool.insert(10, b"INSERTED")
    path, fd = spool.finish()
    os.close(fd)
    assert path != old
    assert files_in(tmp_path) == [path]
    assert path.read_bytes() == b"L" * 10 + b"INSERTED" + body
    assert spool.size == 10 + 8 + len(body)
