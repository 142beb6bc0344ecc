"""Fixtures that run the real server: each test gets its own directory and ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.server import RunningServer, free_port
from tests.integration.sink import SMTPSink

PASSWORD = "correct horse battery staple"


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type]:
    """Make servers with extra settings; all are stopped at the end of the test."""
    made: list[RunningServer] = []

    def make(settings: dict[str, dict[str, object]] | None = None) -> RunningServer:
        server = RunningServer(tmp_path / f"server{len(made)}", free_port(), settings or {})
        server.directory.mkdir()
        server.write_config()
        made.append(server)
        return server

    yield make  # type: ignore[misc]
    for server in made:
        server.stop()


@pytest.fixture
def server(server_factory) -> RunningServer:  # type: ignore[no-untyped-def]
    """A running server for example.org with users alice and bob and a few aliases."""
    server = server_factory()
    server.admin("user", "add", "alice@example.org", password=PASSWORD)
    server.admin("user", "add", "bob@example.org", password=PASSWORD)
    server.admin("alias", "add", "team@example.org", "alice@example.org", "bob@example.org")
    server.admin("alias", "add", "postmaster@example.org", "alice@example.org")
    server.start()
    return server


@pytest.fixture
def sink() -> Iterator[SMTPSink]:
    """A running receiving server on 127.0.0.1: the MX of the other domains in a test."""
    with SMTPSink() as running:
        yield running
