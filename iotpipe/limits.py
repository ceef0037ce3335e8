"""The limits every input must keep, defined once: sizes, time range, names, cardinality.

Validation (iotpipe/validation.py) and the sources enforce them; config.py exposes them
as the `[limits]` section (`IOTPIPE_LIMITS__...`). Each rejection names the setting that
raises the limit, as SETTING_HINT does here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from iotpipe.model import MICROS_PER_SECOND, Micros, datetime_to_micros

# The outermost times any setting may allow: a week inside what Python's datetime holds
# (years 1 to 9999), so that a weekly bucket or a day of tolerance never leaves it.
# Both engines hold more (PostgreSQL timestamptz: 4713 BC to 294276 AD; SQLite: int64 µs).
TIME_FLOOR: Micros = datetime_to_micros(datetime(1, 1, 8, tzinfo=UTC))
TIME_CEILING: Micros = datetime_to_micros(datetime(9999, 12, 24, tzinfo=UTC))

DEFAULT_EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_EARLIEST_MICROS: Micros = datetime_to_micros(DEFAULT_EARLIEST_TIME)
MAX_FUTURE_SECONDS = 10 * 365 * 86_400.0  # a tolerance for clocks, not a calendar
DEFAULT_MAX_FUTURE_SECONDS = 86_400.0  # clocks drift and time zones get mixed up; a day covers both
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024  # one message: an MQTT payload, a line or CSV row of a file
DEFAULT_MAX_DOCUMENT_BYTES = 256 * 1024 * 1024  # a whole JSON file, which is parsed in one piece
DEFAULT_MAX_ID_LENGTH = 200  # characters of a device id or a metric name
DEFAULT_MAX_TEXT_LENGTH = 1024  # characters of a unit or a metadata string (type, name, firmware, ...)
DEFAULT_MAX_METRICS_PER_MESSAGE = 1_000  # distinct metrics of one device in one message
DEFAULT_MAX_SERIES_PER_DEVICE = 10_000  # enforced by the store (see its docs)


def setting_hint(name: str) -> str:
    """How a user raises the limit `name`: the TOML key and the environment variable."""
    return f"[limits] {name} in iotpipe.toml or IOTPIPE_LIMITS__{name.upper()}"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one message may hold; the defaults are the values above."""

    earliest_time: Micros = DEFAULT_EARLIEST_MICROS
    max_future_seconds: float = DEFAULT_MAX_FUTURE_SECONDS
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    max_id_length: int = DEFAULT_MAX_ID_LENGTH
    max_text_length: int = DEFAULT_MAX_TEXT_LENGTH
    max_metrics_per_message: int = DEFAULT_MAX_METRICS_PER_MESSAGE
    max_series_per_device: int = DEFAULT_MAX_SERIES_PER_DEVICE
    max_future_micros: Micros = field(init=False)  # max_future_seconds, for the per-message check

    def __post_init__(self) -> None:
        if not TIME_FLOOR <= self.earliest_time < TIME_CEILING:
            raise ValueError("earliest_time must be between 0001-01-08 and 9999-12-24")
        if not 0 <= self.max_future_seconds <= MAX_FUTURE_SECONDS:
            raise ValueError(f"max_future_seconds must be between 0 and {MAX_FUTURE_SECONDS}")
        object.__setattr__(self, "max_future_micros", int(self.max_future_seconds * MICROS_PER_SECOND))


DEFAULT_LIMITS = Limits()
