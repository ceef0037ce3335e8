"""Small builders shared by tests."""

from __future__ import annotations

import orjson

from iotpipe.model import RawMessage, now_micros


def raw(
    payload: bytes | str | dict | list, origin: str = "test", source: str = "test", **kw: object
) -> RawMessage:
    if isinstance(payload, dict | list):
        body = orjson.dumps(payload)
    elif isinstance(payload, str):
        body = payload.encode()
    else:
        body = payload
    return RawMessage(body, source, origin, kw.pop("received_at", now_micros()), **kw)  # type: ignore[arg-type]
