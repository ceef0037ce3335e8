"""The streaming detector inside ingest: scores each committed batch and records its episodes.

The scoring itself is `iotpipe.analytics.detector` (its update compiled by numba); this
module connects it to a store: it flattens the committed readings, rebuilds the state of
series it has not seen in this process from their checkpoint and stored past, and writes
episode openings and closings (method 'streaming', with score and reason) to the
anomalies table and the series' checkpoints to `detector_state`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Sequence

import numpy as np
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError

from iotpipe.analytics.detector import Checkpoint, Episode, History, StreamingDetector, StreamingParams
from iotpipe.config import Settings, StreamingDetectorSettings
from iotpipe.model import Micros, WriteBatch, WriteResult, now_micros
from iotpipe.store import Store
from iotpipe.store.schema import anomalies, detector_state

__all__ = [
    "Episode",
    "History",
    "StreamingAnomalies",
    "StreamingDetector",
    "StreamingParams",
    "anomaly_observers",
]

log = logging.getLogger(__name__)

METHOD = "streaming"


def params_from_settings(settings: StreamingDetectorSettings) -> StreamingParams:
    return StreamingParams(
        threshold=settings.threshold,
        hysteresis=settings.hysteresis,
        calm=settings.calm,
        refractory_seconds=settings.refractory_seconds,
        warmup=settings.warmup,
        level_seconds=settings.level_seconds,
        season_seconds=settings.season_seconds,
        range_seconds=settings.range_seconds,
        stuck_min=settings.stuck_min,
        stuck_chance=settings.stuck_chance,
        max_series=settings.max_series,
        rebuild_readings=settings.rebuild_readings,
    )


class StreamingAnomalies:
    """The pipeline observer: scores each committed batch and records episodes.

    One per store (see `anomaly_observers`), shared by every pipeline writing to it, so
    that a series has one state whichever source its readings come through. It never
    raises into the pipeline: a failure is logged, and unwritten episodes are retried
    with the next batch.
    """

    MAX_UNWRITTEN = 10_000

    def __init__(self, store: Store, params: StreamingParams) -> None:
        self._store = weakref.ref(store)  # the store's registry holds us; don't hold it back
        self.detector = StreamingDetector(params, loader=self._load_history)
        self._started = now_micros()
        self._series_ids: dict[str, dict[str, int]] = {}
        self._unwritten: list[Episode] = []
        self._unsaved: dict[int, Checkpoint] = {}  # series id -> its latest checkpoint
        self._lock = threading.Lock()
        self.seconds = 0.0  # spent on the batches' writer thread, writes included
        self.readings = 0  # scored or seen as late

    def warm_in_background(self) -> None:
        """Load the detector's compiled code on a thread of its own, for a process that
        serves (`run`, `serve`): its first batch, an HTTP request waiting for its answer,
        would otherwise wait for it (~0.5 s). Not for an import: one busy thread, which a
        second one only slows (docs/performance.md)."""
        # Not a daemon: a process that exits at once waits for it rather than leaving
        # LLVM half-way through loading code at interpreter shutdown.
        threading.Thread(target=self._warm, name="iotpipe-detector-warm").start()

    def _warm(self) -> None:
        try:
            self.detector.warm()
        except Exception:  # the first batch meets the same failure, and reports it
            log.debug("could not load the detector's compiled code ahead of the first batch", exc_info=True)

    def forget(self) -> None:
        """Rebuild every series from the store when next seen: called when this process
        takes over series another one was scoring (a NATS partition changing hands)."""
        with self._lock:
            self.detector.forget_all()

    @property
    def store(self) -> Store:
        store = self._store()
        if store is None:
            raise RuntimeError("the store of this detector was closed and collected")
        return store

    def __call__(self, batch: WriteBatch, result: WriteResult) -> None:
        if not batch.groups and not batch.blocks:
            return
        self.score(*self._readings(batch, result))

    def score(self, series_ids: np.ndarray, times: np.ndarray, values: np.ndarray) -> None:
        """Score committed readings (series ids, µs, values), in the order they committed:
        a batch's, or one another API process committed (app/workers.py)."""
        with self._lock:
            started = time.perf_counter()
            try:
                episodes = self.detector.process(series_ids, times, values)
            except Exception:  # anomaly detection must never stop ingest
                log.exception("streaming anomaly detection failed on a batch; its readings are stored")
                return
            self._unwritten.extend(episodes)
            for checkpoint in self.detector.checkpoints():
                self._unsaved[checkpoint.series_id] = checkpoint
            if self._unwritten or self._unsaved:
                self._write()
            self.seconds += time.perf_counter() - started
            self.readings += len(series_ids)

    def _readings(self, batch: WriteBatch, result: WriteResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's readings as columns: the store hands them over resolved to series
        with its result, which spares a second pass over the batch (~120 ns a reading)."""
        if result.series_ids is not None and len(result.series_ids) == batch.reading_count:
            return result.series_ids.astype(np.int64), result.times, result.values
        return self._flatten(batch)

    def _flatten(self, batch: WriteBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's readings when the store's rows are not at hand."""
        sids: list[int] = []
        times: list[int] = []
        values: list[float] = []
        add_sid, add_time, add_value = sids.append, times.append, values.append
        for device_id, group in batch.groups:
            ids = self._series_ids.get(device_id)
            if ids is None:
                ids = self._series_ids[device_id] = {}
            for metric, at, value in group:
                sid = ids.get(metric)
                if sid is None:
                    sid = ids[metric] = self._series_id(device_id, metric)
                add_sid(sid)
                add_time(at)
                add_value(value)
        return np.array(sids, dtype=np.int64), np.array(times, dtype=np.int64), np.array(values)

    def _series_id(self, device_id: str, metric: str) -> int:
        sid = self.store.cached_series_id(device_id, metric)
        if sid is None:  # the store caches every series it wrote; a batch we see was written
            raise RuntimeError(f"no series id for {device_id}/{metric} after its batch committed")
        return sid

    def _write(self) -> None:
        episodes, now = self._unwritten, now_micros()
        opened = [
            {
                "series_id": e.series_id,
                "time": e.time,
                "end_time": e.end_time,
                "value": e.value,
                "score": e.score,
                "method": METHOD,
                "reason": e.reason,
                "detected_at": now,
            }
            for e in episodes
            if e.opened
        ]
        closed = [
            {"b_series": e.series_id, "b_time": e.time, "b_end": e.end_time, "b_score": e.score}
            for e in episodes
            if not e.opened
        ]
        saved = [
            {"series_id": c.series_id, "layout": layout, "last_time": c.last_time, "state": c.state}
            for layout in [self.detector.layout]
            for c in self._unsaved.values()
        ]
        store = self.store
        try:
            with store.write_transaction() as conn:
                if saved:
                    statement = store.dialect_insert(detector_state)
                    conn.execute(
                        statement.on_conflict_do_update(
                            index_elements=["series_id"],
                            set_={
                                "layout": statement.excluded.layout,
                                "last_time": statement.excluded.last_time,
                                "state": statement.excluded.state,
                            },
                        ),
                        saved,
                    )
                if opened:
                    statement = store.dialect_insert(anomalies).on_conflict_do_nothing(
                        index_elements=["series_id", "time", "method"]
                    )
                    conn.execute(statement, opened)
                if closed:
                    conn.execute(_CLOSE_EPISODE, closed)
        except SQLAlchemyError as exc:
            kept = len(episodes) - self.MAX_UNWRITTEN
            if kept > 0:
                del episodes[:kept]
            log.warning("could not record %d anomaly episode change(s), will retry: %s", len(episodes), exc)
            return
        self._unwritten = []
        self._unsaved = {}

    def _load_history(self, series_ids: np.ndarray, first_times: np.ndarray) -> History:
        """Each series' checkpoint and its readings since (before its batch), else its last
        `rebuild_readings` readings; and its open episode.

        A series created after this detector started has no past it did not see itself,
        unless it was evicted since; skipping those keeps a fresh import from asking the
        store about thousands of new series.
        """
        wanted = dict(zip(series_ids.tolist(), first_times.tolist(), strict=True))
        depth = self.detector.params.rebuild_readings
        sids: list[int] = []
        times: list[int] = []
        values: list[float] = []
        open_episodes: dict[int, tuple[Micros, float]] = {}
        saved: dict[int, tuple[Micros, bytes]] = {}
        with self.store.read_connection() as conn:
            if not self.detector.evicted_any:
                older = self.store.series_created_before(list(wanted), self._started, conn)
                wanted = {sid: wanted[sid] for sid in older}
            for chunk in _chunks(list(wanted)):
                for sid, last_time, state in conn.execute(
                    select(
                        detector_state.c.series_id, detector_state.c.last_time, detector_state.c.state
                    ).where(
                        detector_state.c.series_id.in_(chunk), detector_state.c.layout == self.detector.layout
                    )
                ):
                    saved[sid] = (last_time, bytes(state))
            for sid, before in wanted.items():
                after = saved[sid][0] if sid in saved else None
                past_times, past_values = self.store.last_readings(sid, depth, before, conn, after=after)
                if sid in saved and len(past_times) == depth:
                    del saved[sid]  # more since the checkpoint than a replay takes: warm up on these
                sids.extend([sid] * len(past_times))
                times.extend(past_times.tolist())
                values.extend(past_values.tolist())
            for chunk in _chunks(list(wanted)):
                for sid, first, score in conn.execute(
                    select(anomalies.c.series_id, anomalies.c.time, anomalies.c.score).where(
                        anomalies.c.series_id.in_(chunk),
                        anomalies.c.method == METHOD,
                        anomalies.c.end_time.is_(None),
                    )
                ):
                    open_episodes[sid] = (first, score)
        return History(
            np.array(sids, dtype=np.int64),
            np.array(times, dtype=np.int64),
            np.array(values),
            open_episodes,
            {sid: state for sid, (_, state) in saved.items()},
        )


_CLOSE_EPISODE = (
    update(anomalies)
    .where(
        anomalies.c.series_id == bindparam("b_series"),
        anomalies.c.time == bindparam("b_time"),
        anomalies.c.method == METHOD,
    )
    .values(end_time=bindparam("b_end"), score=bindparam("b_score"))
)


def _chunks(items: Sequence[int], size: int = 500) -> list[Sequence[int]]:
    """Keep IN lists under SQLite's bound-parameter limit."""
    return [items[i : i + size] for i in range(0, len(items), size)]


_observers: weakref.WeakKeyDictionary[Store, StreamingAnomalies] = weakref.WeakKeyDictionary()
_observers_lock = threading.Lock()


def anomaly_observers(store: Store, settings: Settings) -> list[StreamingAnomalies]:
    """What a pipeline writing to `store` runs after each commit: the store's streaming
    detector (the same one for every pipeline of the process), unless disabled."""
    config = settings.anomalies.streaming
    if not config.enabled:
        return []
    with _observers_lock:
        observer = _observers.get(store)
        if observer is None:
            observer = _observers[store] = StreamingAnomalies(store, params_from_settings(config))
    return [observer]
