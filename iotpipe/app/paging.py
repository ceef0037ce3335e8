"""Cursor pagination: every list the API returns comes in pages with an opaque `next`.

A cursor is the position after the last item of a page (a keyset: the sort key and the
unique id), encoded as URL-safe base64 of JSON; it is not a secret and not an offset, so
items added while a client pages do not shift or repeat what it sees.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson

from iotpipe.errors import IotpipeError

T = TypeVar("T")


class BadCursor(IotpipeError):
    """A `cursor` parameter that no page of this list gave out."""


def encode_cursor(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: str) -> dict[str, Any] | None:
    """The position a cursor holds; BadCursor unless a page of list `kind` gave it out."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeError):
        position = None
    if not isinstance(position, dict) or position.get("k") != kind:
        raise BadCursor(
            f"cursor {cursor[:40]!r} was not given out by this list; pass the `next` of its last page"
        )
    return position


def check_limit(limit: int | None, default: int, largest: int) -> int:
    """The page size asked for (`default` when none), within 1..largest."""
    if limit is None:
        return min(default, largest)
    if not 1 <= limit <= largest:
        raise IotpipeError(f"limit must be between 1 and {largest}, got {limit}")
    return limit


def page_sorted(
    items: Sequence[T], key: Callable[[T], list[Any]], limit: int, cursor: str | None, kind: str
) -> tuple[list[T], str | None]:
    """One page of `items` (already sorted by `key`, ascending, unique) after `cursor`."""
    position = decode_cursor(cursor, kind)
    start = 0
    if position is not None:
        after = position.get("after")
        start = len(items)
        for index, item in enumerate(items):
            if _compare(key(item), after) > 0:
                start = index
                break
    page = list(items[start : start + limit])
    more = start + limit < len(items)
    return page, encode_cursor({"k": kind, "after": key(page[-1])}) if more and page else None


def _compare(a: list[Any], b: Any) -> int:
    """Compare two sort keys as JSON gave them back (lists of str/number/None)."""
    if not isinstance(b, list):
        raise BadCursor("cursor holds no position; pass the `next` of the last page")
    for x, y in zip(a, b, strict=False):
        if x == y:
            continue
        if x is None or y is None:
            return 1 if x is None else -1  # None sorts last
        try:
            return -1 if x < y else 1
        except TypeError:
            raise BadCursor("cursor does not belong to this sort order; start again without it") from None
    return 0
