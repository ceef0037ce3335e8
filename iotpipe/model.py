"""The types that flow from sources through decoders and the pipeline into the store.

Time is an int of microseconds since the Unix epoch, UTC, everywhere inside iotpipe:
exact, cheap to compare and hash, and the same on every engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Micros = int
MICROS_PER_SECOND = 1_000_000
MICROS_PER_HOUR = 3600 * MICROS_PER_SECOND


def now_micros() -> Micros:
    return int(datetime.now(UTC).timestamp() * MICROS_PER_SECOND)


def micros_to_datetime(t: Micros) -> datetime:
    return datetime.fromtimestamp(t / MICROS_PER_SECOND, UTC)


def datetime_to_micros(dt: datetime) -> Micros:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    # timedelta arithmetic keeps whole microseconds exact (no float rounding).
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * MICROS_PER_SECOND + delta.microseconds


def format_micros(t: Micros) -> str:
    """ISO 8601 with a Z, as the API and CLI print times."""
    return micros_to_datetime(t).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class RawMessage:
    """Bytes as a source received them, with what the source knows about them."""

    payload: bytes
    source: str  # "file", "mqtt", "http", "thingspeak", "simulator", "replay"
    origin: str  # where exactly: MQTT topic, "path:line", URL
    received_at: Micros
    format: str | None = None  # a decoder name when the source knows the format
    device_id: str | None = None  # from the topic, the file's --device, a channel id
    header: tuple[str, ...] | None = None  # CSV column names / ThingSpeak field names
    ack: Callable[[], None] | None = None  # called once the message is committed
    dead_letter_id: int | None = None  # set when the message is a dead letter replayed


@dataclass(slots=True, frozen=True)
class DeviceInfo:
    """Device metadata a payload may carry; None means 'not said', not 'cleared'."""

    type: str | None = None
    name: str | None = None
    firmware: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    elevation: float | None = None
    attributes: dict[str, Any] | None = None


@dataclass(slots=True)
class InvalidValue:
    """A metric whose value was present but unusable (non-numeric, non-finite)."""

    metric: str
    reason: str


@dataclass(slots=True)
class DecodedMessage:
    """One device's readings from one message, in canonical form."""

    device_id: str
    readings: list[tuple[str, Micros, float]]  # (metric, time, value)
    units: dict[str, str] = field(default_factory=dict)
    invalid: list[InvalidValue] = field(default_factory=list)
    info: DeviceInfo | None = None
    # The one time all readings share, when the decoder knows they do (V1, V2, a CSV row):
    # validation then checks one time instead of each reading's.
    time: Micros | None = None
