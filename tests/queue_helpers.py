"""Making queued messages on disk for the queue tests, the way the mail store queues them."""

from __future__ import annotations

import os
from pathlib import Path

from mailserver import durable
from mailserver.interfaces import OutboundRecipient
from mailserver.queue.record import QueueRecord
from mailserver.queue.store import QueueStore

MESSAGE = b"From: alice@ours.example\r\nSubject: hi\r\n\r\nHello.\r\n"


def queue_message(
    store: QueueStore,
    id: str,
    recipients: list[str],
    created: float = 1000.0,
    sender: str = "alice@ours.example",
    message: bytes = MESSAGE,
    **dsn: object,
) -> QueueRecord:
    """Queue ``message`` as MaildirStore does: a flushed file linked in, the record beside."""
    record = QueueRecord.for_transaction(
        id=id,
        sender=sender,
        recipients=[OutboundRecipient(address) for address in recipients],
        created=created,
        size=len(message),
        **dsn,  # type: ignore[arg-type]
    )
    source = store.directory.parent / f"spool-{id}"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(message)
    staged, fd = store.stage(record)
    durable.fsync_file(fd)
    os.close(fd)
    store.publish(source, record, staged)
    source.unlink()
    return record


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.is_file())
