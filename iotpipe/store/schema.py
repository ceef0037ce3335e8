"""Table definitions (SQLAlchemy Core) used for every query outside the bulk write paths.

The DDL that creates them lives in migrations.py, per dialect, so that an old database
is upgraded step by step; tests check that the two agree.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from iotpipe.model import Micros, datetime_to_micros, micros_to_datetime


class UtcMicros(TypeDecorator[Micros]):
    """µs since the epoch in Python; timestamptz on PostgreSQL, INTEGER µs on SQLite."""

    impl = BigInteger
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        return dialect.type_descriptor(BigInteger())

    def process_bind_param(self, value: Micros | None, dialect: Dialect) -> Any:
        if value is None or dialect.name != "postgresql":
            return value
        return micros_to_datetime(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Micros | None:
        if value is None or isinstance(value, int):
            return value
        return datetime_to_micros(value)


class JsonDocument(TypeDecorator[Any]):
    """JSONB on PostgreSQL, JSON text on SQLite."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB())
        return dialect.type_descriptor(JSON())


metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("device_id", Text, nullable=False, unique=True),
    Column("type", Text),
    Column("name", Text),
    Column("firmware", Text),
    Column("latitude", Float),
    Column("longitude", Float),
    Column("elevation", Float),
    Column("attributes", JsonDocument),
    Column("first_seen", UtcMicros),
    Column("last_seen", UtcMicros),
    Column("created_at", UtcMicros, nullable=False),
)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("device_pk", Integer, nullable=False),
    Column("metric", Text, nullable=False),
    Column("unit", Text),
    Column("created_at", UtcMicros, nullable=False),
)

# Narrow on purpose: (series_id, time) is the primary key and the only index, so a
# time-range read of one series is one index range scan, and a reading costs ~20 B on
# SQLite (WITHOUT ROWID) and ~94 B on PostgreSQL (heap tuple + btree entry).
readings = Table(
    "readings",
    metadata,
    Column("series_id", Integer, primary_key=True),
    Column("time", UtcMicros, primary_key=True),
    Column("value", Float, nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("received_at", UtcMicros, nullable=False),
    Column("source", Text, nullable=False),
    Column("origin", Text, nullable=False),
    Column("format", Text),
    Column("device_hint", Text),
    Column("header", JsonDocument),
    Column("payload", LargeBinary, nullable=False),
    Column("reason", Text, nullable=False),
    # One row per distinct bad message: receiving it again (a re-import, a redelivery)
    # bumps `attempts` instead of adding a twin.
    Column("fingerprint", Text, nullable=False, unique=True),
    Column("attempts", Integer, nullable=False),
    Column("last_attempt_at", UtcMicros, nullable=False),
)

# Values that arrived but were unusable (data quality input), one row per device, metric
# and time like readings, so a message delivered twice counts its invalid values once.
invalid_readings = Table(
    "invalid_readings",
    metadata,
    Column("device_pk", Integer, primary_key=True),
    Column("metric", Text, primary_key=True),
    Column("time", UtcMicros, primary_key=True),
    Column("reason", Text, nullable=False),
)

# A source's resume point (e.g. a ThingSpeak channel's last entry_id), committed in the
# same transaction as the readings it covers.
ingest_watermarks = Table(
    "ingest_watermarks",
    metadata,
    Column("source", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UtcMicros, nullable=False),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("name", Text, primary_key=True),
    Column("applied_at", UtcMicros, nullable=False),
)

# Hours of a series that received readings since the rollup job last visited them:
# written by every batch in the readings' transaction, consumed by analytics.
dirty_hours = Table(
    "dirty_hours",
    metadata,
    Column("series_id", Integer, primary_key=True),
    Column("hour_start", UtcMicros, primary_key=True),
)

# -- analytics (migration 0004) -------------------------------------------------------

# Mergeable partial state of one series over one bucket ('1h', '1d', '1w'): count, mean
# and M2 (sum of squared deviations) combine exactly by Chan et al.'s parallel formula,
# so days and weeks are merged from hours without rescanning readings.
rollups = Table(
    "rollups",
    metadata,
    Column("series_id", Integer, primary_key=True),
    Column("bucket", Text, primary_key=True),
    Column("bucket_start", UtcMicros, primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("mean", Float, nullable=False),
    Column("m2", Float, nullable=False),
    Column("min", Float, nullable=False),
    Column("max", Float, nullable=False),
    Column("first_time", UtcMicros, nullable=False),
    Column("first_value", Float, nullable=False),
    Column("last_time", UtcMicros, nullable=False),
    Column("last_value", Float, nullable=False),
    Column("updated_at", UtcMicros, nullable=False),
)

# How many times the rollup job has taken dirty_hours over (one row): a writer that
# committed marks under the epoch it reads knows they are in place (store/marks.py).
rollup_epoch = Table(
    "rollup_epoch",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
)

# Hours taken over from dirty_hours by the rollup job and not yet recomputed: the hand-
# over is short and locked, the recomputation long and unlocked (see analytics/rollups.py).
rollup_queue = Table(
    "rollup_queue",
    metadata,
    Column("series_id", Integer, primary_key=True),
    Column("hour_start", UtcMicros, primary_key=True),
)

# Data quality per device and UTC day, the numbers behind the score kept beside it.
data_quality = Table(
    "data_quality",
    metadata,
    Column("device_pk", Integer, primary_key=True),
    Column("day", Text, primary_key=True),
    Column("expected", BigInteger, nullable=False),
    Column("received", BigInteger, nullable=False),
    Column("missing", BigInteger, nullable=False),
    Column("invalid", BigInteger, nullable=False),
    Column("out_of_range", BigInteger, nullable=False),
    Column("anomalous", BigInteger, nullable=False),
    Column("missing_pct", Float, nullable=False),
    Column("out_of_range_pct", Float, nullable=False),
    Column("anomalous_pct", Float, nullable=False),
    Column("score", Float, nullable=False),
    Column("computed_at", UtcMicros, nullable=False),
)

device_health = Table(
    "device_health",
    metadata,
    Column("device_pk", Integer, primary_key=True),
    Column("status", Text, nullable=False),  # online | offline
    Column("last_seen", UtcMicros),
    Column("interval_seconds", Float),
    Column("offline_after_seconds", Float, nullable=False),
    Column("battery", Float),
    Column("battery_low", Boolean, nullable=False),
    Column("quality_score", Float),
    Column("health_score", Float, nullable=False),
    Column("checked_at", UtcMicros, nullable=False),
)

# Rules from the config file (origin 'config'), the API ('api') and the built-in
# conditions ('builtin': offline, low battery, streaming anomalies, low quality).
alert_rules = Table(
    "alert_rules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("kind", Text, nullable=False),  # threshold | offline | battery | anomaly | quality
    Column("origin", Text, nullable=False),
    Column("device", Text, nullable=False),  # an id or a glob
    Column("device_type", Text),
    Column("metric", Text),
    Column("min", Float),
    Column("max", Float),
    Column("for_seconds", Float, nullable=False),
    Column("severity", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("created_at", UtcMicros, nullable=False),
    Column("updated_at", UtcMicros, nullable=False),
)

# One row per alert; a partial unique index keeps one active (not resolved) alert per
# rule and subject ('series:<id>' or 'device:<pk>').
alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("rule_id", Integer, nullable=False),
    Column("subject", Text, nullable=False),
    Column("device_pk", Integer, nullable=False),
    Column("series_id", Integer),
    Column("anomaly_id", BigInteger, unique=True),  # the streaming episode it reports
    Column("status", Text, nullable=False),  # open | acknowledged | resolved
    Column("severity", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("value", Float),
    Column("started_at", UtcMicros, nullable=False),  # when the condition began
    Column("opened_at", UtcMicros, nullable=False),
    Column("acknowledged_at", UtcMicros),
    Column("resolved_at", UtcMicros),
)

alert_events = Table(
    "alert_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("alert_id", Integer, nullable=False),
    Column("event", Text, nullable=False),  # opened | acknowledged | resolved
    Column("at", UtcMicros, nullable=False),
    Column("value", Float),
)

# The webhook outbox: written with the event, delivered later with retries and backoff.
alert_notifications = Table(
    "alert_notifications",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("event_id", Integer, nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", JsonDocument, nullable=False),
    Column("status", Text, nullable=False),  # pending | sent | failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcMicros, nullable=False),
    Column("last_error", Text),
    Column("sent_at", UtcMicros),
)

# Evaluation state of a rule for one subject: how far its readings were walked, and
# since when the condition has held (for for-durations).
alert_state = Table(
    "alert_state",
    metadata,
    Column("rule_id", Integer, primary_key=True),
    Column("subject", Text, primary_key=True),
    Column("cursor_time", UtcMicros),
    Column("violating_since", UtcMicros),
)

job_state = Table(
    "job_state",
    metadata,
    Column("name", Text, primary_key=True),
    Column("last_started_at", UtcMicros),
    Column("last_finished_at", UtcMicros),
    Column("last_status", Text),  # ok | failed
    Column("last_result", JsonDocument),
    Column("last_error", Text),
)

# What the anomaly detectors found: one row per reading the z-score rule flags, one per
# episode of the streaming detector (its first abnormal reading; end_time is NULL while
# the episode lasts). Re-detecting the same thing hits the unique key and adds nothing.
anomalies = Table(
    "anomalies",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("series_id", Integer, nullable=False),
    Column("time", UtcMicros, nullable=False),
    Column("end_time", UtcMicros),
    Column("value", Float, nullable=False),
    Column("score", Float, nullable=False),
    Column("method", Text, nullable=False),  # zscore | streaming
    Column("detected_at", UtcMicros, nullable=False),
    # streaming: spike, dip, level_shift, variance_change, stuck, drift, seasonal_deviation;
    # zscore: spike or dip
    Column("reason", Text, nullable=False, server_default=""),
    UniqueConstraint("series_id", "time", "method"),
)

# API keys (migration 0008): a key is found by the sha256 of its token; `prefix` (the
# token's first characters) names it in listings; `devices` scopes a writer key.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("prefix", Text, nullable=False),
    Column("token_hash", Text, nullable=False, unique=True),
    Column("role", Text, nullable=False),  # admin | operator | writer | reader
    Column("devices", JsonDocument),  # list of device ids, or NULL for all
    Column("created_at", UtcMicros, nullable=False),
    Column("expires_at", UtcMicros),
    Column("last_used_at", UtcMicros),
    Column("revoked_at", UtcMicros),
)

# -- the packed tier (migration 0010) ---------------------------------------------------

# One series' readings of one UTC day, packed (store/packed.py): `count` readings from
# first_time to last_time, their times and values as compressed blobs.
packed_readings = Table(
    "packed_readings",
    metadata,
    Column("series_id", Integer, primary_key=True),
    Column("day_start", UtcMicros, primary_key=True),
    Column("count", Integer, nullable=False),
    Column("first_time", UtcMicros, nullable=False),
    Column("last_time", UtcMicros, nullable=False),
    Column("time_data", LargeBinary, nullable=False),
    Column("value_data", LargeBinary, nullable=False),
    Column("packed_at", UtcMicros, nullable=False),
)

# The streaming detector's state of a series, saved every half `rebuild_readings` of its
# readings, so that a restart restores it and replays only what came after (exact).
# `layout` says what the bytes mean; a checkpoint of another layout is ignored.
detector_state = Table(
    "detector_state",
    metadata,
    Column("series_id", Integer, primary_key=True),
    Column("layout", BigInteger, nullable=False),
    Column("last_time", UtcMicros, nullable=False),
    Column("state", LargeBinary, nullable=False),
)
