"""The live feed's hub: committed readings and analytics events, fanned out to subscribers.

Modelled on Home Assistant's websocket API (history/stream and its connection's bounded
queue):
- The hub is an after-commit observer of the pipeline, so it only ever sees stored
  readings. Its call is O(1) per batch: the batch's reading groups go onto the hub's
  backlog and the hub's own thread does the rest, so a subscriber never slows ingest.
  (With no subscriber, the call returns at once.)
- Anomalies, alert changes and device status changes come from the analytics tables,
  which jobs in this process or another write: the hub polls them on a timer
  (`EventSource`s, made in app/wiring.py), only while a subscriber wants that kind.
- Each subscriber (`LiveClient`) has a subscription (device and metric globs, event
  kinds) and one pending update that new matches are merged into (coalescing: readings
  by series, device statuses by device, the newest winning). Its sender takes it at most
  every `coalesce` seconds, `max_frame` readings per frame. A client cannot keep up when
  it has left updates waiting for over `max_lag` seconds, or when more than
  `max_pending` wait (the bound on its memory): it is closed with CLOSE_SLOW, and the
  drop is counted. A batch larger than a frame does not make a reading client slow.
- A subscription may ask for a backfill: the client holds live updates while its
  history is read, then `release()` drops the held readings the history already held,
  so history comes first, then live updates, each reading once.
- If the hub's own backlog passes `max_backlog` readings (the machine cannot fan out as
  fast as it ingests), every client is closed with CLOSE_OVERLOAD rather than letting
  memory grow or ingest wait.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from iotpipe import limits
from iotpipe.model import Micros, WriteBatch, WriteResult

log = logging.getLogger(__name__)

READINGS, ANOMALIES, ALERTS, STATUS = "readings", "anomalies", "alerts", "status"
KINDS = (READINGS, ANOMALIES, ALERTS, STATUS)

# WebSocket close codes (4000-4999 are the application's; docs/api.md lists them).
CLOSE_GOING_AWAY = 1001  # the server is stopping
CLOSE_OVERLOAD = 1013  # "try again later": the hub could not fan out as fast as ingest
CLOSE_BAD_REQUEST = 4400  # the subscription message is invalid
CLOSE_UNAUTHORIZED = 4401  # no key, or an unknown, revoked or expired one
CLOSE_FORBIDDEN = 4403  # the key may not read
CLOSE_SLOW = 4429  # the client did not read fast enough: too many updates waiting

MAX_PATTERNS = 100  # globs of one kind in a subscription
MAX_MATCH_CACHE = 100_000  # (device, metric) answers a subscription remembers


class SubscriptionError(ValueError):
    """A subscription message that cannot be used; the text says what to change."""


@dataclass(frozen=True)
class Subscription:
    """What a client wants: device and metric globs (`*`, `?`, `[...]`), event kinds,
    and optionally the last `backfill_seconds` of readings before the live ones."""

    devices: tuple[str, ...] = ("*",)
    metrics: tuple[str, ...] = ("*",)
    kinds: frozenset[str] = frozenset(KINDS)
    backfill_seconds: float = 0.0
    _device_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _metric_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_device_re", _globs(self.devices))
        object.__setattr__(self, "_metric_re", _globs(self.metrics))

    @classmethod
    def parse(
        cls, message: Any, max_backfill_seconds: float = limits.LIVE_MAX_BACKFILL_SECONDS
    ) -> Subscription:
        """From a client's `{"type": "subscribe", ...}` message; SubscriptionError otherwise."""
        if not isinstance(message, dict):
            raise SubscriptionError(
                'a subscription is a JSON object like {"type": "subscribe", "devices": ["*"]}'
            )
        unknown = set(message) - {"type", "devices", "metrics", "events", "backfill_minutes", "key", "id"}
        if unknown:
            raise SubscriptionError(
                f"unknown field(s) {', '.join(sorted(unknown))} in the subscription; "
                "known: devices, metrics, events, backfill_minutes"
            )
        devices = _patterns(message.get("devices", ["*"]), "devices")
        metrics = _patterns(message.get("metrics", ["*"]), "metrics")
        events = message.get("events", list(KINDS))
        if not isinstance(events, list) or not events or any(e not in KINDS for e in events):
            raise SubscriptionError(f"events must be a non-empty list of {', '.join(KINDS)}; got {events!r}")
        minutes = message.get("backfill_minutes", 0)
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes < 0:
            raise SubscriptionError(f"backfill_minutes must be a number of minutes >= 0; got {minutes!r}")
        if minutes * 60 > max_backfill_seconds:
            raise SubscriptionError(
                f"backfill_minutes is at most {max_backfill_seconds / 60:g}; ask the history API "
                "(/api/v1/devices/{id}/series/{metric}) for longer ranges"
            )
        return cls(devices, metrics, frozenset(events), float(minutes) * 60)

    def matches(self, device_id: str, metric: str | None = None) -> bool:
        """Whether a device (and, if given, its metric) is subscribed to."""
        if self._device_re.fullmatch(device_id) is None:
            return False
        return metric is None or self._metric_re.fullmatch(metric) is not None

    def wants(self, event: LiveEvent) -> bool:
        return event.kind in self.kinds and self.matches(event.device_id, event.metric)

    def describe(self) -> dict[str, Any]:
        return {
            "devices": list(self.devices),
            "metrics": list(self.metrics),
            "events": [k for k in KINDS if k in self.kinds],
            "backfill_minutes": self.backfill_seconds / 60,
        }


def _patterns(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SubscriptionError(
            f'{name} must be a non-empty list of ids or globs like "pump-*"; got {value!r}'
        )
    if len(value) > MAX_PATTERNS:
        raise SubscriptionError(f"{name} holds {len(value)} patterns; at most {MAX_PATTERNS}")
    return tuple(value)


def _globs(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.DOTALL)


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """Something an analytics table gained: an anomaly, an alert change, a status change.
    `key` coalesces: a pending event with the same kind and key is replaced by a newer one."""

    kind: str
    device_id: str
    metric: str | None
    body: dict[str, Any]
    key: Any = None


class EventSource(Protocol):
    """A poller of one event kind (app/wiring.py makes them over the store). The first
    poll after a reset sets its cursor at what exists and returns nothing: only changes
    are news. The hub resets a source while no client wants its kind, so a new client
    is not sent what happened while nobody listened."""

    kind: str

    def poll(self) -> list[LiveEvent]: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class Closed:
    """Why a client was closed, as its WebSocket close frame says it."""

    code: int
    reason: str


SeriesKey = tuple[str, str]  # (device_id, metric)


class LiveClient:
    """One subscriber: its pending (coalesced) update, and how to wake its sender.

    The hub's thread adds to it; the sender (in the API's event loop) takes from it.
    `wake` is called, from the hub's thread, whenever there is something to take or the
    client was closed; it must be cheap and thread-safe (e.g. loop.call_soon_threadsafe).
    """

    def __init__(self, subscription: Subscription, wake: Callable[[], None], holding: bool = False) -> None:
        self.subscription = subscription
        self._wake = wake
        self._lock = threading.Lock()
        self._readings: dict[SeriesKey, tuple[list[int], list[float]]] = {}
        self._events: dict[tuple[str, Any], dict[str, Any]] = {}  # insertion-ordered
        self._event_seq = 0
        self.pending = 0
        self.waiting_since: float | None = None  # monotonic time its oldest pending update came
        self.holding = holding  # True while its backfill is read: updates wait
        self.closed: Closed | None = None
        self.sent_updates = 0
        self._match: dict[tuple[str, str | None], bool] = {}

    def matches(self, device_id: str, metric: str | None = None) -> bool:
        """Cached: a fleet has few series and each arrives again and again."""
        key = (device_id, metric)
        found = self._match.get(key)
        if found is None:
            if len(self._match) >= MAX_MATCH_CACHE:
                self._match.clear()
            found = self._match[key] = self.subscription.matches(device_id, metric)
        return found

    # -- the hub's side ---------------------------------------------------------------------
    def add_readings(self, device_id: str, readings: Iterable[tuple[str, Micros, float]]) -> int:
        """Merge a device's committed readings (those subscribed to); how many were added."""
        added = 0
        with self._lock:
            if self.closed is not None:
                return 0
            for metric, at, value in readings:
                if not self.matches(device_id, metric):
                    continue
                key = (device_id, metric)
                columns = self._readings.get(key)
                if columns is None:
                    columns = self._readings[key] = ([], [])
                columns[0].append(at // 1000)
                columns[1].append(value)
                added += 1
            self._pend(added)
        return added

    def _pend(self, count: int) -> None:
        if count and not self.pending:
            self.waiting_since = time.monotonic()
        self.pending += count

    def add_event(self, event: LiveEvent) -> bool:
        with self._lock:
            if self.closed is not None or not self.subscription.wants(event):
                return False
            if event.key is None:
                self._event_seq += 1
                key: tuple[str, Any] = (event.kind, ("seq", self._event_seq))
            else:
                key = (event.kind, event.key)
                if key in self._events:
                    del self._events[key]  # replaced by the newer one, moved to the end
                    self.pending -= 1
            self._events[key] = event.body
            self._pend(1)
        return True

    def close(self, closed: Closed) -> bool:
        """Mark closed and drop what was pending; False if it already was."""
        with self._lock:
            if self.closed is not None:
                return False
            self.closed = closed
            self._readings.clear()
            self._events.clear()
            self.pending = 0
            self.waiting_since = None
        self.wake()
        return True

    def wake(self) -> None:
        try:
            self._wake()
        except Exception:  # the client's loop is gone: it is being closed anyway
            log.debug("waking a live client failed", exc_info=True)

    # -- the sender's side ------------------------------------------------------------------
    def take(self, max_readings: int = limits.LIVE_MAX_FRAME) -> dict[str, Any] | None:
        """The pending update as one frame, at most `max_readings` readings of it (the rest
        stays for the next frame); None if nothing is pending, or while holding."""
        with self._lock:
            if self.holding or self.closed is not None or not self.pending:
                return None
            readings, left = self._take_readings(max_readings)
            events, self._events = self._events, {}
            taken = sum(len(times) for times, _ in readings.values()) + len(events)
            self.pending -= taken
            # Something taken is progress: the wait of what is left starts now.
            self.waiting_since = time.monotonic() if self.pending else None
        self.sent_updates += taken
        frame: dict[str, Any] = {"type": "update"}
        if readings:
            frame[READINGS] = [
                {"device_id": device, "metric": metric, "times": times, "values": values}
                for (device, metric), (times, values) in readings.items()
            ]
        for (kind, _), body in events.items():
            frame.setdefault(kind, []).append(body)
        if left:
            self.wake()  # the rest goes in the next frame
        return frame

    def _take_readings(self, limit: int) -> tuple[dict[SeriesKey, tuple[list[int], list[float]]], bool]:
        """Up to `limit` pending readings, oldest series first; whether some are left."""
        taken: dict[SeriesKey, tuple[list[int], list[float]]] = {}
        room = limit
        for key in list(self._readings):
            times, values = self._readings[key]
            if len(times) <= room:
                taken[key] = self._readings.pop(key)
                room -= len(times)
            else:
                if room:
                    taken[key] = (times[:room], values[:room])
                    del times[:room], values[:room]
                return taken, True
        return taken, False

    def release(self, backfilled: dict[SeriesKey, int]) -> None:
        """End the hold after the backfill was sent: drop held readings at or before the
        newest time the backfill gave for their series (ms), so none arrives twice."""
        with self._lock:
            for key, (times, values) in list(self._readings.items()):
                newest = backfilled.get(key)
                if newest is None:
                    continue
                kept = [(t, v) for t, v in zip(times, values, strict=True) if t > newest]
                self.pending -= len(times) - len(kept)
                if kept:
                    self._readings[key] = ([t for t, _ in kept], [v for _, v in kept])
                else:
                    del self._readings[key]
            self.holding = False
            self.waiting_since = time.monotonic() if self.pending else None
        self.wake()


# One device's readings: (device_id, [(metric, time µs, value), ...]), as WriteBatch.groups.
Group = tuple[str, list[tuple[str, Micros, float]]]
# Readings in columns: (devices, metrics, times µs, values), each a sequence with to_pylist()
# (the pyarrow arrays of a bulk decoder's blocks; this module does not need to know).
Columns = tuple[Any, Any, Any, Any]


# A commit's readings as LiveHub.hand_over takes them: groups, columns, their count.
Readings = tuple[list[Group], list[Columns], int]


def committed_readings(batch: WriteBatch) -> Readings:
    """A batch's readings for the live feed: those decoded one by one (WriteBatch.groups),
    and those a bulk decoder left in columns (WriteBatch.blocks), as plain columns."""
    columns = [(b.devices, b.metrics, b.times, b.values) for b in batch.blocks]
    return batch.groups, columns, batch.reading_count


def column_groups(columns: list[Columns]) -> list[Group]:
    """Columns as groups, by device in order of first appearance."""
    found: dict[str, list[tuple[str, Micros, float]]] = {}
    for devices, metrics, times, values in columns:
        rows = zip(
            devices.to_pylist(), metrics.to_pylist(), times.to_pylist(), values.to_pylist(), strict=True
        )
        for device_id, metric, at, value in rows:
            found.setdefault(device_id, []).append((metric, at, value))
    return list(found.items())


class LiveHub:
    """The after-commit observer and the fan-out thread. `start()` before use, `stop()` after."""

    name = "live"

    def __init__(
        self,
        sources: Sequence[EventSource] = (),
        max_pending: int = limits.LIVE_MAX_PENDING,
        max_lag: float = limits.LIVE_MAX_LAG_SECONDS,
        max_backlog: int = limits.LIVE_MAX_BACKLOG,
        poll_interval: float = limits.LIVE_POLL_SECONDS,
    ) -> None:
        self.sources = list(sources)
        self.max_pending = max_pending
        self.max_lag = max_lag
        self.max_backlog = max_backlog
        self.poll_interval = poll_interval
        self._clients: set[LiveClient] = set()
        self._clients_lock = threading.Lock()
        self._backlog: deque[tuple[list[Group], list[Columns], int]] = deque()
        self._backlog_readings = 0
        self._backlog_lock = threading.Lock()
        self._work = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._polled: dict[str, bool] = {}  # kind -> its source has set its cursor
        self._last_poll = 0.0
        self._poll_lock = threading.Lock()  # sources are polled by the hub's thread and by subscribe()
        # Counters for /metrics.
        self.dropped: dict[str, int] = {"slow": 0, "overload": 0}
        self.updates_dropped = 0
        self.readings_published = 0
        # Told the number of clients whenever it changes (app/workers.py: whether the other
        # API processes should relay their readings here).
        self.on_clients: Callable[[int], None] | None = None

    # -- the pipeline's side ----------------------------------------------------------------
    def __call__(self, batch: WriteBatch, result: WriteResult) -> None:
        """After a commit: hand the batch's readings over, in O(1). Never blocks."""
        if self._clients:
            self.hand_over(*committed_readings(batch))

    def hand_over(self, groups: list[Group], columns: list[Columns], count: int) -> None:
        """Committed readings for the clients (from this process's pipelines, or relayed
        from another API process): those decoded one by one, grouped by device, and those
        a bulk decoder left in columns (HTTP line protocol, CSV). Queued in O(1); the hub's
        thread makes the columns rows, and only while someone listens."""
        if not self._clients or not (groups or columns):
            return
        overloaded = False
        with self._backlog_lock:
            self._backlog.append((groups, columns, count))
            self._backlog_readings += count
            if self._backlog_readings > self.max_backlog:
                self._backlog.clear()
                self._backlog_readings = 0
                overloaded = True
        if overloaded:
            self._close_all(
                Closed(
                    CLOSE_OVERLOAD,
                    "the server cannot fan out readings as fast as it stores them; reconnect later",
                ),
                "overload",
            )
        self._work.set()

    # -- subscribers ------------------------------------------------------------------------
    def subscribe(self, subscription: Subscription, wake: Callable[[], None]) -> LiveClient:
        """A new client; it holds live updates until `release()` if it asked for a backfill.
        The event sources it wants have set their cursors when this returns, so whatever
        happens from then on reaches it (this may query the database: call it off the
        event loop)."""
        client = LiveClient(subscription, wake, holding=subscription.backfill_seconds > 0)
        with self._clients_lock:
            self._clients = self._clients | {client}  # copy on write: the observer reads it unlocked
        self._tell_clients()
        with self._poll_lock:
            for source in self.sources:
                if source.kind in subscription.kinds and not self._polled.get(source.kind):
                    self.publish(source.poll())  # a first poll: it sets the cursor
                    self._polled[source.kind] = True
        return client

    def unsubscribe(self, client: LiveClient) -> None:
        with self._clients_lock:
            self._clients = self._clients - {client}
        self._tell_clients()

    def _tell_clients(self) -> None:
        if self.on_clients is not None:
            self.on_clients(len(self._clients))

    @property
    def clients(self) -> int:
        return len(self._clients)

    def _close_all(self, closed: Closed, reason: str | None) -> None:
        for client in list(self._clients):
            self._drop(client, closed, reason)

    def _drop(self, client: LiveClient, closed: Closed, reason: str | None) -> None:
        """Close a client; `reason` names the drop counted, None for a normal close."""
        pending = client.pending
        if client.close(closed):
            self.unsubscribe(client)
            if reason is not None:
                self.dropped[reason] = self.dropped.get(reason, 0) + 1
                self.updates_dropped += pending
                log.warning("live feed: closed a client (%s, %d updates dropped)", reason, pending)

    # -- the hub's thread -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="iotpipe-live", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._work.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._close_all(Closed(CLOSE_GOING_AWAY, "the server is stopping"), None)

    def describe(self) -> str:
        return f"live feed ({self.clients} clients)"

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._work.wait(self.poll_interval)
            self._work.clear()
            try:
                self.drain()
                self.check_lag()
                if time.monotonic() - self._last_poll >= self.poll_interval:
                    self.poll()
            except Exception:  # the feed must outlive a bad poll (e.g. the database is down)
                log.exception("live feed: fan-out failed; carrying on")

    def drain(self) -> int:
        """Fan the backlog out to the clients; the readings handed over (tests call this)."""
        handed = 0
        while True:
            with self._backlog_lock:
                if not self._backlog:
                    return handed
                groups, columns, count = self._backlog.popleft()
                self._backlog_readings -= count
            self.readings_published += count
            handed += self._fan_out([*groups, *column_groups(columns)])

    def _fan_out(self, groups: list[Group]) -> int:
        handed = 0
        for client in list(self._clients):
            if READINGS not in client.subscription.kinds:
                continue
            added = 0
            for device_id, readings in groups:
                if client.matches(device_id):
                    added += client.add_readings(device_id, readings)
            if added:
                handed += added
                self._settle(client)
        return handed

    def poll(self) -> None:
        """Ask each event source wanted by some client for news, and hand it out."""
        self._last_poll = time.monotonic()
        with self._poll_lock:
            clients = list(self._clients)
            for source in self.sources:
                wanted = [c for c in clients if source.kind in c.subscription.kinds]
                if not wanted:
                    if self._polled.pop(source.kind, False):
                        source.reset()
                    continue
                events = source.poll()
                self._polled[source.kind] = True
                for client in wanted:
                    if sum(client.add_event(event) for event in events):
                        self._settle(client)

    def publish(self, events: Iterable[LiveEvent]) -> None:
        """Hand events to the clients now (what a poll does; also for callers that know first)."""
        for client in list(self._clients):
            if sum(client.add_event(event) for event in events):
                self._settle(client)

    def _settle(self, client: LiveClient) -> None:
        """After adding to a client: close it if it fell too far behind, else wake it."""
        if client.pending > self.max_pending:
            reason = f"too slow: over {self.max_pending} updates waiting; read faster or subscribe to less"
            self._drop(client, Closed(CLOSE_SLOW, reason), "slow")
        elif not client.holding:
            client.wake()

    def check_lag(self, now: float | None = None) -> None:
        """Close the clients that left updates untaken for over `max_lag` seconds."""
        now = time.monotonic() if now is None else now
        for client in list(self._clients):
            since = client.waiting_since
            if since is not None and not client.holding and now - since > self.max_lag:
                reason = f"too slow: updates waited over {self.max_lag:g} s; read faster or subscribe to less"
                self._drop(client, Closed(CLOSE_SLOW, reason), "slow")


def hub_figures(hub: LiveHub) -> dict[str, Any]:
    """What LiveMetrics shows of one hub, as plain data (another API process sends its own)."""
    return {
        "clients": hub.clients,
        "dropped": dict(hub.dropped),
        "updates_dropped": hub.updates_dropped,
        "readings_published": hub.readings_published,
    }


class LiveMetrics:
    """The hub's figures for /metrics (a prometheus_client collector): clients now,
    clients dropped by reason and the updates they still had waiting; summed with the
    figures `others()` gives, those of the other API processes (app/workers.py)."""

    def __init__(self, hub: LiveHub, others: Callable[[], list[dict[str, Any]]] = list) -> None:
        self.hub = hub
        self.others = others

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        hubs = [hub_figures(self.hub), *self.others()]
        dropped_by: dict[str, int] = {}
        for figures in hubs:
            for reason, count in figures["dropped"].items():
                dropped_by[reason] = dropped_by.get(reason, 0) + count
        yield GaugeMetricFamily(
            "iotpipe_live_clients",
            "Clients subscribed to the live feed.",
            value=sum(f["clients"] for f in hubs),
        )
        dropped = CounterMetricFamily(
            "iotpipe_live_clients_dropped",
            "Live-feed clients closed by the server: slow (did not read fast enough, close code "
            "4429) or overload (the hub fell behind ingest, 1013).",
            labels=["reason"],
        )
        for reason, count in sorted(dropped_by.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily(
            "iotpipe_live_updates_dropped",
            "Updates that were waiting for the live-feed clients dropped.",
            value=sum(f["updates_dropped"] for f in hubs),
        )
        yield CounterMetricFamily(
            "iotpipe_live_readings",
            "Committed readings the live feed fanned out to its clients.",
            value=sum(f["readings_published"] for f in hubs),
        )
