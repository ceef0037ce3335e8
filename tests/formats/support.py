"""Helpers shared by the decoder tests: building raw messages, checking decoded output."""

from __future__ import annotations

import math

from iotpipe.formats.values import MAX_ID_LENGTH
from iotpipe.model import DecodedMessage, InvalidValue, RawMessage

RECEIVED_AT = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z, in µs


def raw_message(
    payload: bytes | str,
    *,
    format: str | None = None,
    device_id: str | None = None,
    header: tuple[str, ...] | None = None,
    received_at: int = RECEIVED_AT,
) -> RawMessage:
    if isinstance(payload, str):
        payload = payload.encode()
    return RawMessage(
        payload=payload,
        source="test",
        origin="test",
        received_at=received_at,
        format=format,
        device_id=device_id,
        header=header,
    )


def assert_well_formed(messages: list[DecodedMessage]) -> None:
    """What every decoder promises about its output, whatever the input."""
    assert isinstance(messages, list)
    for message in messages:
        assert isinstance(message, DecodedMessage)
        assert type(message.device_id) is str
        assert 0 < len(message.device_id) <= MAX_ID_LENGTH and message.device_id.strip()
        for metric, time, value in message.readings:
            assert type(metric) is str and 0 < len(metric) <= MAX_ID_LENGTH and metric.strip()
            assert type(time) is int
            assert type(value) is float and math.isfinite(value)
            # A message that says its readings share one time must keep to it: validation
            # then checks that one time only.
            assert message.time is None or time == message.time
        for invalid in message.invalid:
            assert isinstance(invalid, InvalidValue)
            assert type(invalid.metric) is str and type(invalid.reason) is str and invalid.reason
        for metric, unit in message.units.items():
            assert type(metric) is str and type(unit) is str


def readings_of(messages: list[DecodedMessage]) -> list[tuple[str, str, int, float]]:
    """All readings as (device, metric, time, value), in order."""
    return [(m.device_id, metric, t, v) for m in messages for metric, t, v in m.readings]
