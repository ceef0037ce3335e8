"""Every default and bound of the ingest path, in one place (config.py exposes them).

Batch limits, backlog bounds, payload sizes and what one message may hold are set here
once; the settings, the pipeline, validation and the sources all read them from here,
so a default is never written twice. `Limits` carries the message bounds that users
configure as `[limits]` (`IOTPIPE_LIMITS__...`); a rejection names the setting that
raises its limit (`setting_hint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

# Bottom of the house beside model.py, so nothing of iotpipe is imported here.
Micros = int
MICROS_PER_SECOND = 1_000_000


def _micros(moment: datetime) -> Micros:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


# -- the pipeline -----------------------------------------------------------------------
BATCH_SIZE = 50_000  # readings per transaction
BATCH_DELAY = 1.0  # seconds a reading may wait for its batch to fill
QUEUE_SIZE = 10_000  # messages buffered between push sources and the writer
MAX_PAYLOAD_BYTES = 256 * 1024  # one message: an MQTT payload, one line or CSV record of a file
# A whole JSON document in a file is one message; files are the user's own, so the
# network-facing payload limit would only reject legitimate exports.
FILE_MAX_PAYLOAD_BYTES = 1 << 30
FUTURE_TOLERANCE_SECONDS = 86_400.0  # readings may be up to a day ahead of receipt
BULK_BATCH_SIZE = 2_000_000  # readings per transaction of history imported into the packed tier (~60 MB)

# -- what one message may hold ([limits]) ---------------------------------------------------
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)  # older readings are rejected
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024  # a whole JSON file, which is parsed in one piece
MAX_ID_LENGTH = 200  # characters of a device id or a metric name
MAX_TEXT_LENGTH = 1024  # characters of a unit or a metadata string (type, name, firmware, ...)
MAX_METRICS_PER_MESSAGE = 1_000  # distinct metrics of one device in one message
MAX_SERIES_PER_DEVICE = 10_000  # series one device may have (enforced by the store)
FUTURE_TOLERANCE_CEILING_SECONDS = 10 * 365 * 86_400.0  # a tolerance for clocks, not a calendar
# The outermost times any setting may allow: a week inside what Python's datetime holds
# (years 1 to 9999), so that a weekly bucket or a day of tolerance never leaves it.
# Both engines hold more (PostgreSQL timestamptz: 4713 BC to 294276 AD; SQLite: int64 µs).
TIME_FLOOR: Micros = _micros(datetime(1, 1, 8, tzinfo=UTC))
TIME_CEILING: Micros = _micros(datetime(9999, 12, 24, tzinfo=UTC))
EARLIEST_MICROS: Micros = _micros(EARLIEST_TIME)

# -- the writer's retries when the store is down ----------------------------------------
WRITE_RETRY_MAX_BACKOFF = 30.0  # seconds between two tries, at most
SHUTDOWN_GRACE = 30.0  # seconds a stopping writer keeps retrying before it gives up


def setting_hint(name: str) -> str:
    """How a user raises the limit `name`: the TOML key and the environment variable."""
    return f"[limits] {name} in iotpipe.toml or IOTPIPE_LIMITS__{name.upper()}"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one message may hold; validation.py and the sources enforce it."""

    earliest_time: Micros = EARLIEST_MICROS
    max_future_seconds: float = FUTURE_TOLERANCE_SECONDS
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    max_id_length: int = MAX_ID_LENGTH
    max_text_length: int = MAX_TEXT_LENGTH
    max_metrics_per_message: int = MAX_METRICS_PER_MESSAGE
    max_series_per_device: int = MAX_SERIES_PER_DEVICE
    max_future_micros: Micros = field(init=False)  # max_future_seconds, for the per-message check

    def __post_init__(self) -> None:
        if not TIME_FLOOR <= self.earliest_time < TIME_CEILING:
            raise ValueError("earliest_time must be between 0001-01-08 and 9999-12-24")
        if not 0 <= self.max_future_seconds <= FUTURE_TOLERANCE_CEILING_SECONDS:
            raise ValueError(f"max_future_seconds must be between 0 and {FUTURE_TOLERANCE_CEILING_SECONDS:g}")
        object.__setattr__(self, "max_future_micros", int(self.max_future_seconds * MICROS_PER_SECOND))


DEFAULT_LIMITS = Limits()
# -- the HTTP API ------------------------------------------------------------------------
API_HOST = "127.0.0.1"  # loopback: nothing else reaches it unless told otherwise
API_PORT = 8080
API_MAX_BODY_BYTES = 16 * 1024 * 1024  # a request body as sent (gzip or not)
API_MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024  # a gzip body once inflated
API_RATE_LIMIT = 100.0  # requests per second per key, sustained
API_RATE_BURST = 200  # requests back to back before the rate applies
API_MAX_POINTS = 10_000  # points of one history response; past it: truncated + next
API_PAGE_SIZE = 100  # entries per page of a list, by default
API_MAX_PAGE_SIZE = 1000
# Threads answering reads at once. A read holds the GIL most of its time: more threads only
# queue on it and stretch every answer's tail (docs/performance.md, "API threads").
API_THREADS = 2
API_WRITE_THREADS = 40  # HTTP ingest mostly waits for its commit: a limiter of its own

# -- the live feed (sinks/live.py, /api/v1/live) -----------------------------------------
LIVE_MAX_PENDING = 100_000  # updates waiting for one client before it is closed as too slow
LIVE_MAX_LAG_SECONDS = 10.0  # how long updates may wait for a client before it is closed as too slow
LIVE_SEND_BUFFER_BYTES = 128 * 1024  # kernel send buffer of a WebSocket (Linux doubles it)
LIVE_MAX_FRAME = 10_000  # readings in one update frame; more wait for the next
LIVE_COALESCE_SECONDS = 0.25  # a client gets at most one update frame per this long
LIVE_MAX_BACKLOG = 1_000_000  # readings committed but not yet fanned out, past which clients are closed
LIVE_POLL_SECONDS = 1.0  # how often anomalies, alert changes and device statuses are polled
LIVE_MAX_BACKFILL_SECONDS = 3600.0  # history a subscription may ask for first
LIVE_MAX_BACKFILL_READINGS = 200_000  # readings one backfill sends at most
