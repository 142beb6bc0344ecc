"""xtext (RFC 3461 §4): how DSN parameters carry arbitrary text in an SMTP command.

Printable ASCII other than "+" and "=" stands for itself; any other octet is "+" and two
upper-case hexadecimal digits. ENVID and ORCPT values travel this way, and are kept decoded
in the queue.
"""

from __future__ import annotations

import re

_ENCODED = re.compile(r"\+([0-9A-F]{2})")
_VALID = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")


class XtextError(ValueError):
    """Not valid xtext."""


def decode(text: str) -> str:
    """The text an xtext value stands for (UTF-8 octets allowed inside, RFC 6533 §3)."""
    if not _VALID.fullmatch(text):
        raise XtextError(f"not valid xtext: {text!r}")
    octets = bytearray()
    position = 0
    for match in _ENCODED.finditer(text):
        octets += text[position : match.start()].encode("ascii")
        octets.append(int(match[1], 16))
        position = match.end()
    octets += text[position:].encode("ascii")
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError as error:
        raise XtextError("xtext does not decode to UTF-8") from error


def encode(text: str) -> str:
    return "".join(
        chr(octet) if 0x21 <= octet <= 0x7E and octet not in (0x2B, 0x3D) else f"+{octet:02X}"
        for octet in text.encode("utf-8")
    )
