"""The types that flow from sources through decoders and the pipeline into the sinks.

Time is an int of microseconds since the Unix epoch, UTC, everywhere inside iotpipe:
exact, cheap to compare and hash, and the same on every engine.

This module sits at the bottom of the house: it imports nothing of iotpipe and no
third-party package, so every layer can share these types.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

Micros = int
MICROS_PER_SECOND = 1_000_000
MICROS_PER_HOUR = 3600 * MICROS_PER_SECOND
MICROS_PER_DAY = 24 * MICROS_PER_HOUR


def now_micros() -> Micros:
    return int(dt.datetime.now(dt.UTC).timestamp() * MICROS_PER_SECOND)


def micros_to_datetime(t: Micros) -> dt.datetime:
    """Exactly (a float of seconds would round some µs away)."""
    return dt.datetime.fromtimestamp(t // MICROS_PER_SECOND, dt.UTC).replace(
        microsecond=t % MICROS_PER_SECOND
    )


def datetime_to_micros(moment: dt.datetime) -> Micros:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    # timedelta arithmetic keeps whole microseconds exact (no float rounding).
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * MICROS_PER_SECOND + delta.microseconds


def format_micros(t: Micros) -> str:
    """ISO 8601 with a Z, as the API and CLI print times."""
    return micros_to_datetime(t).isoformat().replace("+00:00", "Z")


def day_start(t: Micros) -> Micros:
    return t - t % MICROS_PER_DAY


def day_name(t: Micros) -> str:
    """'YYYY-MM-DD' of the UTC day holding t (the key of every per-day table)."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=t // MICROS_PER_DAY)).isoformat()


class Acknowledger(Protocol):
    """A source that must be told which of its messages are stored (an MQTT client's
    PUBACKs, a JetStream ack): called once per committed batch with their tokens."""

    def acknowledge(self, tokens: list[Any]) -> None: ...


@dataclass(slots=True)
class RawMessage:
    """Bytes as a source received them, with what the source knows about them."""

    payload: bytes
    source: str  # "file", "mqtt", "http", "nats", "thingspeak", "simulator"
    origin: str  # where exactly: MQTT topic, "path:line", URL
    received_at: Micros
    format: str | None = None  # a decoder name when the source knows the format
    device_id: str | None = None  # from the topic, the file's --device, a channel id
    header: tuple[str, ...] | None = None  # CSV column names / ThingSpeak field names
    acker: Acknowledger | None = None  # told once the message is committed...
    ack_token: Any = None  # ...with this token (e.g. an MQTT packet id)
    dead_letter_id: int | None = None  # set when the message is a dead letter replayed
    # Why the source already knows the message cannot be stored (e.g. JetStream gave up
    # redelivering it): the pipeline dead-letters it with this reason, undecoded; a
    # replay decodes it as usual.
    reject: str | None = None

    @property
    def counted_as(self) -> str:
        """The source the metrics count this message under. A dead letter was counted when
        it arrived: its replay is a second pass, not a new arrival of its source's."""
        return "replay" if self.dead_letter_id is not None else self.source


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


@dataclass(slots=True)
class DeadLetter:
    """A message that could not be stored, with the reason."""

    raw: RawMessage
    reason: str


@dataclass(slots=True)
class WriteBatch:
    """Everything one transaction commits: readings, dead letters, watermarks, counts.

    Readings stay grouped as decoded: (device_id, [(metric, time, value), ...]) so the
    writer maps each device once and each metric with one dict lookup.
    """

    groups: list[tuple[str, list[tuple[str, Micros, float]]]] = field(default_factory=list)
    units: dict[tuple[str, str], str] = field(default_factory=dict)
    infos: dict[str, DeviceInfo] = field(default_factory=dict)
    # Values present but unusable, keyed like readings by (device, metric, time), so a
    # message delivered twice counts its invalid values once; the value is the reason.
    invalid: dict[tuple[str, str, Micros], str] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    replayed: list[int] = field(default_factory=list)  # dead letter ids now stored
    watermarks: dict[tuple[str, str], str] = field(default_factory=dict)
    reading_count: int = 0
    # Accepted messages and their readings per source ("mqtt", "http", ...), for metrics.
    source_counts: dict[str, list[int]] = field(default_factory=dict)
    # The readings as columns, built by the store ahead of the write (see
    # Store.prepare_columns); opaque to every other layer.
    columns: Any = None
    # Readings older than this (Unix µs, a UTC day boundary) go straight into the packed
    # tier: a historical import, whose days are past the hot window.
    pack_before: int | None = None
    # Readings a bulk decoder put in columns (formats/columnar.py Blocks: device, metric,
    # time and value arrays), beside the grouped ones; opaque to the pipeline.
    blocks: list[Any] = field(default_factory=list)
    # Where each block came in among the groups (len(groups) then): the store keeps the
    # fed order, so that of two readings of one (series, time) the first fed is stored.
    block_positions: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.groups
            or self.blocks
            or self.dead_letters
            or self.replayed
            or self.watermarks
            or self.invalid
            or self.infos
        )


@dataclass(slots=True, frozen=True)
class WriteResult:
    """What a committed batch stored, and its readings resolved to series for the
    after-commit observers: numpy arrays of series ids, Unix µs times and values (in
    the batch's order, duplicates of stored readings included), or None if it had none."""

    stored: int
    duplicates: int
    series_ids: Any = None
    times: Any = None
    values: Any = None
    seconds: float = 0.0  # how long the store took to commit the batch


@dataclass
class Counters:
    """What happened to every message; `accounted()` checks that nothing went missing."""

    messages_received: int = 0
    messages_accepted: int = 0  # at least one valid reading
    messages_dead_lettered: int = 0
    readings_received: int = 0
    readings_stored: int = 0
    readings_duplicate: int = 0
    values_invalid: int = 0
    batches_written: int = 0

    def accounted(self) -> bool:
        return (
            self.messages_received == self.messages_accepted + self.messages_dead_lettered
            and self.readings_received == self.readings_stored + self.readings_duplicate
        )

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
