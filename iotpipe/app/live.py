"""The App's side of the live feed: the hub (sinks/live.py) over this store, the event
sources it polls, and the backfill a subscription may ask for.

Anomalies, alert changes and device statuses come from the analytics tables, which the
jobs write — in this process or in another one sharing the database — so the hub polls
them (every `LIVE_POLL_SECONDS`, only while someone subscribed to that kind) instead of
being told by the code that wrote them. Readings come from this process's pipeline only:
an `iotpipe serve` that ingests nothing itself shows no live readings of other workers.

The API imports the close codes and types from here (it may not reach below the App).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from iotpipe import limits
from iotpipe.model import MICROS_PER_SECOND, format_micros, now_micros
from iotpipe.sinks.live import (
    ALERTS,
    ANOMALIES,
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_OVERLOAD,
    CLOSE_SLOW,
    CLOSE_UNAUTHORIZED,
    READINGS,
    STATUS,
    Closed,
    LiveClient,
    LiveEvent,
    LiveHub,
    Subscription,
    SubscriptionError,
)

if TYPE_CHECKING:
    from iotpipe.config import Settings
    from iotpipe.store import Store

__all__ = [
    "CLOSE_BAD_REQUEST",
    "CLOSE_FORBIDDEN",
    "CLOSE_GOING_AWAY",
    "CLOSE_OVERLOAD",
    "CLOSE_SLOW",
    "CLOSE_UNAUTHORIZED",
    "Closed",
    "LiveClient",
    "LiveHub",
    "Subscription",
    "SubscriptionError",
    "backfill",
    "make_hub",
]

POLL_LIMIT = 1000  # rows one poll reads at most; the rest come at the next
STATUS_EVERY = 5.0  # seconds between two looks at the fleet's statuses


class AnomalySource:
    """New rows of the anomalies table, as /api/v1/anomalies shows them."""

    kind = ANOMALIES

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cursor: int | None = None

    def poll(self) -> list[LiveEvent]:
        from iotpipe.analytics.anomalies import anomalies_after, last_anomaly_id
        from iotpipe.app import _anomaly_view

        if self.cursor is None:
            self.cursor = last_anomaly_id(self.store)
            return []
        rows = anomalies_after(self.store, self.cursor, POLL_LIMIT)
        if rows:
            self.cursor = rows[-1]["id"]
        return [LiveEvent(ANOMALIES, row["device_id"], row["metric"], _anomaly_view(row)) for row in rows]

    def reset(self) -> None:
        self.cursor = None


class AlertSource:
    """Alert events (opened, acknowledged, resolved), each with its alert."""

    kind = ALERTS

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cursor: int | None = None

    def poll(self) -> list[LiveEvent]:
        from iotpipe.analytics.alerts import alert_events_after, last_alert_event_id

        if self.cursor is None:
            self.cursor = last_alert_event_id(self.store)
            return []
        events = alert_events_after(self.store, self.cursor, POLL_LIMIT)
        if events:
            self.cursor = events[-1]["id"]
        return [
            LiveEvent(ALERTS, e["alert"]["device_id"], e["alert"]["metric"], e, key=e["alert"]["id"])
            for e in events
        ]

    def reset(self) -> None:
        self.cursor = None


class StatusSource:
    """Devices whose status (online, stale, offline) changed, and devices new to the fleet.

    A status is judged from the last reading when asked (analytics/fleet.py), so time
    alone turns a device stale or offline: the source compares snapshots."""

    kind = STATUS

    def __init__(self, store: Store, settings: Settings, every: float = STATUS_EVERY) -> None:
        self.store = store
        self.settings = settings
        self.every = every
        self.known: dict[str, str] | None = None
        self._last = 0.0

    def poll(self) -> list[LiveEvent]:
        from iotpipe.analytics.fleet import device_rows, status_of

        if self.known is not None and time.monotonic() - self._last < self.every:
            return []
        self._last = time.monotonic()
        now = now_micros()
        config = self.settings.analytics
        rows = device_rows(self.store)
        current = {row["device_id"]: (status_of(row, config, now), row["last_seen"]) for row in rows}
        previous, self.known = self.known, {device: status for device, (status, _) in current.items()}
        if previous is None:
            return []
        return [
            LiveEvent(
                STATUS,
                device,
                None,
                {
                    "device_id": device,
                    "status": status,
                    "previous": previous.get(device),
                    "last_seen": format_micros(last_seen) if last_seen is not None else None,
                },
                key=device,
            )
            for device, (status, last_seen) in current.items()
            if previous.get(device) != status
        ]

    def reset(self) -> None:
        self.known = None


def make_hub(settings: Settings, store: Store) -> LiveHub:
    """The hub with its event sources over this store (`[api]` live settings)."""
    config = settings.api
    return LiveHub(
        sources=[AnomalySource(store), AlertSource(store), StatusSource(store, settings)],
        max_pending=config.live_max_pending,
        max_lag=config.live_max_lag_seconds,
        max_backlog=limits.LIVE_MAX_BACKLOG,
        poll_interval=limits.LIVE_POLL_SECONDS,
    )


def backfill(
    store: Store, subscription: Subscription, limit: int
) -> tuple[dict[str, Any], dict[tuple[str, str], int]]:
    """The subscribed readings of the last `backfill_seconds` as one frame, and the newest
    time (ms) it holds per series, for LiveClient.release()."""
    end = now_micros()
    start = end - int(subscription.backfill_seconds * MICROS_PER_SECOND)
    names = {sid: key for sid, key in store.series_names().items() if subscription.matches(key[0], key[1])}
    rows = store.readings_since(list(names), start, limit + 1)  # by time: each series in order
    truncated = len(rows) > limit
    if truncated:
        rows = rows[1:]  # the oldest one goes: a backfill keeps the newest readings
    columns: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for sid, at, value in rows:
        key = names[sid]
        found = columns.get(key)
        if found is None:
            found = columns[key] = ([], [])
        found[0].append(at // 1000)
        found[1].append(value)
    frame = {
        "type": "backfill",
        "start": start // 1000,
        "end": end // 1000,
        "truncated": truncated,
        READINGS: [
            {"device_id": device, "metric": metric, "times": times, "values": values}
            for (device, metric), (times, values) in sorted(columns.items())
        ],
    }
    return frame, {key: times[-1] for key, (times, _) in columns.items() if times}
