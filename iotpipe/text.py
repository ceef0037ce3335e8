"""Untrusted text (device ids, metric names, units, metadata, payloads) made safe to show.

Anything a device can publish reaches an operator's terminal and logs. Control
characters (C0, DEL and C1) in it could move the cursor, recolour the screen or forge
log lines, so they are shown escaped (`\\x1b`), never raw.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character written as a \\xNN escape."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def has_control_characters(text: str) -> bool:
    return _CONTROL.search(text) is not None
