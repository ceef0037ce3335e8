"""Table definitions (SQLAlchemy Core) used for every query outside the bulk write paths.

The DDL that creates them lives in migrations.py, per dialect, so that an old database
is upgraded step by step; tests check that the two agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

from iotpipe.model import Micros, datetime_to_micros


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
        return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)

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

# Per device, day and metric: values that arrived but were unusable (data quality input).
invalid_values = Table(
    "invalid_values",
    metadata,
    Column("device_pk", Integer, primary_key=True),
    Column("day", Text, primary_key=True),
    Column("metric", Text, primary_key=True),
    Column("count", BigInteger, nullable=False),
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
