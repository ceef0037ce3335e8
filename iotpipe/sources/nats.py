"""NATS JetStream: durable pull consumers shared by workers, each message acked after its batch commits.

At-least-once, end to end, across workers:
- the stream (file storage, work-queue retention) keeps every message until a worker
  acknowledges it; the source acknowledges a message only in `acknowledge()`, which the
  pipeline calls once the batch holding it is committed;
- a worker that dies (kill -9, a lost machine) leaves its messages unacknowledged, and
  JetStream delivers them again to whoever pulls next once `ack_wait` has passed: the
  others take over, nothing waits for the dead one to come back (MQTT `$share` does);
- a batch that takes longer than `ack_wait / 3` to commit (a slow or unreachable
  database) has its messages marked in progress, so they are not handed to another
  worker while this one is alive and still holds them;
- `max_deliver` is explicit: a message delivered that many times without any worker
  committing it is dead-lettered with the reason, from the server's max-deliveries
  advisory, instead of silently skipped.

Device partitions (`partitions > 0`): nats-server maps each subject to
`<prefix>.<n>.<subject>`, n a hash of the device level (see deploy/nats-server.conf),
and each partition has its own durable consumer. A partition is consumed by one worker
at a time, its owner, so a device's readings are taken in the order they were
published, as by a single worker, and its streaming anomaly state lives in one process.
Ownership is a lease in the shared database (a PostgreSQL advisory lock, see
store/leases.py), balanced so each live worker owns its share; a dead worker's lease
dies with its connection and the others take its partitions over. A new owner starts
pulling a partition only once the previous owner's unacknowledged messages are due for
redelivery (JetStream redelivers before it delivers new ones), so the order holds.

nats-py is asyncio: the source runs its own event loop in a thread. Messages are handed
to the sink from there; a full sink queue is waited for off the loop, so heartbeats and
acks keep flowing while the store catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from iotpipe.errors import ConfigError, IotpipeError
from iotpipe.formats.unmatched import UNMATCHED_TOPIC
from iotpipe.model import RawMessage
from iotpipe.sources.base import MessageSink
from iotpipe.sources.topics import TopicRouter, TopicTemplate

log = logging.getLogger(__name__)

SOURCE = "nats"
CONNECT_TIMEOUT = 15.0
FETCH_TIMEOUT = 1.0  # seconds a pull waits for messages before asking again
_QUEUE_FULL_LOG_EVERY = 10.0
# The shared (unpartitioned) consumer is pulled by every worker at once: its limit of
# unacknowledged messages leaves room for this many workers' windows.
SHARED_CONSUMER_WORKERS = 16


class NatsError(IotpipeError):
    """The NATS server could not be reached, or refused the stream or a consumer."""


class Leases(Protocol):
    """Ownership of partitions among the workers sharing a database (store/leases.py)."""

    def join(self) -> None:
        """Count this process among the live workers."""
        ...

    def members(self) -> int:
        """Live workers, this one included."""
        ...

    def try_acquire(self, name: str) -> bool: ...

    def release(self, name: str) -> None: ...

    def alive(self) -> bool:
        """Whether the leases held are still held (the database session is up)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class NatsOptions:
    url: str
    templates: list[TopicTemplate]
    subjects: tuple[str, ...]  # as devices publish them: telemetry.*, tele.*.SENSOR
    stream: str = "IOTPIPE"
    durable: str = "iotpipe"
    partitions: int = 0  # 0: one consumer shared by every worker
    partition_prefix: str = "part"
    ack_wait: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 10_000  # messages one worker holds unacknowledged
    fetch_batch: int = 500
    max_bytes: int = -1  # the stream's size limit; full: publishers are refused, nothing dropped
    max_age: float = 0.0  # seconds; 0: kept until acknowledged
    rebalance_every: float = 2.0
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def window(self) -> int:
        """Commit once half the messages a worker may hold await their ack: the other half
        keeps streaming meanwhile."""
        return max(1, self.max_ack_pending // 2)

    @property
    def stream_subjects(self) -> list[str]:
        # Partitioned: nats-server maps what devices publish under `<prefix>.<n>.`; a
        # consumer's filter must lie within one stream subject, hence one wildcard for all.
        return [f"{self.partition_prefix}.*.>"] if self.partitions else list(self.subjects)

    def consumer_name(self, partition: int | None) -> str:
        return self.durable if partition is None else f"{self.durable}-p{partition}"

    def filter_subject(self, partition: int | None) -> str | None:
        return None if partition is None else f"{self.partition_prefix}.{partition}.>"

    def lease_name(self, partition: int) -> str:
        return f"nats:{self.stream}:{self.durable}:{partition}"


@dataclass
class NatsStats:
    messages: int = 0
    unmatched: int = 0
    redelivered: int = 0  # messages JetStream delivered more than once (a worker died, an ack was lost)
    acks_sent: int = 0
    in_progress_sent: int = 0
    max_deliver_dead_letters: int = 0
    queue_full: int = 0
    blocked_seconds: float = 0.0
    reconnects: int = 0
    partitions_claimed: int = 0
    partitions_released: int = 0


@dataclass(frozen=True, slots=True)
class _GivenUp:
    """The ack token of a message dead-lettered after max_deliver: its stream sequence."""

    sequence: int


@dataclass
class _Lane:
    """One consumer this worker pulls from: the shared one, or a partition it owns."""

    partition: int | None
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    held: int = 0  # its messages awaiting commit


class NatsSource:
    """The JetStream source of `iotpipe run` and `iotpipe ingest nats`, and the
    Acknowledger of what it delivered."""

    name = SOURCE

    def __init__(
        self,
        options: NatsOptions,
        leases: Leases | None = None,
        on_claim: Callable[[], None] | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        if options.partitions and leases is None:
            raise ConfigError("NATS partitions need leases to share them among workers")
        self.options = options
        self.stats = NatsStats()
        self._leases = leases
        self._on_claim = on_claim  # told when a partition is taken: other workers wrote its series
        self._router = TopicRouter(options.templates, separator=".")
        self._stop_timeout = stop_timeout
        self._sink: MessageSink | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="iotpipe-nats", daemon=True)
        self._nc: Any = None
        self._js: Any = None
        self._lanes: dict[int | None, _Lane] = {}
        # Guards the held messages (by id) and their count; notified as acks come.
        self._held = threading.Condition()
        self._messages: dict[int, tuple[Any, float, _Lane]] = {}
        self._room = asyncio.Event()
        self._stopping = False
        self._abandon = False
        self._closed = threading.Event()
        self._last_queue_warning = 0.0
        self._rebalancer: threading.Thread | None = None
        self._keeper: Any = None  # the in-progress marker's future
        self._prefix_levels = 2 if options.partitions else 0

    # -- Source ---------------------------------------------------------------------------
    @property
    def ack_window(self) -> int | None:
        return self.options.window

    def finished(self) -> bool:
        return False

    def describe(self) -> str:
        o = self.options
        split = (
            f"{o.partitions} device partitions ({o.consumer_name(0)}..{o.consumer_name(o.partitions - 1)}), "
            f"owned now: {', '.join(str(p) for p in self.owned()) or 'none yet'}"
            if o.partitions
            else f"durable consumer {o.durable} shared with the other workers"
        )
        return (
            f"Consuming JetStream stream {o.stream} ({', '.join(o.stream_subjects)}) at {safe_url(o.url)}: "
            f"{split}; ack wait {o.ack_wait:g} s, max deliver {o.max_deliver}."
        )

    def owned(self) -> list[int]:
        return sorted(p for p in self._lanes if p is not None)

    def start(self, sink: MessageSink) -> None:
        """Connect, create or check the stream and consumers, start pulling; NatsError if that fails."""
        self._sink = sink
        self._thread.start()
        try:
            self._call(self._connect(), CONNECT_TIMEOUT * 2)
            if self.options.partitions:
                assert self._leases is not None
                self._leases.join()
                self._rebalance()  # take a first share before saying we run
            else:
                self._call(self._open_lane(None), CONNECT_TIMEOUT)
        except BaseException:
            self._stopping = self._abandon = True
            self._closed.set()
            with contextlib.suppress(Exception):
                self._call(self._stop_lanes(list(self._lanes.values())), 10)
                self._call(self._close(), 10)
            if self._leases is not None:
                self._leases.close()
            self._close_loop()
            raise
        if self.options.partitions:
            self._rebalancer = threading.Thread(
                target=self._keep_balanced, name="iotpipe-nats-leases", daemon=True
            )
            self._rebalancer.start()
        self._keeper = asyncio.run_coroutine_threadsafe(self._keep_in_progress(), self._loop)

    def stop(self) -> None:
        """Pull no more, wait until what was taken is committed and acked, disconnect."""
        self._stopping = True
        self._closed.set()
        if self._rebalancer is not None:
            self._rebalancer.join()
        with contextlib.suppress(Exception):
            self._call(self._stop_lanes(list(self._lanes.values())), 10)
        if self._sink is not None:
            self._sink.flush_soon()
        with self._held:
            if not self._held.wait_for(lambda: not self._messages, self._stop_timeout):
                log.warning(
                    "stopping with %d NATS messages not committed; JetStream delivers them again",
                    len(self._messages),
                )
                self._abandon = True
        if self._keeper is not None:
            self._keeper.cancel()
        with contextlib.suppress(Exception):
            self._call(self._close(), 10)
        if self._leases is not None:
            self._leases.close()
        self._close_loop()

    # -- acknowledgements ---------------------------------------------------------------
    def acknowledge(self, tokens: list[Any]) -> None:
        """Called by the pipeline once a batch is committed, with our messages in it (and
        the stream sequences of messages dead-lettered after max_deliver)."""
        msgs: list[Any] = []
        given_up: list[int] = []
        with self._held:
            for token in tokens:
                if isinstance(token, _GivenUp):
                    given_up.append(token.sequence)
                    continue
                entry = self._messages.pop(id(token), None)
                if entry is not None:
                    entry[2].held -= 1
                    msgs.append(token)
            self._held.notify_all()
        if (msgs or given_up) and not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._send_acks(msgs, given_up), self._loop)

    def _forget(self, message: Any) -> None:
        """Drop a message we will not hand over: unacknowledged, JetStream delivers it again."""
        with self._held:
            entry = self._messages.pop(id(message), None)
            if entry is not None:
                entry[2].held -= 1
            self._held.notify_all()

    async def _send_acks(self, msgs: list[Any], given_up: list[int]) -> None:
        nc = self._nc
        if nc is None:
            return
        for message in msgs:
            if message.reply:  # an ack is one buffered publish to the message's reply subject
                with contextlib.suppress(Exception):
                    await nc.publish(message.reply, b"+ACK")
        self.stats.acks_sent += len(msgs)
        self._room.set()
        for sequence in given_up:
            # Its dead letter is committed: the work-queue stream need not keep it.
            with contextlib.suppress(Exception):
                await self._js.delete_msg(self.options.stream, sequence)

    async def _keep_in_progress(self) -> None:
        """Mark messages held longer than a third of ack_wait as in progress, so that
        JetStream leaves them to this live worker while their batch commits."""
        period = self.options.ack_wait / 3
        while not self._closed.is_set():
            await asyncio.sleep(period)
            cutoff = time.monotonic() - period
            with self._held:
                old = [m for m, since, _ in self._messages.values() if since < cutoff]
            for message in old:
                with contextlib.suppress(Exception):
                    await message.in_progress()
            self.stats.in_progress_sent += len(old)

    # -- the event loop ---------------------------------------------------------------------
    def _call(self, coroutine: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _close_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    async def _connect(self) -> None:
        o = self.options

        def reconnected() -> None:
            self.stats.reconnects += 1

        self._nc = await connect(o, f"iotpipe {o.durable}", reconnected, lambda: self._stopping)
        self._js = self._nc.jetstream()
        await ensure_stream(self._js, o)
        advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{o.stream}.*"
        # A queue group: one worker dead-letters each message, not every worker.
        await self._nc.subscribe(
            advisory, queue=f"iotpipe-{o.stream}-{o.durable}", cb=self._on_max_deliveries
        )

    async def _close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=5)  # the last acks
            await self._nc.close()

    # -- consumers ------------------------------------------------------------------------
    async def _ensure_consumer(self, partition: int | None) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        o = self.options
        name = o.consumer_name(partition)
        limit = o.max_ack_pending * (SHARED_CONSUMER_WORKERS if partition is None else 1)
        config = ConsumerConfig(
            durable_name=name,
            filter_subject=o.filter_subject(partition),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=o.ack_wait,
            max_deliver=o.max_deliver,
            max_ack_pending=limit,
            max_waiting=512,
        )
        try:
            await self._js.add_consumer(o.stream, config)
        except Exception as exc:
            raise NatsError(
                f"cannot create or update the consumer {name} of stream {o.stream}: {_server_error(exc)}"
            ) from None

    # -- pulling ------------------------------------------------------------------------------
    async def _open_lane(self, partition: int | None) -> None:
        await self._ensure_consumer(partition)
        lane = self._lanes[partition] = _Lane(partition)
        lane.task = asyncio.ensure_future(self._pull(lane))

    async def _stop_lanes(self, lanes: list[_Lane]) -> None:
        for lane in lanes:
            lane.stopping = True
        for lane in lanes:
            if lane.task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(lane.task), FETCH_TIMEOUT * 3)

    async def _pull(self, lane: _Lane) -> None:
        from nats.errors import ConnectionClosedError

        o = self.options
        name = o.consumer_name(lane.partition)
        if lane.partition is not None:
            await self._wait_for_takeover(lane, name)
        subscription = None
        while not lane.stopping:
            room = o.max_ack_pending - len(self._messages)
            if room <= 0:
                self._room.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._room.wait(), FETCH_TIMEOUT)
                continue
            try:
                if subscription is None:
                    subscription = await self._js.pull_subscribe_bind(name, stream=o.stream)
                messages = await subscription.fetch(min(o.fetch_batch, room), timeout=FETCH_TIMEOUT)
            except TimeoutError:
                continue
            except ConnectionClosedError:
                return
            except Exception as exc:  # a server restart, a consumer not ready yet
                if not lane.stopping and not self._stopping:
                    log.warning("pulling from %s failed (%r); retrying", name, exc)
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                await self._deliver(message, lane)
        if subscription is not None:
            if not self._stopping:
                await self._deliver_stragglers(subscription, lane)
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _deliver_stragglers(self, subscription: Any, lane: _Lane) -> None:
        """Before handing a partition back: deliver what our last pull request brought
        after its fetch returned (it waits in the subscription's queue). Dropped with the
        subscription, those messages would stay pending for this worker until `ack_wait`,
        and the partition's next owner waits that long before it pulls (measured: three
        workers drained a backlog at 451 msgs/s with ack_wait 30 s, 1,177 with 5 s)."""
        with contextlib.suppress(Exception):
            for message in await subscription.fetch(self.options.fetch_batch, timeout=FETCH_TIMEOUT):
                await self._deliver(message, lane)

    async def _wait_for_takeover(self, lane: _Lane, name: str) -> None:
        """Before pulling a partition another worker held: let its unacknowledged messages
        fall due, so that JetStream redelivers them (first) instead of newer ones."""
        deadline = time.monotonic() + self.options.ack_wait + 1.0
        while not lane.stopping and time.monotonic() < deadline:
            try:
                info = await self._js.consumer_info(self.options.stream, name)
            except Exception:
                await asyncio.sleep(0.5)
                continue
            if not info.num_ack_pending:
                return
            await asyncio.sleep(0.5)

    async def _deliver(self, message: Any, lane: _Lane) -> None:
        if self._stopping and self._abandon:
            return  # not acked: JetStream delivers it again
        subject = message.subject
        if self._prefix_levels:
            subject = subject.split(".", self._prefix_levels)[-1]
        route = self._router.route(subject)
        raw = RawMessage(
            message.data,
            SOURCE,
            subject,
            time.time_ns() // 1000,
            route.format,
            route.device_id,
            route.header,
        )
        raw.acker, raw.ack_token = self, message
        with self._held:
            self._messages[id(message)] = (message, time.monotonic(), lane)
            lane.held += 1
        self.stats.messages += 1
        if route.format == UNMATCHED_TOPIC:
            self.stats.unmatched += 1
        with contextlib.suppress(Exception):
            if message.metadata.num_delivered > 1:
                self.stats.redelivered += 1
        await self._submit(raw)

    async def _submit(self, raw: RawMessage) -> None:
        """Hand the message to the sink; while its queue is full, wait off the loop."""
        sink = self._sink
        assert sink is not None
        try:
            sink.submit(raw, timeout=0)
            return
        except queue.Full:
            pass
        self.stats.queue_full += 1
        now = time.monotonic()
        if now - self._last_queue_warning >= _QUEUE_FULL_LOG_EVERY:
            self._last_queue_warning = now
            log.warning(
                "pipeline queue full (%d messages): the store is slower than JetStream; "
                "pulling no more until it catches up (full %d times so far)",
                sink.queue_depth(),
                self.stats.queue_full,
            )
        while True:
            try:
                await asyncio.to_thread(sink.submit, raw, 1.0)
                break
            except queue.Full:
                if self._abandon:
                    if not isinstance(raw.ack_token, _GivenUp):
                        self._forget(raw.ack_token)
                    return
        self.stats.blocked_seconds += time.monotonic() - now

    async def _on_max_deliveries(self, advisory: Any) -> None:
        """JetStream gave up on a message: dead-letter it with the reason."""
        o = self.options
        try:
            event = orjson.loads(advisory.data)
            consumer = str(event["consumer"])
            sequence, deliveries = int(event["stream_seq"]), int(event["deliveries"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("unreadable JetStream max-deliveries advisory: %r", advisory.data[:200])
            return
        if consumer != o.durable and not consumer.startswith(f"{o.durable}-p"):
            return  # another application's consumer on the same stream
        try:
            stored = await self._js.get_msg(o.stream, sequence)
        except Exception as exc:
            log.error(
                "message %d of stream %s reached max_deliver (%d) and could not be read back to "
                "dead-letter it: %s",
                sequence,
                o.stream,
                deliveries,
                _server_error(exc),
            )
            return
        subject = stored.subject or ""
        if self._prefix_levels:
            subject = subject.split(".", self._prefix_levels)[-1]
        route = self._router.route(subject)
        raw = RawMessage(
            stored.data or b"",
            SOURCE,
            subject,
            time.time_ns() // 1000,
            route.format,
            route.device_id,
            route.header,
            reject=(
                f"JetStream delivered it {deliveries} times (max_deliver {o.max_deliver}, stream {o.stream} "
                f"message {sequence}, consumer {consumer}) and no worker committed it: each worker that took "
                "it stopped or failed before its batch was stored; `iotpipe dlq replay` stores it once "
                "the cause is fixed"
            ),
        )
        raw.acker, raw.ack_token = self, _GivenUp(sequence)
        self.stats.max_deliver_dead_letters += 1
        log.warning(
            "dead-lettering message %d of stream %s: delivered %d times", sequence, o.stream, deliveries
        )
        await self._submit(raw)

    # -- partitions -------------------------------------------------------------------------
    def _keep_balanced(self) -> None:
        while not self._closed.wait(self.options.rebalance_every):
            try:
                self._rebalance()
            except Exception:
                log.exception("balancing NATS partitions failed; trying again")

    def _rebalance(self) -> None:
        """Own a fair share of the partitions: release extras, claim free ones."""
        leases = self._leases
        assert leases is not None
        o = self.options
        if not leases.alive():
            lost = self.owned()
            if lost:
                log.error("the database session holding partitions %s is lost: pulling none of them", lost)
                self._call(self._stop_lanes([self._lanes.pop(p) for p in lost]), 30)
            return
        share = math.ceil(o.partitions / max(1, leases.members()))
        owned = self.owned()
        for partition in owned[share:]:
            self._release(partition)
        if len(owned) >= share:
            return
        for partition in range(o.partitions):
            if len(self.owned()) >= share or self._stopping:
                break
            if partition in self._lanes or not leases.try_acquire(o.lease_name(partition)):
                continue
            if self._on_claim is not None:
                self._on_claim()
            self._call(self._open_lane(partition), CONNECT_TIMEOUT)
            self.stats.partitions_claimed += 1
            log.info("took NATS partition %d (%s)", partition, o.consumer_name(partition))

    def _release(self, partition: int) -> None:
        """Hand a partition back: stop pulling it, let its batch commit, then drop the lease."""
        assert self._leases is not None
        lane = self._lanes[partition]
        self._call(self._stop_lanes([lane]), 30)
        if self._sink is not None:
            self._sink.flush_soon()
        with self._held:
            self._held.wait_for(lambda: lane.held == 0, self._stop_timeout)
        self._call(self._flush(), 10)
        del self._lanes[partition]
        self._leases.release(self.options.lease_name(partition))
        self.stats.partitions_released += 1
        log.info("handed NATS partition %d back (another worker joined)", partition)

    async def _flush(self) -> None:
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=5)


async def connect(
    options: NatsOptions, name: str, reconnected: Callable[[], None], stopping: Callable[[], bool]
) -> Any:
    """A nats-py connection that reconnects for ever; NatsError if the first connect fails."""
    import nats
    from nats.errors import NoServersError

    url = safe_url(options.url)

    async def on_disconnect() -> None:
        if not stopping():
            log.warning("lost the NATS server %s; reconnecting", url)

    async def on_reconnect() -> None:
        reconnected()
        log.info("reconnected to the NATS server %s", url)

    connected = False

    async def on_error(exc: Exception) -> None:
        if connected and not stopping():  # the first connect's failures end in one NatsError
            log.warning("NATS: %s", exc)

    credentials: dict[str, Any] = {}
    if options.user is not None:
        credentials.update(user=options.user, password=options.password)
    if options.token is not None:
        credentials["token"] = options.token
    try:
        nc = await nats.connect(
            options.url,
            name=name,
            connect_timeout=5,
            allow_reconnect=True,
            # A few tries at first (then a clear error); once connected, reconnect for ever.
            max_reconnect_attempts=2,
            reconnect_time_wait=1,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            error_cb=on_error,
            **credentials,
        )
    except (NoServersError, OSError, TimeoutError) as exc:
        raise NatsError(
            f"cannot connect to NATS server {url}: {exc or type(exc).__name__}; "
            "check the URL and that nats-server runs with JetStream"
        ) from None
    except Exception as exc:  # nats-py reports a refused login as a plain Exception
        raise NatsError(f"NATS server {url} refused the connection: {exc}") from None
    nc.options["max_reconnect_attempts"] = -1
    connected = True
    return nc


async def ensure_stream(js: Any, options: NatsOptions) -> None:
    """Create the stream (work queue, file storage, new messages refused when full), or
    check that the one there takes our subjects."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError, ServiceUnavailableError

    o = options
    try:
        info = await js.stream_info(o.stream)
    except NotFoundError:
        info = None
    except (TimeoutError, ServiceUnavailableError) as exc:
        raise NatsError(
            f"NATS server {safe_url(o.url)} answers no JetStream request ({type(exc).__name__}): start "
            "nats-server with JetStream on (-js, or a jetstream block in its config)"
        ) from None
    if info is None:
        config = StreamConfig(
            name=o.stream,
            subjects=o.stream_subjects,
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            max_bytes=o.max_bytes,
            max_age=o.max_age,
        )
        try:
            await js.add_stream(config)
        except Exception as exc:
            raise NatsError(f"cannot create JetStream stream {o.stream}: {_server_error(exc)}") from None
        log.info("created JetStream stream %s for %s", o.stream, ", ".join(o.stream_subjects))
        return
    missing = sorted(set(o.stream_subjects) - set(info.config.subjects or ()))
    if missing:
        hint = "; with partitions, nats-server must map subjects to them (deploy/nats-server.conf)"
        raise NatsError(
            f"JetStream stream {o.stream} exists with subjects {', '.join(info.config.subjects or [])}, "
            f"not {', '.join(missing)}; add them to it (nats stream edit) or name another stream"
            + (hint if o.partitions else "")
        )


def safe_url(url: str) -> str:
    """The URL without credentials, for logs and messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.username + '@' if parts.username else ''}{host}{port}"


def _server_error(exc: Exception) -> str:
    description = getattr(exc, "description", None)
    return str(description or exc or type(exc).__name__)
