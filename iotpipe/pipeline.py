"""decode → validate → micro-batch → one transaction per batch → acknowledge; dead letters.

Two ways in, one path through:
- pull sources (files, replays) call `feed()` directly, in the caller's thread;
- push sources (MQTT, HTTP) `submit()` into a bounded queue drained by `run()` in a
  writer thread; when the store falls behind, `submit()` blocks: backpressure reaches
  the source instead of memory growing or messages being dropped.
A message's `ack` is called only after the transaction holding it committed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from iotpipe import formats
from iotpipe.errors import DecodeError
from iotpipe.model import MICROS_PER_SECOND, DecodedMessage, DeviceInfo, RawMessage
from iotpipe.store import DeadLetter, Store, WriteBatch, WriteResult, utc_day

log = logging.getLogger(__name__)

FUTURE_TOLERANCE_MICROS = 86_400 * MICROS_PER_SECOND  # readings may be up to a day ahead
_STOP = object()


@dataclass
class PipelineConfig:
    batch_size: int = 50_000  # readings per transaction
    batch_delay: float = 1.0  # seconds a reading may wait for its batch to fill
    max_payload_bytes: int = 256 * 1024
    queue_size: int = 10_000  # messages between push sources and the writer
    # Write the batch once this many messages await their ack. A broker lets only so
    # many unacknowledged messages be in flight to one client (Mosquitto: 20 by
    # default); waiting for a full batch beyond that window would stall the stream.
    max_unacked: int | None = None


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
        self._batch = WriteBatch()
        self._acks: list[Callable[[], None]] = []
        self._pending_messages = 0  # received into the open batch, not yet committed
        self._pending_accepted = 0
        self._pending_dead = 0
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
                self.flush()
                return
            if isinstance(item, RawMessage):
                self.feed(item)
            elif isinstance(item, _Watermark):
                self.set_watermark(item.source, item.key, item.value)
            elif isinstance(item, _DeviceInfoUpdate):
                self.set_device_info(item.device_id, item.info)

    def stop(self) -> None:
        """Ask `run()` to flush what it holds and return (after queued messages)."""
        self._queue.put(_STOP)

    def _time_left(self) -> float | None:
        if not self._pending_messages:
            return None
        return max(0.0, self._batch_started + self.config.batch_delay - time.monotonic())

    # -- the path ----------------------------------------------------------------------
    def feed_all(self, messages: Iterable[RawMessage]) -> Counters:
        for raw in messages:
            self.feed(raw)
        self.flush()
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
        if full or late:
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
        size = len(raw.payload)
        if size > self.config.max_payload_bytes:
            raise DecodeError(f"payload is {size} bytes, over the limit of {self.config.max_payload_bytes}")
        decoded = formats.decode(raw)
        if not decoded:
            raise DecodeError("payload holds no readings")
        horizon = raw.received_at + FUTURE_TOLERANCE_MICROS
        for message in decoded:
            for metric, t, _ in message.readings:
                if t > horizon:
                    raise DecodeError(
                        f"timestamp of {message.device_id}/{metric} is more than a day in the future"
                    )
        if not any(m.readings for m in decoded):
            raise DecodeError(_nothing_valid_reason(decoded))
        return decoded

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
                    self.counters.values_invalid += 1
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
        """Write the open batch in one transaction, then acknowledge its messages.

        On a store failure nothing is acknowledged and the batch is kept, so the caller
        may retry `flush()`; at-least-once sources redeliver what was never acked.
        """
        with self._lock:
            if not self._pending_messages and not self._batch:
                return
            started = time.perf_counter()
            result = self.store.write(self._batch)
            counters = self.counters
            counters.messages_received += self._pending_messages
            counters.messages_accepted += self._pending_accepted
            counters.messages_dead_lettered += self._pending_dead
            counters.readings_received += self._batch.reading_count
            counters.readings_stored += result.stored
            counters.readings_duplicate += result.duplicates
            counters.batches_written += 1
            acks = self._acks
            log.debug(
                "batch of %d readings, %d dead letters in %.3fs",
                self._batch.reading_count,
                self._pending_dead,
                time.perf_counter() - started,
            )
            written = self._batch
            self._batch = WriteBatch()
            self._acks = []
            self._pending_messages = self._pending_accepted = self._pending_dead = 0
        for ack in acks:
            ack()
        for observer in self.observers:
            observer(written, result)
        if self.on_commit is not None:
            self.on_commit(counters)


def _nothing_valid_reason(decoded: list[DecodedMessage]) -> str:
    invalid = [bad.reason for m in decoded for bad in m.invalid]
    if invalid:
        return "no valid metric: " + "; ".join(invalid[:10])
    return "no metric in message"
