"""What every protocol of ours does to a new TCP connection."""

from __future__ import annotations

import contextlib


def disable_nagle(transport: object) -> None:
    """Replies must leave at once, not wait for the client's delayed ACK (TCP_NODELAY)."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        with contextlib.suppress(OSError):
            set_no_delay(True)
