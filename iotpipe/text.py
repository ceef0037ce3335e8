"""Untrusted text (from devices, files, brokers) made safe to print, log and store.

Device ids, metric names, units, metadata and payloads are chosen by whoever can publish
a message. Printed raw, an ESC sequence repaints the operator's terminal and a bidi
override reorders what they read; stored raw, a NUL or a lone surrogate is refused by
PostgreSQL. `printable()` escapes all of these the way Python's repr does (`\\x1b`).
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, lone surrogates (text that was not valid UTF-8), and the
# bidirectional overrides and isolates that reorder how a line is displayed.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")
# What ids and names may never hold: controls (C0, DEL, C1) and lone surrogates.
CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# What no text stored in either engine may hold (PostgreSQL refuses both; SQLite and
# psycopg cannot even encode a lone surrogate as UTF-8).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def escape_character(char: str) -> str:
    """One character as Python writes it in a repr: `\\x1b`, `\\u202e`."""
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _escape(match: re.Match[str]) -> str:
    return escape_character(match.group())


def printable(text: str) -> str:
    r"""`text` with control characters, lone surrogates and bidi controls escaped: '\x1b[31m' -> '\\x1b[31m'."""
    if text.isprintable():  # the common case, checked in C
        return text
    return _UNPRINTABLE.sub(_escape, text)


def describe_character(char: str) -> str:
    """A character named for a reason: `NUL (\\x00)`, `\\x1b`, `a lone surrogate (\\udc80)`."""
    code = ord(char)
    if code == 0:
        return "NUL (\\x00)"
    if 0xD800 <= code <= 0xDFFF:
        return f"a lone surrogate ({escape_character(char)}, from bytes that were not valid UTF-8)"
    return escape_character(char)


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a control character (C0, DEL, C1) or a lone surrogate."""
    return CONTROL_OR_SURROGATE.search(text) is not None
