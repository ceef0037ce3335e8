"""decode → validate → micro-batch → one transaction per batch → acknowledge; dead letters.

Two ways in, one path through:
- pull sources (files, replays) call `feed()` directly, in the caller's thread;
- push sources (MQTT, ThingSpeak, HTTP) `submit()` into a bounded queue drained by
  `run()` in a writer thread; when the store falls behind, `submit()` blocks:
  backpressure reaches the source instead of memory growing or messages being dropped.

Each batch goes to the primary sink (the store) in one transaction. Only after it
committed are the batch's messages acknowledged to their sources, then the observers
(streaming detector, live feed, lake) see it. A batch the store refuses for what it
holds is split in halves until the message at fault is found; that message becomes a
dead letter and the rest commit, so no single message can block a source.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from iotpipe import formats, limits
from iotpipe.errors import BatchRejected, DecodeError, first_line
from iotpipe.limits import DEFAULT_LIMITS, Limits, setting_hint
from iotpipe.model import (
    Acknowledger,
    Counters,
    DeadLetter,
    DecodedMessage,
    DeviceInfo,
    RawMessage,
    WriteBatch,
    WriteResult,
)
from iotpipe.sinks.base import CommitObserver, PrimarySink
from iotpipe.text import printable
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
    batch_size: int = limits.BATCH_SIZE
    batch_delay: float = limits.BATCH_DELAY
    # Overrides limits.max_payload_bytes for this pipeline when set (file imports and
    # replays take whole documents); after __init__ the two agree.
    max_payload_bytes: int = 0
    queue_size: int = limits.QUEUE_SIZE
    # Write the batch once this many messages await their ack. A broker lets only so
    # many unacknowledged messages be in flight to one client (Mosquitto: 20 by
    # default); waiting for a full batch beyond that window would stall the stream.
    max_unacked: int | None = None
    # Readings older than this (a UTC day start, Unix µs) are written straight into the
    # packed tier: an import of history past the hot window.
    pack_before: int | None = None
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
class _CommitPoint:
    done: threading.Event


@dataclass(frozen=True, slots=True)
class _DeviceInfoUpdate:
    device_id: str
    info: DeviceInfo


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
        sink: PrimarySink,
        config: PipelineConfig | None = None,
        observers: Iterable[CommitObserver] = (),
    ) -> None:
        self.sink = sink
        self.config = config or PipelineConfig()
        self.counters = Counters()
        self.observers: tuple[CommitObserver, ...] = tuple(observers)
        tune_gc()
        self._open = _PendingBatch()
        self._failed: _PendingBatch | None = None  # a batch whose write failed, to retry first
        self._writer: ThreadPoolExecutor | None = None
        self._in_flight: Future[None] | None = None
        self._batch_started = 0.0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=self.config.queue_size)
        self._lock = threading.Lock()  # feed/flush may be called from a source thread and a timer
        self._commit_points: list[threading.Event] = []  # told at the next successful flush
        self._held: list[_PendingBatch] | None = None  # see holding()
        # Each device's metrics seen so far, for the per-device series limit.
        self._series: dict[str, set[str]] = {}
        # Messages taken whose check needed the store while it failed (a new device's
        # series): in no batch, unacknowledged, added to the open batch by the next flush.
        self._unfed: list[RawMessage] = []

    # -- push sources: the MessageSink they are given ----------------------------------------
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

    def commit_point(self) -> threading.Event:
        """Queue a point that `run()` commits everything before and then reports back."""
        point = _CommitPoint(threading.Event())
        self._queue.put(point)
        return point.done

    def flush_soon(self) -> None:
        """Ask `run()` to write the open batch now, from any thread (e.g. an MQTT source
        whose broker stopped sending until we ack); a full queue means it soon will anyway."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_FLUSH)

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
            elif isinstance(item, _CommitPoint):
                self._commit_points.append(item.done)
                self.flush()

    def stop(self) -> None:
        """Ask `run()` to flush what it holds and return (after queued messages)."""
        self._queue.put(_STOP)

    def _time_left(self) -> float | None:
        if not self._open.messages:
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
        full, late = self._add(raw, keep=True)
        if full:
            self._flush_full_batch()
        elif late and self._held is None:
            self.flush()

    def _add(self, raw: RawMessage, keep: bool) -> tuple[bool, bool]:
        """Put one message into the open batch, whole or not at all; return whether the
        batch is now full, and whether it is due. When its check cannot reach the store,
        the message is kept for the next flush (if `keep`) and the error raised: counted
        and acknowledged without its readings, it would be lost."""
        with self._lock:
            try:
                decoded: list[DecodedMessage] | str = self._decode(raw)
            except DecodeError as exc:
                decoded = exc.reason
            except Exception:
                if keep:
                    self._unfed.append(raw)
                raise
            job = self._open
            if not job.messages:
                self._batch_started = time.monotonic()
            job.messages += 1
            if raw.acker is not None:
                job.acks.append((raw.acker, raw.ack_token))
            if isinstance(decoded, str):
                job.dead_letter(raw, decoded, self.config.max_payload_bytes)
            else:
                job.accept(raw, decoded)
            full = job.batch.reading_count >= self.config.batch_size or (
                self.config.max_unacked is not None and len(job.acks) >= self.config.max_unacked
            )
            late = time.monotonic() - self._batch_started >= self.config.batch_delay
        return full, late

    def _add_unfed(self) -> None:
        """Add the messages kept by a failed check to the open batch, in their order."""
        while self._unfed:
            self._add(self._unfed[0], keep=False)  # raises again while the store is down
            self._unfed.pop(0)

    def feed_block(self, block: Any) -> None:
        """Add readings a bulk decoder decoded exactly (formats/columnar.py: a Block of
        `block.messages`, validated as the pipeline would) to the open batch."""
        if not self._block_within_series_limit(block):
            for raw in block.messages:  # message by message: the limit refuses the same ones
                self.feed(raw)
            return
        with self._lock:
            job = self._open
            if not job.messages:
                self._batch_started = time.monotonic()
            job.messages += len(block.messages)
            job.blocks.append(block)
            job.batch.blocks.append(block)
            job.batch.block_positions.append(len(job.batch.groups))
            job.batch.reading_count += len(block)
            # Counted by source as _add_readings counts a message (the metrics' labels).
            if len(block.messages):
                counts = job.batch.source_counts.setdefault(block.messages[0].counted_as, [0, 0])
                counts[0] += len(block.messages)
                counts[1] += len(block)
            full = job.batch.reading_count >= self.config.batch_size
        if full:
            self._flush_full_batch()

    def set_watermark(self, source: str, key: str, value: str) -> None:
        """Commit a source's resume point together with the readings fed before it."""
        with self._lock:
            self._open.batch.watermarks[(source, key)] = value

    def set_device_info(self, device_id: str, info: DeviceInfo) -> None:
        """Stage device metadata; it is written with the batch (a device is created only
        when a reading of it is stored)."""
        with self._lock:
            self._open.batch.infos[device_id] = info

    def _decode(self, raw: RawMessage) -> list[DecodedMessage]:
        if raw.reject is not None:  # the source refused this delivery (not its payload)
            raise DecodeError(raw.reject)
        decoded = decode_valid(raw, formats.decode, self.config.limits)
        for message in decoded:
            self._check_series_limit(message)
        return decoded

    def _block_within_series_limit(self, block: Any) -> bool:
        """Whether no device of the block goes over max_series_per_device with it (then
        the exact path, message by message, would refuse none of its messages either)."""
        limit = self.config.limits.max_series_per_device
        found = block.series()
        unknown = [device_id for device_id in found if device_id not in self._series]
        for device_id, metrics in self.sink.known_metrics(unknown).items() if unknown else ():
            self._series[device_id] = set(metrics)
        # Most blocks bring no new series: a subset test per device, no set built.
        grown = [
            (device_id, metrics)
            for device_id, metrics in found.items()
            if not metrics <= self._series[device_id]
        ]
        for device_id, metrics in grown:
            if len(self._series[device_id] | metrics) > limit:
                return False
        for device_id, metrics in grown:
            self._series[device_id].update(metrics)
        return True

    def _check_series_limit(self, message: DecodedMessage) -> None:
        """Refuse a message that would give its device more series than the limit allows:
        one misbehaving device must not create millions of series."""
        known = self._series.get(message.device_id)
        if known is None:
            known = self._series[message.device_id] = set(
                self.sink.known_metrics((message.device_id,))[message.device_id]
            )
        new = {metric for metric, _, _ in message.readings if metric not in known}
        if not new:
            return
        limit = self.config.limits.max_series_per_device
        if len(known) + len(new) > limit:
            raise DecodeError(
                f"device {printable(message.device_id)} has {len(known)} series and this message would add "
                f"{len(new)}, over the limit of {limit} series per device; raise it with "
                f"{setting_hint('max_series_per_device')}"
            )
        known.update(new)

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
        self._add_unfed()
        job = self._detach()
        if job is not None:
            self._write(job)
        points, self._commit_points = self._commit_points, []
        for point in points:
            point.set()

    @contextlib.contextmanager
    def holding(self) -> Iterator[list[_PendingBatch]]:
        """Feed without writing: every batch fed within the block is set aside in the list
        (the last one when the block ends), for a caller that commits them itself with
        `write_held()`, while it feeds the next ones (HTTP ingest decodes one request while
        the one before commits). A block that raises drops what it fed."""
        held: list[_PendingBatch] = []
        self._held = held
        try:
            yield held
            job = self._detach()
            if job is not None:
                held.append(job)
        except BaseException:
            self._detach()
            self._unfed.clear()  # the caller tells its client, who sends them again
            held.clear()
            raise
        finally:
            self._held = None

    def write_held(self, job: _PendingBatch) -> None:
        """Commit a batch set aside by `holding()`, as flush() commits one; on failure it is
        kept like any failed batch (`discard_failed()` drops it)."""
        self._write(job)

    def discard_failed(self) -> int:
        """Drop the batch whose write failed instead of retrying it at the next flush: for
        a pull caller that told its own client about the failure (an HTTP request answered
        503 is sent again by its client). Returns how many messages it held."""
        self._wait_for_write_behind_quietly()
        failed, self._failed = self._failed, None
        unfed, self._unfed = len(self._unfed), []
        return unfed + (failed.messages if failed is not None else 0)

    def _wait_for_write_behind_quietly(self) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            with contextlib.suppress(Exception):
                in_flight.result()

    def _flush_full_batch(self) -> None:
        """A full batch: written behind, while the caller decodes the next one, where the
        engine gains from it (its server works while we decode); otherwise like flush().
        While holding(), it is only set aside."""
        if self._held is not None:
            job = self._detach()
            if job is not None:
                self._held.append(job)
            return
        if not self.sink.writes_behind or self._failed is not None:
            self.flush()
            return
        self._wait_for_write_behind()
        job = self._detach()
        if job is not None:
            self.sink.prepare_columns(job.batch)  # here, while the writer is idle
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
            job = self._open
            if not job.messages and not job.batch:
                return None
            self._open = _PendingBatch()
            return job

    def _write(self, job: _PendingBatch) -> None:
        """Commit one detached batch, then count it, acknowledge it and tell observers."""
        started = time.perf_counter()
        try:
            self._commit(job)
        except BaseException:
            self._failed = job
            raise
        log.debug(
            "batch of %d readings, %d dead letters in %.3fs",
            job.batch.reading_count,
            job.dead,
            time.perf_counter() - started,
        )
        _acknowledge(job.acks)

    def _commit(self, job: _PendingBatch) -> None:
        """Commit a batch; if the store refuses what it holds, split it until the message
        at fault is alone, dead-letter that one and commit the rest."""
        job.batch.pack_before = self.config.pack_before
        try:
            result = self.sink.write(job.batch)
        except BatchRejected as exc:
            if job.blocks:
                # Find the message at fault the usual way: decode the blocks' messages
                # one by one, as if the bulk decoder had not taken them.
                self._commit(job.without_blocks(self._decode))
                return
            if len(job.accepted) > 1:
                log.info("the store refused a batch of %d messages; splitting it", len(job.accepted))
                for part in job.split():
                    self._commit(part)
                return
            self._commit_without_fault(job, str(exc))
            return
        self._count(job, result)
        for observer in self.observers:
            try:
                observer(job.batch, result)
            except Exception:  # after the commit: nothing may undo it or block the source
                log.exception("an after-commit observer failed; the batch is stored")

    def _commit_without_fault(self, job: _PendingBatch, reason: str) -> None:
        """The store refused a batch holding at most one accepted message: that message
        becomes a dead letter. If the batch still fails, its device metadata is at fault."""
        if job.accepted:
            raw = job.accepted[0][0]
            log.warning("the store refused the message from %s %s: %s", raw.source, raw.origin, reason)
            rest = job.without_accepted(f"the database refused it: {reason}")
        elif job.batch.infos:
            log.warning("the store refused device metadata (%s); dropping it", reason)
            rest = job.without_infos()
        else:
            raise BatchRejected(reason)
        self._commit(rest)

    def _count(self, job: _PendingBatch, result: WriteResult) -> None:
        counters = self.counters
        with self._lock:
            counters.messages_received += job.messages
            counters.messages_accepted += len(job.accepted) + sum(len(b.messages) for b in job.blocks)
            counters.messages_dead_lettered += job.dead
            counters.values_invalid += len(job.batch.invalid)
            counters.readings_received += job.batch.reading_count
            counters.readings_stored += result.stored
            counters.readings_duplicate += result.duplicates
            counters.batches_written += 1


class PipelineWriter:
    """The pipeline's writer thread for push sources, kept alive through store failures.

    A failed batch is neither acknowledged nor dropped: the pipeline keeps it, and this
    retries with backoff (meanwhile the bounded queue fills and blocks the sources; an
    MQTT broker's in-flight window stops new deliveries), so a database outage delays
    readings instead of losing them. After the store is back, the writer carries on with
    what queued up behind the failed batch.
    """

    def __init__(self, pipeline: Pipeline, max_backoff: float = limits.WRITE_RETRY_MAX_BACKOFF) -> None:
        self.pipeline = pipeline
        self._max_backoff = max_backoff
        self._give_up = threading.Event()
        self.gave_up = False
        self._thread = threading.Thread(target=self._run, name="iotpipe-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float = limits.SHUTDOWN_GRACE) -> None:
        """Write everything queued, then end; if the store stays down for `grace` seconds,
        give up (what was not stored was not acknowledged either)."""
        self.pipeline.stop()
        self._thread.join(grace)
        if self._thread.is_alive():
            self._give_up.set()
            self._thread.join()
            self.gave_up = True
            log.error("giving up with the store still failing: unacknowledged messages are not stored")

    def _run(self) -> None:
        while True:
            try:
                self.pipeline.run()  # returns once it has met the stop marker
                return
            except Exception as exc:
                log.error(
                    "writing a batch failed: %s; nothing is acknowledged until it is stored", first_line(exc)
                )
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
                log.error("writing a batch failed again: %s; retrying in %.0f s", first_line(exc), backoff)
        return False


@dataclass(slots=True)
class _PendingBatch:
    """A batch being filled or written, with what it owes once committed: the acks, and
    the accepted messages it was built from (to rebuild halves of it if it is refused)."""

    batch: WriteBatch = field(default_factory=WriteBatch)
    accepted: list[tuple[RawMessage, list[DecodedMessage]]] = field(default_factory=list)
    acks: list[tuple[Acknowledger, Any]] = field(default_factory=list)
    messages: int = 0  # received: accepted + dead-lettered
    dead: int = 0
    blocks: list[Any] = field(default_factory=list)  # bulk-decoded, also in batch.blocks

    def accept(self, raw: RawMessage, decoded: list[DecodedMessage]) -> None:
        _add_readings(self.batch, raw, decoded)
        self.accepted.append((raw, decoded))

    def dead_letter(self, raw: RawMessage, reason: str, max_payload_bytes: int) -> None:
        if len(raw.payload) > max_payload_bytes:
            # Keep the evidence, not the whole oversize body.
            raw.payload = raw.payload[:max_payload_bytes]
        self.batch.dead_letters.append(DeadLetter(raw, reason))
        self.dead += 1
        log.debug("dead letter from %s %s: %s", raw.source, raw.origin, reason)

    def split(self) -> tuple[_PendingBatch, _PendingBatch]:
        """Two halves of the accepted messages; dead letters, metadata and watermarks go
        with the second, so a watermark still commits after the readings before it."""
        middle = len(self.accepted) // 2
        first = _PendingBatch.of(self.accepted[:middle])
        second = _PendingBatch.of(self.accepted[middle:])
        second.take_extras(self)
        return first, second

    def without_accepted(self, reason: str) -> _PendingBatch:
        """This batch with its accepted messages turned into dead letters."""
        rest = _PendingBatch()
        rest.take_extras(self)
        for raw, _ in self.accepted:
            rest.batch.dead_letters.append(DeadLetter(raw, reason))
            rest.dead += 1
            rest.messages += 1
        return rest

    def without_blocks(self, decode: Any) -> _PendingBatch:
        """This batch with its blocks' messages decoded one by one (`decode(raw)`)."""
        rest = _PendingBatch.of(self.accepted)
        rest.take_extras(self)
        for block in self.blocks:
            for raw in block.messages:
                rest.messages += 1
                try:
                    rest.accept(raw, decode(raw))
                except DecodeError as exc:
                    rest.dead_letter(raw, exc.reason, len(raw.payload))
        return rest

    def without_infos(self) -> _PendingBatch:
        rest = _PendingBatch.of(self.accepted)
        rest.take_extras(self)
        rest.batch.infos = {}
        return rest

    def take_extras(self, other: _PendingBatch) -> None:
        """Take the other batch's dead letters, metadata and watermarks (not its readings)."""
        batch = self.batch
        batch.dead_letters.extend(other.batch.dead_letters)
        batch.watermarks.update(other.batch.watermarks)
        for device_id, info in other.batch.infos.items():
            batch.infos.setdefault(device_id, info)
        self.dead += other.dead
        self.messages += other.dead

    @classmethod
    def of(cls, accepted: list[tuple[RawMessage, list[DecodedMessage]]]) -> _PendingBatch:
        job = cls()
        for raw, decoded in accepted:
            job.accept(raw, decoded)
        job.messages = len(accepted)
        return job


def _add_readings(batch: WriteBatch, raw: RawMessage, decoded: list[DecodedMessage]) -> None:
    """Add one accepted message's readings, units, metadata and invalid values."""
    counts = batch.source_counts.get(raw.counted_as)
    if counts is None:
        counts = batch.source_counts[raw.counted_as] = [0, 0]
    counts[0] += 1
    before = batch.reading_count
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
            at = message.readings[0][1] if message.readings else raw.received_at
            for bad in message.invalid:
                batch.invalid[(device_id, bad.metric, at)] = bad.reason
    counts[1] += batch.reading_count - before
    if raw.dead_letter_id is not None:
        batch.replayed.append(raw.dead_letter_id)


def _acknowledge(acks: list[tuple[Acknowledger, Any]]) -> None:
    """Tell each source which of its messages are committed, in one call per source."""
    if not acks:
        return
    by_source: dict[int, tuple[Acknowledger, list[Any]]] = {}
    for acker, token in acks:
        entry = by_source.get(id(acker))
        if entry is None:
            by_source[id(acker)] = (acker, [token])
        else:
            entry[1].append(token)
    for acker, tokens in by_source.values():
        acker.acknowledge(tokens)
