"""decode → validate → micro-batch → one transaction per batch → acknowledge; dead letters.

Two ways in, one path through:
- pull sources (files, replays) call `feed()` directly, in the caller's thread;
- push sources (MQTT, HTTP) `submit()` into a bounded queue drained by `run()` in a
  writer thread; when the store falls behind, `submit()` blocks: backpressure reaches
  the source instead of memory growing or messages being dropped.
A message's `ack` is called only after the transaction holding it committed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

from iotpipe import formats
from iotpipe.errors import DecodeError
from iotpipe.limits import DEFAULT_LIMITS, Limits
from iotpipe.model import DecodedMessage, DeviceInfo, RawMessage
from iotpipe.store import DeadLetter, Store, WriteBatch, WriteResult, utc_day
from iotpipe.validation import decode_valid

log = logging.getLogger(__name__)

# Ingest allocates millions of small objects that all live until their batch commits.
# At CPython's default gen-0 threshold (700) the collector rescans the open batch
# thousands of times a second: ~1-1.5 s of every 1M readings imported. See tune_gc().
INGEST_GC_THRESHOLDS = (50_000, 20, 100)
_STOP = object()
_FLUSH = object()


@dataclass
class PipelineConfig:
    batch_size: int = 50_000  # readings per transaction
    batch_delay: float = 1.0  # seconds a reading may wait for its batch to fill
    # Overrides limits.max_payload_bytes for this pipeline when set (file imports and
    # replays take whole documents); after __init__ the two agree.
    max_payload_bytes: int = 0
    queue_size: int = 10_000  # messages between push sources and the writer
    # Write the batch once this many messages await their ack. A broker lets only so
    # many unacknowledged messages be in flight to one client (Mosquitto: 20 by
    # default); waiting for a full batch beyond that window would stall the stream.
    max_unacked: int | None = None
    limits: Limits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if not self.max_payload_bytes:
            self.max_payload_bytes = self.limits.max_payload_bytes
        elif self.max_payload_bytes != self.limits.max_payload_bytes:
            self.limits = replace(self.limits, max_payload_bytes=self.max_payload_bytes)


@dataclass(frozen=True, slots=True)
class _Watermark:
    source: str
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class _DeviceInfoUpdate:
    device_id: str
    info: DeviceInfo


# Called after each commit with the batch that was written and its result.
BatchObserver = Callable[[WriteBatch, WriteResult], None]


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


def tune_gc() -> None:
    """Apply the ingest GC policy to this process, once: a larger gen-0 threshold, and
    everything alive at startup (modules, settings) moved out of the collector's sight."""
    if gc.get_threshold() == INGEST_GC_THRESHOLDS:
        return
    gc.freeze()
    gc.set_threshold(*INGEST_GC_THRESHOLDS)


class Pipeline:
    def __init__(
        self,
        store: Store,
        config: PipelineConfig | None = None,
        on_commit: Callable[[Counters], None] | None = None,
        observers: list[BatchObserver] | None = None,
    ) -> None:
        self.store = store
        self.config = config or PipelineConfig()
        self.counters = Counters()
        self.on_commit = on_commit
        self.observers: list[BatchObserver] = list(observers or [])
        tune_gc()
        self._batch = WriteBatch()
        self._acks: list[Callable[[], None]] = []
        self._pending_messages = 0  # received into the open batch, not yet committed
        self._pending_accepted = 0
        self._pending_dead = 0
        self._pending_invalid = 0
        self._failed: _PendingBatch | None = None  # a batch whose write failed, to retry first
        self._writer: ThreadPoolExecutor | None = None
        self._in_flight: Future[None] | None = None
        self._batch_started = 0.0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=self.config.queue_size)
        self._lock = threading.Lock()  # feed/flush may be called from a source thread and a timer

    # -- push sources -------------------------------------------------------------------
    def submit(self, raw: RawMessage, timeout: float | None = None) -> None:
        """Hand a message to the writer thread; blocks while the queue is full."""
        self._queue.put(raw, timeout=timeout)

    def submit_watermark(self, source: str, key: str, value: str) -> None:
        """Queue a source's resume point behind the messages submitted before it."""
        self._queue.put(_Watermark(source, key, value))

    def submit_device_info(self, device_id: str, info: DeviceInfo) -> None:
        """Queue device metadata (e.g. a ThingSpeak channel's) behind earlier messages."""
        self._queue.put(_DeviceInfoUpdate(device_id, info))

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def run(self) -> None:
        """Drain the queue until `stop()`; flush whenever a batch is full or old enough."""
        while True:
            timeout = self._time_left()
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                self.flush()
                continue
            if item is _STOP:
                self.close()
                return
            if item is _FLUSH:
                self.flush()
                continue
            if isinstance(item, RawMessage):
                self.feed(item)
            elif isinstance(item, _Watermark):
                self.set_watermark(item.source, item.key, item.value)
            elif isinstance(item, _DeviceInfoUpdate):
                self.set_device_info(item.device_id, item.info)

    def stop(self) -> None:
        """Ask `run()` to flush what it holds and return (after queued messages)."""
        self._queue.put(_STOP)

    def flush_soon(self) -> None:
        """Ask `run()` to write the open batch now, from any thread (e.g. an MQTT source
        whose broker stopped sending until we ack); a full queue means it soon will anyway."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_FLUSH)

    def _time_left(self) -> float | None:
        if not self._pending_messages:
            return None
        return max(0.0, self._batch_started + self.config.batch_delay - time.monotonic())

    # -- the path ----------------------------------------------------------------------
    def feed_all(self, messages: Iterable[RawMessage]) -> Counters:
        for raw in messages:
            self.feed(raw)
        self.close()
        return self.counters

    def feed(self, raw: RawMessage) -> None:
        """Decode and validate one message into the open batch; write it when full."""
        with self._lock:
            if not self._pending_messages:
                self._batch_started = time.monotonic()
            self._pending_messages += 1
            if raw.ack is not None:
                self._acks.append(raw.ack)
            try:
                decoded = self._decode(raw)
            except DecodeError as exc:
                self._dead_letter(raw, exc.reason)
            else:
                self._accept(raw, decoded)
            full = self._batch.reading_count >= self.config.batch_size or (
                self.config.max_unacked is not None and len(self._acks) >= self.config.max_unacked
            )
            late = time.monotonic() - self._batch_started >= self.config.batch_delay
        if full:
            self._flush_full_batch()
        elif late:
            self.flush()

    def set_watermark(self, source: str, key: str, value: str) -> None:
        """Commit a source's resume point together with the readings fed before it."""
        with self._lock:
            self._batch.watermarks[(source, key)] = value

    def set_device_info(self, device_id: str, info: DeviceInfo) -> None:
        """Stage device metadata; it is written with the batch (a device is created only
        when a reading of it is stored)."""
        with self._lock:
            self._batch.infos[device_id] = info

    def _decode(self, raw: RawMessage) -> list[DecodedMessage]:
        return decode_valid(raw, formats.decode, self.config.limits)

    def _accept(self, raw: RawMessage, decoded: list[DecodedMessage]) -> None:
        batch = self._batch
        for message in decoded:
            device_id = message.device_id
            if message.readings:
                batch.groups.append((device_id, message.readings))
                batch.reading_count += len(message.readings)
            for metric, unit in message.units.items():
                batch.units[(device_id, metric)] = unit
            if message.info is not None:
                batch.infos[device_id] = message.info
            if message.invalid:
                day = utc_day(message.readings[0][1] if message.readings else raw.received_at)
                for bad in message.invalid:
                    key = (device_id, day, bad.metric)
                    batch.invalid[key] = batch.invalid.get(key, 0) + 1
                    self._pending_invalid += 1
        if raw.dead_letter_id is not None:
            batch.replayed.append(raw.dead_letter_id)
        self._pending_accepted += 1

    def _dead_letter(self, raw: RawMessage, reason: str) -> None:
        if len(raw.payload) > self.config.max_payload_bytes:
            # Keep the evidence, not the whole oversize body.
            raw.payload = raw.payload[: self.config.max_payload_bytes]
        self._batch.dead_letters.append(DeadLetter(raw, reason))
        self._pending_dead += 1
        log.debug("dead letter from %s %s: %s", raw.source, raw.origin, reason)

    def flush(self) -> None:
        """Write everything fed so far, each batch in one transaction, and wait for it.

        On a store failure nothing of the failed batch is acknowledged and it is kept:
        the next `flush()` retries it first. At-least-once sources redeliver what was
        never acked, so a crash instead of a retry loses nothing either.
        """
        self._wait_for_write_behind()
        if self._failed is not None:
            failed, self._failed = self._failed, None
            self._write(failed)
        job = self._detach()
        if job is not None:
            self._write(job)

    def _flush_full_batch(self) -> None:
        """A full batch: written behind, while the caller decodes the next one, where the
        engine gains from it (its server works while we decode); otherwise like flush()."""
        if not self.store.writes_behind or self._failed is not None:
            self.flush()
            return
        self._wait_for_write_behind()
        job = self._detach()
        if job is not None:
            self.store.prepare_columns(job.batch)  # here, while the writer is idle
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iotpipe-write")
            self._in_flight = self._writer.submit(self._write, job)

    def _wait_for_write_behind(self) -> None:
        """Block until the batch being written behind is committed; raise its error."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def close(self) -> None:
        """Flush, and stop the write-behind thread."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None

    def _detach(self) -> _PendingBatch | None:
        """Take the open batch and what it owes (acks, counts), leaving an empty one."""
        with self._lock:
            if not self._pending_messages and not self._batch:
                return None
            job = _PendingBatch(
                self._batch,
                self._acks,
                self._pending_messages,
                self._pending_accepted,
                self._pending_dead,
                self._pending_invalid,
            )
            self._batch = WriteBatch()
            self._acks = []
            self._pending_messages = self._pending_accepted = self._pending_dead = self._pending_invalid = 0
            return job

    def _write(self, job: _PendingBatch) -> None:
        """Commit one detached batch, then count it, acknowledge it and tell observers."""
        started = time.perf_counter()
        try:
            result = self.store.write(job.batch)
        except BaseException:
            self._failed = job
            raise
        counters = self.counters
        with self._lock:
            counters.messages_received += job.messages
            counters.messages_accepted += job.accepted
            counters.messages_dead_lettered += job.dead
            counters.values_invalid += job.invalid_values
            counters.readings_received += job.batch.reading_count
            counters.readings_stored += result.stored
            counters.readings_duplicate += result.duplicates
            counters.batches_written += 1
        log.debug(
            "batch of %d readings, %d dead letters in %.3fs",
            job.batch.reading_count,
            job.dead,
            time.perf_counter() - started,
        )
        for ack in job.acks:
            ack()
        for observer in self.observers:
            observer(job.batch, result)
        if self.on_commit is not None:
            self.on_commit(counters)


class PipelineWriter:
    """The pipeline's writer thread for push sources, kept alive through store failures.

    A failed batch is neither acknowledged nor dropped: the pipeline keeps it, and this
    retries with backoff (meanwhile the bounded queue fills and blocks the sources; an
    MQTT broker's in-flight window stops new deliveries), so a database outage delays
    readings instead of losing them. After the store is back, the writer carries on with
    what queued up behind the failed batch.
    """

    def __init__(self, pipeline: Pipeline, max_backoff: float = 30.0) -> None:
        self.pipeline = pipeline
        self._max_backoff = max_backoff
        self._give_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="iotpipe-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float = 30.0) -> None:
        """Write everything queued, then end; if the store stays down for `grace` seconds,
        give up (what was not stored was not acknowledged either)."""
        self.pipeline.stop()
        self._thread.join(grace)
        if self._thread.is_alive():
            self._give_up.set()
            self._thread.join()
            log.error("giving up with the store still failing: unacknowledged messages are not stored")

    def _run(self) -> None:
        while True:
            try:
                self.pipeline.run()  # returns once it has met the stop marker
                return
            except Exception as exc:
                log.error("writing a batch failed: %s; nothing is acknowledged until it is stored", exc)
            if not self._retry_failed_batch():
                return

    def _retry_failed_batch(self) -> bool:
        """Retry the kept batch with backoff until it is stored; False once told to give up.

        It must be retried here rather than at the next message: a broker sends nothing
        new while its in-flight window is full of the failed batch's unacknowledged
        messages, so waiting for a message to retry would wait forever.
        """
        backoff = 1.0
        while not self._give_up.wait(backoff):
            try:
                self.pipeline.flush()
                log.info("the store is back: the kept batch is stored")
                return True
            except Exception as exc:
                backoff = min(backoff * 2, self._max_backoff)
                log.error("writing a batch failed again: %s; retrying in %.0f s", exc, backoff)
        return False


@dataclass(slots=True)
class _PendingBatch:
    """A batch taken from the pipeline to be written, with what it owes once committed."""

    batch: WriteBatch
    acks: list[Callable[[], None]]
    messages: int
    accepted: int
    dead: int
    invalid_values: int
