"""Sending a message file to a connection chunk by chunk, as fast as the peer takes it.

Shared by POP3 (RETR and TOP) and the SMTP client (the content after DATA): the file is read
in chunks off the reactor thread, each chunk encoded for the wire (byte-stuffing), and written
while the transport accepts it; the producer pauses when the peer reads slowly, so memory
stays flat whatever the size of the message.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from mailserver.stuffing import Encoder

CHUNK_SIZE = 64 * 1024  # octets read from a message file at a time


class StreamStopped(Exception):
    """The connection went away while a message was being sent."""


@implementer(IPushProducer)
class MessageStreamer:
    """Sends one message, encoded for a multi-line response, to ``consumer``.

    ``read(offset, size)`` gives the message chunk by chunk (:meth:`IMailbox.read_message`).
    ``header`` (the "+OK" line) goes out with the first chunk, so a message whose first read
    fails has had nothing sent and can still be refused with -ERR. Chunks are written while
    the consumer accepts them; the producer is registered only for a message larger than one
    chunk, so a small message costs one read and one write. ``on_done`` is called once: with
    None when the terminating "." is written, with the read error, or with
    :class:`StreamStopped` if the consumer stops it; :attr:`started` tells whether any octet
    was written by then.
    """

    def __init__(
        self,
        consumer: IConsumer,
        read: Callable[[int, int], Deferred[bytes]],
        encoder: Encoder,
        header: bytes,
        on_progress: Callable[[], None],
        on_done: Callable[[Failure | None], None],
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self._consumer = consumer
        self._read = read
        self._encoder = encoder
        self._on_progress = on_progress
        self._on_done = on_done
        self._chunk_size = chunk_size
        self._offset = 0
        self._pending = [header]
        self._pending_size = len(header)
        self.started = False
        self._registered = False
        self._paused = False
        self._reading = False
        self._pumping = False
        self._finished = False

    def start(self) -> None:
        self._pump()

    # IPushProducer, called by the consumer.

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._on_progress()
        self._pump()

    def stopProducing(self) -> None:
        self._finish(Failure(StreamStopped()))

    # The reading loop.

    def _pump(self) -> None:
        if self._pumping:
            return  # a read that fired at once is handled by the loop below
        self._pumping = True
        try:
            while not (self._paused or self._reading or self._finished):
                self._reading = True
                self._read(self._offset, self._chunk_size).addCallbacks(
                    self._received, self._failed
                )
        finally:
            self._pumping = False

    def _received(self, data: bytes) -> None:
        self._reading = False
        if self._finished:
            return
        self._offset += len(data)
        encoder = self._encoder
        if data:
            encoded = encoder.feed(data)
            self._pending.append(encoded)
            self._pending_size += len(encoded)
        # IMailbox.read_message: a short read is the end of the message.
        if len(data) < self._chunk_size or encoder.done:
            self._pending.append(encoder.finish())
            self._flush()
            self._finish(None)
            return
        if self._pending_size >= self._chunk_size:
            if not self._registered:
                self._registered = True
                self._consumer.registerProducer(self, True)
            self._flush()  # the consumer may pause us from inside this write
            self._on_progress()
        self._pump()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        self._finish(failure)

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending = []
        self._pending_size = 0
        self.started = True
        self._consumer.write(data)

    def _finish(self, failure: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        if self._registered:
            self._registered = False
            self._consumer.unregisterProducer()
        self._on_done(failure)
