"""The store: one object owning the database, shared by both engines except the bulk paths.

Everything here is SQLAlchemy Core; subclasses provide only what differs per engine:
the readings bulk insert (COPY / executemany) and how a batch updates device times.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc

from iotpipe.arrays import distinct, in_series_time_order
from iotpipe.errors import BatchRejected, first_line
from iotpipe.limits import Limits
from iotpipe.model import (
    MICROS_PER_DAY,
    DeviceInfo,
    Micros,
    RawMessage,
    WriteBatch,
    WriteResult,
    now_micros,
)
from iotpipe.store import compaction, driver, migrations, tiers
from iotpipe.store.marks import KnownMarks, mark_keys, mark_rows
from iotpipe.store.schema import (
    UtcMicros,
    dead_letters,
    devices,
    ingest_watermarks,
    invalid_readings,
    packed_readings,
    readings,
    series,
)
from iotpipe.store.tiers import (
    IN_CHUNK,
    HourPartials,
    SeriesReadings,
    _typed,
    integers_value,
    one_of,
    series_time_order,
)

# What a database raises for the data it was given rather than for being unreachable:
# the pipeline answers these by finding the message at fault (see Store.write).
_DATA_ERRORS = (
    sa_exc.DataError,
    sa_exc.IntegrityError,
    psycopg.DataError,
    psycopg.IntegrityError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
    ValueError,
    OverflowError,
)


@dataclass(slots=True)
class ReadingColumns:
    """A batch's readings as arrays (times in the engine's representation), in the order
    decoded, with which device each decoded message's run of readings belongs to."""

    series_ids: np.ndarray  # int32
    times: np.ndarray  # int64 µs, engine time
    values: np.ndarray  # float64
    group_devices: list[int]  # device pk of each consecutive run of readings
    group_sizes: list[int]
    # Device spans of readings that came in bulk-decoded blocks (no runs to walk).
    block_spans: dict[int, tuple[Micros, Micros]] | None = None

    def __len__(self) -> int:
        return len(self.series_ids)

    def rows(self) -> Iterator[tuple[int, Micros, float]]:
        return zip(self.series_ids.tolist(), self.times.tolist(), self.values.tolist(), strict=True)

    def mark_keys(self) -> np.ndarray:
        """Each (series, hour) the readings touch, as keys (store/marks.py), so rollups
        recompute only those — late and replayed readings included (a replay re-marks;
        recomputing is idempotent)."""
        return mark_keys(self.series_ids, self.times)

    def subset(self, keep: np.ndarray) -> ReadingColumns:
        """Only the readings `keep` marks (the device runs stay those of the whole batch)."""
        return ReadingColumns(
            self.series_ids[keep],
            self.times[keep],
            self.values[keep],
            self.group_devices,
            self.group_sizes,
            self.block_spans,
        )

    def in_series_order(self) -> ReadingColumns:
        """The readings grouped by series, each in time order (stable: of two at one time,
        the first fed stays first), with the device spans kept from the runs they came in.

        Sorted once here, the batch's later steps (rollup marks, packing, COPY, the
        detector) find their order in place instead of sorting a million readings each."""
        if in_series_time_order(self.series_ids, self.times):
            return self
        order = series_time_order(self.series_ids, self.times)
        return ReadingColumns(
            self.series_ids[order], self.times[order], self.values[order], [], [], self.device_spans()
        )

    def device_spans(self) -> dict[int, tuple[Micros, Micros]]:
        """Each device's (first, last) reading time in the batch."""
        spans: dict[int, tuple[Micros, Micros]] = dict(self.block_spans or {})
        grouped = sum(self.group_sizes)
        if not grouped:
            return spans
        starts = np.cumsum([0, *self.group_sizes[:-1]])
        firsts = np.minimum.reduceat(self.times[:grouped], starts).tolist()
        lasts = np.maximum.reduceat(self.times[:grouped], starts).tolist()
        for device_pk, first, last in zip(self.group_devices, firsts, lasts, strict=True):
            known = spans.get(device_pk)
            spans[device_pk] = (first, last) if known is None else (min(known[0], first), max(known[1], last))
        return spans


MAX_READ_IDS = 50_000  # series ids remembered from queries (~15 MB at most)


class Store(ABC):
    """A database holding iotpipe's schema. Create with `iotpipe.store.open_store(url)`."""

    dialect = "base"
    # Whether a pipeline should write a full batch from a second thread while it decodes
    # the next: worth it when the engine's server does the work in another process.
    writes_behind = False

    def __init__(self, engine: Engine, url: str, reads: Engine | None = None) -> None:
        self.engine = engine
        # Where reads that change nothing connect: the same pool as `engine`, but on
        # PostgreSQL in autocommit (see PostgresStore.__init__).
        self.reads = reads if reads is not None else engine
        self.url = url
        # device_id -> (device pk, {metric: series id}); filled only after commits succeed.
        self._series_ids: dict[str, tuple[int, dict[str, int]]] = {}
        # (device_id, metric) -> series id, as queries found them: a series is never
        # deleted nor renumbered, so an id found once holds (a round trip less per history
        # request); at most MAX_READ_IDS, then forgotten at once.
        self._read_ids: dict[tuple[str, str], int] = {}
        self._device_infos: dict[str, DeviceInfo] = {}
        self._known_marks = KnownMarks()  # rollup marks in place, not written again

    # -- lifecycle --------------------------------------------------------------------
    def migrate(self, upto: str | None = None) -> list[str]:
        return migrations.apply(self.engine, upto)

    def pending_migrations(self) -> list[str]:
        with self.read_connection() as conn:
            return [m.name for m in migrations.pending(conn)]

    def close(self) -> None:
        self.engine.dispose()

    def describe(self) -> str:
        """Where the data is, for humans."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def write_transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def snapshot_transaction(self) -> Iterator[Connection]:
        """A write transaction whose reads all see one snapshot (PostgreSQL: REPEATABLE
        READ; SQLite's IMMEDIATE transaction already does). For work that reads several
        statements' worth of readings while compaction may move them between tiers."""
        with self.write_transaction() as conn:
            yield conn

    @contextmanager
    def read_snapshot(self) -> Iterator[Connection]:
        """A read-only transaction whose statements all see one snapshot (SQLite: a
        deferred transaction in WAL mode; PostgreSQL: REPEATABLE READ), for a read made of
        several statements while compaction may move readings between the tiers."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def read_connection(self, conn: Connection | None = None) -> Iterator[Connection]:
        """The caller's connection, or a fresh one for reads that change nothing (each
        statement sees the data committed when it starts, as in READ COMMITTED; a read
        made of several statements that must agree takes read_snapshot)."""
        if conn is not None:
            yield conn
            return
        with self.reads.connect() as fresh:
            yield fresh

    # -- the write path ---------------------------------------------------------------
    def write(self, batch: WriteBatch) -> WriteResult:
        """Commit a whole batch in one transaction; raises and commits nothing on failure:
        BatchRejected when the database refused the data itself, the driver's error when
        it could not be reached."""
        started = time.perf_counter()
        try:
            result = self._write(batch)
        except _DATA_ERRORS as exc:
            raise BatchRejected(first_line(exc)) from exc
        return dataclasses.replace(result, seconds=time.perf_counter() - started)

    def _write(self, batch: WriteBatch) -> WriteResult:
        with self.write_transaction() as conn:
            new_ids = self._resolve_series(conn, batch)
            columns = batch.columns if batch.columns is not None else self._reading_columns(batch, new_ids)
            columns = columns.in_series_order()
            stored = self._store_readings(conn, columns, batch.pack_before) if len(columns) else 0
            if len(columns):
                marked = self._mark_dirty_hours(conn, columns.mark_keys())
                self._touch_devices(conn, columns.device_spans())
            self._update_device_infos(conn, batch.infos)
            self._write_invalid(conn, batch.invalid, new_ids)
            self._write_dead_letters(conn, batch)
            self._write_watermarks(conn, batch.watermarks)
        if len(columns):
            self._known_marks.remember(*marked)  # committed: they are in place
        self._remember(new_ids, batch.infos)
        if not len(columns):
            return WriteResult(stored=stored, duplicates=batch.reading_count - stored)
        return WriteResult(
            stored=stored,
            duplicates=batch.reading_count - stored,
            series_ids=columns.series_ids,
            times=columns.times - self.time_offset,
            values=columns.values,
        )

    def _store_readings(self, conn: Connection, columns: ReadingColumns, pack_before: Micros | None) -> int:
        """Store the batch's readings once each, across both tiers; return how many were new.

        Readings older than `pack_before` (a day boundary) are packed straight away. Of the
        rest, those old enough to fall in a packed day are dropped if it holds them (a late
        reading that is in fact a replay); what remains goes into the hot table.
        """
        unix = columns.times - self.time_offset
        new = 0
        exclusive = False
        if pack_before is not None:
            old = unix < pack_before
            if old.any():
                compaction.lock_packing(conn, exclusive=True)
                exclusive = True
                extra = SeriesReadings(
                    columns.series_ids[old].astype(np.int64), unix[old], columns.values[old]
                )
                first, last = int(extra.times.min()), int(extra.times.max())
                new += compaction.pack(
                    conn,
                    sorted({int(s) for s in distinct(extra.series_ids)}),
                    first - first % MICROS_PER_DAY,
                    last - last % MICROS_PER_DAY + MICROS_PER_DAY,
                    extra,
                ).new
                columns, unix = columns.subset(~old), unix[~old]
        late = unix < now_micros() - compaction.LATE_AGE
        if late.any():
            if not exclusive:
                compaction.lock_packing(conn, exclusive=False)
            held = np.zeros(len(unix), dtype=bool)
            held[late] = compaction.already_packed(conn, columns.series_ids[late], unix[late])
            if held.any():
                columns = columns.subset(~held)
        if len(columns):
            new += self._insert_readings(conn, columns)
        return new

    # Added to a Unix-epoch µs time to get the engine's own representation (PostgreSQL:
    # µs since 2000-01-01, what its binary protocol carries). Whole hours, so an hour
    # boundary in one is an hour boundary in the other.
    time_offset: int = 0

    def prepare_columns(self, batch: WriteBatch) -> None:
        """Build the batch's columns now, if every series in it is already known.

        Called by a pipeline that writes behind, from the thread that decodes, so that
        the writer thread only talks to the database. A batch with a new series gets its
        columns in write(), once the series exist.
        """
        try:
            batch.columns = self._reading_columns(batch, {})
        except KeyError:
            batch.columns = None

    def _reading_columns(
        self, batch: WriteBatch, new_ids: dict[str, tuple[int, dict[str, int]]]
    ) -> ReadingColumns:
        """The batch's readings as columns of series ids, engine times and values.

        Duplicates inside the batch are left in: both engines' inserts skip a row whose
        (series_id, time) is already there, including one inserted earlier in the same
        statement, so deduplicating here would only cost time.
        """
        series_ids: list[int] = []
        times: list[Micros] = []
        values: list[float] = []
        group_devices: list[int] = []
        group_sizes: list[int] = []
        cache = self._series_ids
        for device_id, group in batch.groups:
            device_pk, ids = new_ids.get(device_id) or cache[device_id]
            metrics, group_times, group_values = zip(*group, strict=True)  # C-speed transpose
            series_ids += map(ids.__getitem__, metrics)
            times += group_times
            values += group_values
            group_devices.append(device_pk)
            group_sizes.append(len(group))
        columns = ReadingColumns(
            np.array(series_ids, dtype=np.int32),
            np.array(times, dtype=np.int64) + self.time_offset,
            np.array(values, dtype=np.float64),
            group_devices,
            group_sizes,
        )
        if batch.blocks:
            columns = self._with_blocks(columns, batch.blocks, batch.block_positions, new_ids)
        return columns

    def _with_blocks(
        self,
        columns: ReadingColumns,
        blocks: list[Any],
        positions: list[int],
        new_ids: dict[str, tuple[int, dict[str, int]]],
    ) -> ReadingColumns:
        """The grouped readings with the bulk-decoded blocks' put where they were fed
        (before group `positions[i]`): the first fed of two equal (series, time) is stored."""
        cache = self._series_ids
        spans = columns.device_spans()  # of the grouped readings, while they are one run each
        offsets = np.concatenate(([0], np.cumsum(columns.group_sizes))).astype(np.int64)
        series_parts: list[np.ndarray] = []
        time_parts: list[np.ndarray] = []
        value_parts: list[np.ndarray] = []
        taken = 0
        for block, position in zip(blocks, positions, strict=True):
            cut = int(offsets[position])
            series_parts.append(columns.series_ids[taken:cut])
            time_parts.append(columns.times[taken:cut])
            value_parts.append(columns.values[taken:cut])
            taken = cut
            pairs = block.pairs()
            inverse = np.asarray(pairs.inverse)
            # Each device's (pk, series ids) once, then each pair's id from its device's.
            entries = [new_ids.get(d) or cache[d] for d in pairs.devices]
            device_of_pair = np.asarray(pairs.device_of)
            ids = np.array(
                [entries[d][1][m] for d, (_, m) in zip(device_of_pair.tolist(), pairs.names, strict=True)],
                dtype=np.int32,
            )  # KeyError: a series not created yet (see prepare_columns)
            pks = np.array([pk for pk, _ in entries], dtype=np.int64)
            times = np.asarray(block.times, dtype=np.int64)
            series_parts.append(ids[inverse])
            time_parts.append(times + self.time_offset)
            value_parts.append(np.asarray(block.values, dtype=np.float64))
            device_of_reading = device_of_pair[inverse]
            firsts = np.full(len(pks), np.iinfo(np.int64).max)
            lasts = np.full(len(pks), np.iinfo(np.int64).min)
            np.minimum.at(firsts, device_of_reading, times)
            np.maximum.at(lasts, device_of_reading, times)
            for pk, first, last in zip(pks.tolist(), firsts.tolist(), lasts.tolist(), strict=True):
                first, last = first + self.time_offset, last + self.time_offset
                known = spans.get(pk)
                spans[pk] = (first, last) if known is None else (min(known[0], first), max(known[1], last))
        series_parts.append(columns.series_ids[taken:])
        time_parts.append(columns.times[taken:])
        value_parts.append(columns.values[taken:])
        return ReadingColumns(
            np.concatenate(series_parts),
            np.concatenate(time_parts),
            np.concatenate(value_parts),
            [],
            [],
            spans,
        )

    @abstractmethod
    def _insert_readings(self, conn: Connection, columns: ReadingColumns) -> int:
        """Insert rows (engine time), skipping (series_id, time) already stored; return how
        many were new. Each engine has its own bulk path."""

    def _mark_dirty_hours(self, conn: Connection, keys: np.ndarray) -> tuple[int, np.ndarray]:
        """Mark the hours for the rollup job, but those this store knows are marked
        (store/marks.py); return the epoch and the marks written, to remember on commit."""
        epoch = self._rollup_epoch(conn)
        fresh = self._known_marks.unknown(epoch, keys)
        if len(fresh):
            self._insert_dirty_hours(conn, mark_rows(fresh))
        return epoch, fresh

    def _rollup_epoch(self, conn: Connection) -> int:
        """How many times the rollup job has taken the marks over, read where no take can
        run before this transaction commits: SQLite's writer lock is already held."""
        return int(conn.exec_driver_sql("SELECT epoch FROM rollup_epoch").scalar_one())

    @abstractmethod
    def _insert_dirty_hours(self, conn: Connection, hours: list[tuple[int, Micros]]) -> None:
        """Record (series, hour) pairs, in engine time, for the rollup job (idempotent).
        Through the driver: this runs on every batch."""

    def known_metrics(self, device_ids: Collection[str]) -> dict[str, frozenset[str]]:
        """The metrics each device has series for (a new device: none): from the cache,
        else from the database, one query per IN_CHUNK devices (then cached, ids included,
        as after a commit). An import of a new fleet asks once, not once per device."""
        missing = [d for d in device_ids if d not in self._series_ids]
        for first in range(0, len(missing), IN_CHUNK):
            with self.read_connection() as conn:
                rows = conn.execute(
                    select(devices.c.device_id, devices.c.id, series.c.metric, series.c.id)
                    .join(series, series.c.device_pk == devices.c.id)
                    .where(devices.c.device_id.in_(missing[first : first + IN_CHUNK]))
                ).all()
            for device_id, device_pk, metric, series_id in rows:
                self._series_ids.setdefault(device_id, (device_pk, {}))[1][metric] = series_id
        return {
            d: frozenset(self._series_ids[d][1]) if d in self._series_ids else frozenset() for d in device_ids
        }

    def cached_series_id(self, device_id: str, metric: str) -> int | None:
        """The series id of a (device, metric) this store has written, without a query."""
        known = self._series_ids.get(device_id)
        return known[1].get(metric) if known else None

    @abstractmethod
    def _touch_devices(self, conn: Connection, spans: dict[int, tuple[Micros, Micros]]) -> None:
        """Widen each device's first_seen/last_seen (engine time) to cover the batch, in
        one statement per engine."""

    def _resolve_series(self, conn: Connection, batch: WriteBatch) -> dict[str, tuple[int, dict[str, int]]]:
        """Ids for devices and series the cache lacks, creating them; not cached until commit."""
        missing: dict[str, set[str]] = {}
        for device_id, group in batch.groups:
            known = self._series_ids.get(device_id)
            for metric, _, _ in group:
                if known is None or metric not in known[1]:
                    missing.setdefault(device_id, set()).add(metric)
        for device_id, _, _ in batch.invalid:
            if device_id not in self._series_ids:
                missing.setdefault(device_id, set())
        for block in batch.blocks:  # device by device: fewer lookups than pair by pair
            for device_id, metrics in block.series().items():
                known = self._series_ids.get(device_id)
                if known is None:
                    missing.setdefault(device_id, set()).update(metrics)
                elif not metrics <= known[1].keys():
                    missing.setdefault(device_id, set()).update(m for m in metrics if m not in known[1])
        if not missing:
            return {}
        device_pks = self._ensure_devices(conn, missing.keys(), batch.infos)
        now = now_micros()
        wanted = [
            {"device_pk": device_pks[d], "metric": m, "unit": batch.units.get((d, m)), "created_at": now}
            for d, metrics in missing.items()
            for m in sorted(metrics)
        ]
        if wanted:
            self._insert_series(conn, wanted)
        resolved: dict[str, tuple[int, dict[str, int]]] = {}
        by_pk = {pk: d for d, pk in device_pks.items()}
        dialect = conn.dialect.name
        rows = conn.execute(
            _typed(f"SELECT id, device_pk, metric FROM series WHERE {one_of(dialect, 'device_pk')}"),
            {"ids": integers_value(dialect, list(by_pk))},
        )
        for series_id, device_pk, metric in rows:
            device_id = by_pk[device_pk]
            resolved.setdefault(device_id, (device_pk, {}))[1][metric] = series_id
        for device_id in missing:
            resolved.setdefault(device_id, (device_pks[device_id], {}))
        return resolved

    def _insert_series(self, conn: Connection, wanted: list[dict[str, Any]]) -> None:
        """Create these series (device_pk, metric, unit, created_at), skipping existing ones."""
        conn.execute(self._insert_ignore(series, ["device_pk", "metric"]), wanted)

    def _ensure_devices(
        self, conn: Connection, device_ids: Any, infos: dict[str, DeviceInfo]
    ) -> dict[str, int]:
        ids = list(device_ids)
        now = now_micros()
        self._insert_devices(
            conn,
            [{"device_id": d, "created_at": now, **_info_columns(infos.get(d), keep_none=True)} for d in ids],
        )
        rows = conn.execute(select(devices.c.device_id, devices.c.id).where(devices.c.device_id.in_(ids)))
        return {device_id: pk for device_id, pk in rows}

    def _insert_devices(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Create these devices (device_id, created_at and every info column), skipping
        existing ones."""
        conn.execute(self._insert_ignore(devices, ["device_id"]), rows)

    # The engine's INSERT construct, which knows ON CONFLICT (set by each engine).
    dialect_insert: Callable[[Table], Any]

    def _insert_ignore(self, table: Table, conflict_columns: list[str]) -> Any:
        return self.dialect_insert(table).on_conflict_do_nothing(index_elements=conflict_columns)

    def _update_device_infos(self, conn: Connection, infos: dict[str, DeviceInfo]) -> None:
        for device_id, info in infos.items():
            if self._device_infos.get(device_id) == info:
                continue  # unchanged since we last wrote it: the common case
            values = _info_columns(info)
            if info.attributes is not None:
                # Merge, so that one source's attributes (a channel's tags) do not erase
                # another's (its field labels); a key set to None is removed.
                current = conn.scalar(select(devices.c.attributes).where(devices.c.device_id == device_id))
                merged = {**(current or {}), **info.attributes}
                values["attributes"] = {k: v for k, v in merged.items() if v is not None}
            if values:
                conn.execute(update(devices).where(devices.c.device_id == device_id).values(**values))

    def _write_invalid(
        self,
        conn: Connection,
        invalid: dict[tuple[str, str, Micros], str],
        new_ids: dict[str, tuple[int, dict[str, int]]],
    ) -> None:
        """Record each invalid value once per (device, metric, time), like readings: a
        redelivered or re-imported message does not count its invalid values twice."""
        if not invalid:
            return
        rows = [
            {
                "device_pk": (new_ids.get(device_id) or self._series_ids[device_id])[0],
                "metric": metric,
                "time": at,
                "reason": reason,
            }
            for (device_id, metric, at), reason in invalid.items()
        ]
        conn.execute(self._insert_ignore(invalid_readings, ["device_pk", "metric", "time"]), rows)

    def _write_dead_letters(self, conn: Connection, batch: WriteBatch) -> None:
        now = now_micros()
        fresh = []
        for letter in batch.dead_letters:
            raw = letter.raw
            if raw.dead_letter_id is not None:  # a replay that failed again: update in place
                # `attempts` counts arrivals (what the ingest summaries add up to); a replay
                # is not one, so it keeps its count and gets the new reason and time.
                conn.execute(
                    update(dead_letters)
                    .where(dead_letters.c.id == raw.dead_letter_id)
                    .values(reason=storable_text(letter.reason), last_attempt_at=now)
                )
                continue
            fresh.append(
                {
                    "received_at": raw.received_at,
                    "source": raw.source,
                    "origin": storable_text(raw.origin),
                    "format": raw.format,
                    "device_hint": storable_text(raw.device_id),
                    "header": [storable_text(h) for h in raw.header] if raw.header is not None else None,
                    "payload": raw.payload,
                    "reason": storable_text(letter.reason),
                    "fingerprint": dead_letter_fingerprint(raw),
                    "attempts": 1,
                    "last_attempt_at": now,
                }
            )
        if fresh:
            statement = self.dialect_insert(dead_letters)
            statement = statement.on_conflict_do_update(
                index_elements=["fingerprint"],
                set_={
                    "attempts": dead_letters.c.attempts + 1,
                    "last_attempt_at": now,
                    "reason": statement.excluded.reason,
                },
            )
            conn.execute(statement, fresh)
        if batch.replayed:
            conn.execute(delete(dead_letters).where(dead_letters.c.id.in_(batch.replayed)))

    def _write_watermarks(self, conn: Connection, marks: dict[tuple[str, str], str]) -> None:
        now = now_micros()
        for (source, key), value in marks.items():
            where = (ingest_watermarks.c.source == source, ingest_watermarks.c.key == key)
            if not conn.execute(
                update(ingest_watermarks).where(*where).values(value=value, updated_at=now)
            ).rowcount:
                conn.execute(
                    insert(ingest_watermarks).values(source=source, key=key, value=value, updated_at=now)
                )

    def _remember(self, new_ids: dict[str, tuple[int, dict[str, int]]], infos: dict[str, DeviceInfo]) -> None:
        for device_id, (device_pk, metrics) in new_ids.items():
            cached = self._series_ids.setdefault(device_id, (device_pk, {}))
            cached[1].update(metrics)
        self._device_infos.update(infos)

    # -- reads ------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self.read_connection() as conn:
            base = self._counts(conn)
            hot = base["readings"]  # rows of the hot table
            counts: dict[str, Any] = {**base, "dead_letters_over_limits": self._limit_counts(conn)}
            packed = int(conn.scalar(select(func.sum(packed_readings.c.count))) or 0)
            sizes = self._tier_bytes(conn)
        counts["readings"] = hot + packed
        return {**counts, "tiers": {"hot": _tier(hot, sizes[0]), "packed": _tier(packed, sizes[1])}}

    @abstractmethod
    def _tier_bytes(self, conn: Connection) -> tuple[int | None, int | None]:
        """Bytes on disk of the hot and the packed tier (tables and their indexes), or
        None where the engine cannot tell."""

    def _limit_counts(self, conn: Connection) -> dict[str, int]:
        """Messages dead-lettered for each limit (their reasons name the setting), in one scan."""
        names = [f.name for f in dataclasses.fields(Limits) if f.init]
        columns = [
            func.coalesce(
                func.sum(
                    case(
                        (dead_letters.c.reason.contains(f"[limits] {name} "), dead_letters.c.attempts),
                        else_=0,
                    )
                ),
                0,
            )
            for name in names
        ]
        values = conn.execute(select(*columns)).one()
        return {name: int(value) for name, value in zip(names, values, strict=True)}

    def _counts(self, conn: Connection) -> dict[str, int]:
        return {
            "devices": conn.scalar(select(func.count()).select_from(devices)) or 0,
            "series": conn.scalar(select(func.count()).select_from(series)) or 0,
            "readings": conn.scalar(select(func.count()).select_from(readings)) or 0,
            # Distinct bad messages (source, origin, payload), and how many times they
            # were received: the second is what ingest summaries count as dead-lettered.
            "dead_letters": conn.scalar(select(func.count()).select_from(dead_letters)) or 0,
            "dead_letter_messages": int(
                conn.scalar(select(func.coalesce(func.sum(dead_letters.c.attempts), 0))) or 0
            ),
            "invalid_values": conn.scalar(select(func.count()).select_from(invalid_readings)) or 0,
        }

    def dead_letter_count(self) -> int:
        with self.read_connection() as conn:
            return int(conn.scalar(select(func.count()).select_from(dead_letters)) or 0)

    def watermark(self, source: str, key: str) -> str | None:
        with self.read_connection() as conn:
            return conn.scalar(
                select(ingest_watermarks.c.value).where(
                    ingest_watermarks.c.source == source, ingest_watermarks.c.key == key
                )
            )

    def dead_letter_rows(self, limit: int | None = None, after_id: int = 0) -> list[dict[str, Any]]:
        query = select(dead_letters).where(dead_letters.c.id > after_id).order_by(dead_letters.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self.read_connection() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def device_rows(self) -> list[dict[str, Any]]:
        with self.read_connection() as conn:
            return [dict(row._mapping) for row in conn.execute(select(devices).order_by(devices.c.device_id))]

    def raw_readings(
        self,
        device_id: str,
        metric: str,
        start: Micros | None = None,
        end: Micros | None = None,
        limit: int | None = None,
    ) -> list[tuple[Micros, float]]:
        """One series' readings in [start, end), oldest first (the first `limit` of them),
        from both tiers."""
        series_id = self.series_id(device_id, metric)
        if series_id is None:
            return []
        with self.read_connection() as conn:
            if limit is None:
                times, values = self.read_series(series_id, start, end, conn)
            else:
                times, values = tiers.edge_readings(conn, series_id, limit, start, end, newest=False)
        return list(zip(times.tolist(), values.tolist(), strict=True))

    # -- reads through both tiers (hot and packed): the only way to raw readings ---------
    def read_series(
        self,
        series_id: int,
        start: Micros | None = None,
        end: Micros | None = None,
        conn: Connection | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One series' readings in [start, end) as (Unix µs int64, float64) arrays, oldest first."""
        with self.read_connection(conn) as c:
            found = tiers.read_range(c, [series_id], start, end)
        return found.times, found.values

    def read_range(
        self,
        series_ids: list[int],
        start: Micros | None = None,
        end: Micros | None = None,
        conn: Connection | None = None,
    ) -> SeriesReadings:
        """Several series' readings in [start, end), by series then time."""
        with self.read_connection(conn) as c:
            return tiers.read_range(c, series_ids, start, end)

    def last_readings(
        self,
        series_id: int,
        limit: int,
        before: Micros | None = None,
        conn: Connection | None = None,
        after: Micros | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A series' `limit` newest readings (older than `before` and newer than `after`,
        if given), newest first."""
        start = None if after is None else after + 1
        with self.read_connection(conn) as c:
            return tiers.edge_readings(c, series_id, limit, start, before, newest=True)

    def series_created_before(
        self, series_ids: Sequence[int], before: Micros, conn: Connection | None = None
    ) -> list[int]:
        """Which of these series were created before `before`, in one query for any number."""
        if not len(series_ids):
            return []
        with self.read_connection(conn) as c:
            dialect = c.dialect.name
            return list(
                c.scalars(
                    _typed(
                        f"SELECT id FROM series WHERE {one_of(dialect, 'id')} AND created_at < :before",
                        times=("before",),
                    ),
                    {"ids": integers_value(dialect, series_ids), "before": before},
                )
            )

    def series_span(self, series_id: int, conn: Connection | None = None) -> tuple[Micros, Micros] | None:
        """A series' first and last reading time, or None if it has no reading."""
        with self.read_connection(conn) as c:
            return tiers.series_span(c, series_id)

    def hour_partials(self, conn: Connection, pairs: list[tuple[int, Micros]]) -> HourPartials:
        """Count, mean, M2, min, max, first and last reading of each (series, hour) that
        holds readings, for the rollups; inside a `snapshot_transaction`."""
        return tiers.hour_partials(conn, pairs)

    # -- the packed tier ---------------------------------------------------------------
    def compact(self, before: Micros, step_readings: int, deadline: float | None = None) -> dict[str, Any]:
        """Pack every hot reading older than `before` (a UTC day boundary) into its
        series-day, one short transaction per step of about `step_readings` readings.
        Stops early (to go on at the next call) once time.monotonic() passes `deadline`."""
        import time

        with self.read_connection() as conn:
            queue = compaction.series_to_pack(conn, before)
        done = {"series": 0, "days": 0, "readings": 0, "steps": 0, "finished": True}
        packed_series: set[int] = set()
        while queue:
            if deadline is not None and time.monotonic() > deadline:
                done["finished"] = False
                break
            with self.write_transaction() as conn:
                step = compaction.pack_step(conn, queue, before, step_readings)
            done["steps"] += 1
            done["days"] += step.days
            done["readings"] += step.moved
            packed_series |= step.series
        done["series"] = len(packed_series)
        return done

    def series_names(self) -> dict[int, tuple[str, str]]:
        """Every series: its id and (device_id, metric)."""
        query = select(series.c.id, devices.c.device_id, series.c.metric).join(
            devices, devices.c.id == series.c.device_pk
        )
        with self.read_connection() as conn:
            return {sid: (device_id, metric) for sid, device_id, metric in conn.execute(query)}

    def readings_since(
        self, series_ids: Sequence[int], start: Micros, limit: int
    ) -> list[tuple[int, Micros, float]]:
        """The newest `limit` readings of these series at or after `start`, as
        (series_id, time, value), oldest first, by series at equal times (the live feed's
        backfill)."""
        if not series_ids:
            return []
        query = (
            select(readings.c.series_id, readings.c.time, readings.c.value)
            .where(readings.c.series_id.in_(list(series_ids)), readings.c.time >= start)
            .order_by(readings.c.time.desc(), readings.c.series_id.desc())
            .limit(limit)
        )
        with self.read_snapshot() as conn:
            if tiers.packed_end(conn, series_ids, start) is not None:
                # Part of the range is packed (a backfill reaching past the hot window):
                # both tiers, the newest `limit` by time.
                found = tiers.read_range(conn, series_ids, start, None)
                newest = np.lexsort((found.series_ids, found.times))[-limit:]  # by time, then series
                return list(
                    zip(
                        found.series_ids[newest].tolist(),
                        found.times[newest].tolist(),
                        found.values[newest].tolist(),
                        strict=True,
                    )
                )
            rows = [(sid, at, value) for sid, at, value in conn.execute(query)]
        rows.reverse()
        return rows

    def reading_count(self, device_id: str, metric: str, start: Micros, end: Micros) -> int:
        """How many readings one series holds in [start, end), in both tiers."""
        with self.read_connection() as conn:
            series_id = _series_id(conn, device_id, metric)
            if series_id is None:
                return 0
            return tiers.count_range(conn, series_id, start, end)

    def reading_buckets(
        self,
        device_id: str,
        metric: str,
        start: Micros,
        end: Micros,
        width: Micros,
        origin: Micros | None = None,
    ) -> list[tuple[Micros, int, float, float, float]]:
        """One series' readings in [start, end) aggregated into buckets of `width` µs
        counted from `origin` (default `start`; at most `start`): (bucket_start, count,
        avg, min, max) of each bucket that has readings, oldest first. Computed by the
        database in one range scan of the hot table; the buckets up to the end of the
        newest packed day in the range, from both tiers' decoded readings
        (store/tiers.py: buckets)."""
        if width < 1:
            raise ValueError("bucket width must be at least 1 µs")
        origin = start if origin is None else origin
        if origin > start:
            raise ValueError("buckets are counted from a time at or before the range's start")
        with self.read_snapshot() as conn:
            series_id = _series_id(conn, device_id, metric)
            if series_id is None:
                return []
            found: list[tuple[Micros, int, float, float, float]] = []
            hot_from = start
            packed_until = tiers.packed_end(conn, [series_id], start, end)
            if packed_until is not None:
                hot_from = min(end, origin + -(-(packed_until - origin) // width) * width)  # whole buckets
                found = tiers.buckets(conn, series_id, origin, start, hot_from, width)
            if hot_from >= end:
                return found
            statement = text(_BUCKETS_SQL[self.dialect if self.dialect == "postgresql" else "sqlite"])
            statement = statement.bindparams(
                bindparam("origin", type_=UtcMicros()),
                bindparam("start", type_=UtcMicros()),
                bindparam("end", type_=UtcMicros()),
            )
            rows = conn.execute(
                statement, {"sid": series_id, "origin": origin, "start": hot_from, "end": end, "w": width}
            )
            return found + [
                (origin + int(col) * width, int(n), float(avg), lo, hi) for col, n, avg, lo, hi in rows
            ]

    def latest_readings(self, device_id: str) -> list[tuple[str, str | None, Micros, float]]:
        """The newest reading of each metric of a device: (metric, unit, time, value), by
        metric. One statement: an index probe at the end of each series' hot rows and of
        its packed days; a series whose newest packed day ends after its newest hot
        reading (silent for longer than the hot window) is read again through both tiers."""
        statement = _LATEST[self.dialect if self.dialect == "postgresql" else "sqlite"]
        found: list[tuple[str, str | None, Micros, float]] = []
        with self.read_connection() as conn:
            for sid, m, unit, at, value, packed_last in driver.rows(conn, statement, (device_id,)):
                if packed_last is not None and (at is None or packed_last > at):
                    times, values = tiers.last_readings(conn, sid, 1)
                    at, value = (int(times[0]), float(values[0])) if len(times) else (None, None)
                if at is not None:
                    found.append((m, unit, at, value))
        return found

    def series_id(self, device_id: str, metric: str) -> int | None:
        found = self.cached_series_id(device_id, metric)
        if found is None:
            found = self._read_ids.get((device_id, metric))
        if found is not None:
            return found
        with self.read_connection() as conn:
            found = _series_id(conn, device_id, metric)
        if found is not None:
            if len(self._read_ids) >= MAX_READ_IDS:
                self._read_ids = {}
            self._read_ids[(device_id, metric)] = found
        return found

    def device_entries(
        self,
        device_id: str,
        metrics: list[str],
        start: Micros | None = None,
        end: Micros | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[tuple[Micros, dict[str, float]]]:
        """A device's readings of `metrics` as entries, one per distinct time in [start,
        end) with the value of each metric read then, oldest first. `limit` keeps the
        first entries, or the newest ones when `newest` (a ThingSpeak feed's `results`).
        From both tiers: with a limit, each series' `limit` readings at that edge (an
        entry among the first `limit` is among its every series' first `limit`)."""
        with self.read_snapshot() as conn:
            ids = _series_ids(conn, device_id, metrics)
            if not ids:
                return []
            if limit is None:
                found = tiers.read_range(conn, list(ids), start, end)
                sids, times, values = found.series_ids, found.times, found.values
            else:
                edges = {sid: tiers.edge_readings(conn, sid, limit, start, end, newest) for sid in ids}
                sids = np.concatenate([np.full(len(t), sid, np.int64) for sid, (t, _) in edges.items()])
                times = np.concatenate([t for t, _ in edges.values()])
                values = np.concatenate([v for _, v in edges.values()])
        distinct = np.unique(times)  # sorted
        if limit is not None:
            distinct = distinct[-limit:] if newest else distinct[:limit]
        entries: dict[Micros, dict[str, float]] = {t: {} for t in distinct.tolist()}
        for series_id, at, value in zip(sids.tolist(), times.tolist(), values.tolist(), strict=True):
            entry = entries.get(at)
            if entry is not None:
                entry[ids[series_id]] = value
        return list(entries.items())

    def count_entries(self, device_id: str, metrics: list[str], before: Micros | None = None) -> int:
        """How many distinct reading times a device's `metrics` have (before `before`), in
        both tiers: up to the end of the newest packed day decoded a window at a time, after
        it counted by the database."""
        with self.read_snapshot() as conn:
            ids = _series_ids(conn, device_id, metrics)
            if not ids:
                return 0
            if len(ids) == 1:
                return tiers.count_range(conn, next(iter(ids)), None, before)
            total = 0
            query = select(func.count(readings.c.time.distinct())).where(readings.c.series_id.in_(list(ids)))
            packed_until = tiers.packed_end(conn, list(ids), None, before)
            if packed_until is not None:
                spans = [span for sid in ids if (span := tiers.series_span(conn, sid)) is not None]
                upto = packed_until if before is None else min(packed_until, before)
                for window in tiers.read_windows(conn, list(ids), min(s[0] for s in spans), upto):
                    total += len(np.unique(window.times))  # windows split time: no time counted twice
                query = query.where(readings.c.time >= upto)
            if before is not None:
                query = query.where(readings.c.time < before)
            return total + int(conn.scalar(query) or 0)


# A bucket's column number: whole widths since the origin (every time is ≥ the origin).
_BUCKETS_SQL = {
    "sqlite": (
        "SELECT (time - :origin) / :w AS col, count(*), avg(value), min(value), max(value) "
        "FROM readings WHERE series_id = :sid AND time >= :start AND time < :end "
        "GROUP BY col ORDER BY col"
    ),
    "postgresql": (
        "SELECT floor(extract(epoch FROM (time - :origin)) * 1000000 / :w)::bigint AS col, "
        "count(*), avg(value), min(value), max(value) "
        "FROM readings WHERE series_id = :sid AND time >= :start AND time < :end "
        "GROUP BY col ORDER BY col"
    ),
}


def _in_range(query: Any, start: Micros | None, end: Micros | None) -> Any:
    if start is not None:
        query = query.where(readings.c.time >= start)
    if end is not None:
        query = query.where(readings.c.time < end)
    return query


# Hot reads (every API request for a device makes one): plain SQL, compiled once.
# The last reading time of a series' newest packed day (the primary key's last entry).
_PACKED_LAST = (
    "(SELECT p.last_time FROM packed_readings p WHERE p.series_id = s.id ORDER BY p.day_start DESC LIMIT 1)"
)
_SERIES_ID = text(
    "SELECT s.id FROM series s JOIN devices d ON d.id = s.device_pk WHERE d.device_id = :device AND s.metric = :metric"
)
_LATEST = {  # driver SQL (store/driver.py)
    "sqlite": (
        "SELECT s.id, s.metric, s.unit, "
        "(SELECT time FROM readings r WHERE r.series_id = s.id ORDER BY time DESC LIMIT 1), "
        "(SELECT value FROM readings r WHERE r.series_id = s.id ORDER BY time DESC LIMIT 1), "
        f"{_PACKED_LAST} "
        "FROM series s JOIN devices d ON d.id = s.device_pk WHERE d.device_id = ? ORDER BY s.metric"
    ),
    "postgresql": (
        f"SELECT s.id, s.metric, s.unit, r.time, r.value, {_PACKED_LAST} "
        "FROM series s JOIN devices d ON d.id = s.device_pk "
        "LEFT JOIN LATERAL (SELECT time, value FROM readings WHERE series_id = s.id ORDER BY time DESC LIMIT 1) r "
        "ON true WHERE d.device_id = %s ORDER BY s.metric"
    ),
}


def _series_id(conn: Connection, device_id: str, metric: str) -> int | None:
    found = conn.execute(_SERIES_ID, {"device": device_id, "metric": metric}).scalar()
    return int(found) if found is not None else None


def _series_ids(conn: Connection, device_id: str, metrics: list[str]) -> dict[int, str]:
    """{series id: metric} of a device's series among `metrics`."""
    rows = conn.execute(
        select(series.c.id, series.c.metric)
        .join(devices, devices.c.id == series.c.device_pk)
        .where(devices.c.device_id == device_id, series.c.metric.in_(metrics))
    )
    return {series_id: metric for series_id, metric in rows}


_INFO_COLUMNS = ("type", "name", "firmware", "latitude", "longitude", "elevation", "attributes")


def _tier(count: int, size: int | None) -> dict[str, Any]:
    return {
        "readings": count,
        "bytes": size,
        "bytes_per_reading": round(size / count, 2) if size is not None and count else None,
    }


def _info_columns(info: DeviceInfo | None, keep_none: bool = False) -> dict[str, Any]:
    """The device columns an info says something about (None fields are left alone).

    keep_none gives every column, for inserts that must share one set of keys."""
    if info is None:
        return dict.fromkeys(_INFO_COLUMNS) if keep_none else {}
    values = {
        "type": info.type,
        "name": info.name,
        "firmware": info.firmware,
        "latitude": info.latitude,
        "longitude": info.longitude,
        "elevation": info.elevation,
        "attributes": info.attributes,
    }
    return values if keep_none else {k: v for k, v in values.items() if v is not None}


def dead_letter_fingerprint(raw: RawMessage) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (raw.source.encode(), raw.origin.encode(), raw.payload):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def storable_text(text: str | None) -> str | None:
    """Text we record about a message (where it came from, why it was refused) made
    storable on every engine: PostgreSQL's text cannot hold NUL, and lone surrogates
    cannot be encoded at all. Readings never get here with such text: validation
    refuses them first; this is for the dead letters that say so."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
