"""Small builders shared by tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from iotpipe.model import RawMessage, now_micros


class CallbackAcker:
    """An Acknowledger whose tokens are callables: each is called once its message is committed."""

    def acknowledge(self, tokens: list[Any]) -> None:
        for callback in tokens:
            callback()


_ACKER = CallbackAcker()


def raw(
    payload: bytes | str | dict | list,
    origin: str = "test",
    source: str = "test",
    ack: Callable[[], Any] | None = None,
    **kw: object,
) -> RawMessage:
    """A RawMessage; `ack` is called once the message is committed."""
    if isinstance(payload, dict | list):
        body = orjson.dumps(payload)
    elif isinstance(payload, str):
        body = payload.encode()
    else:
        body = payload
    message = RawMessage(body, source, origin, kw.pop("received_at", now_micros()), **kw)  # type: ignore[arg-type]
    if ack is not None:
        message.acker, message.ack_token = _ACKER, ack
    return message
