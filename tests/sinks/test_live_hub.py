"""The live feed's hub: subscriptions with globs and kinds, coalesced updates, backfill
then live with no reading twice, slow clients closed and counted, ingest never waits."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from iotpipe.model import WriteBatch, WriteResult
from iotpipe.sinks.live import (
    CLOSE_OVERLOAD,
    CLOSE_SLOW,
    LiveClient,
    LiveEvent,
    LiveHub,
    Subscription,
    SubscriptionError,
)

MS = 1000  # µs per ms


def batch(*groups: tuple[str, list[tuple[str, int, float]]]) -> WriteBatch:
    found = WriteBatch(groups=list(groups))
    found.reading_count = sum(len(readings) for _, readings in groups)
    return found


def committed(hub: LiveHub, *groups: tuple[str, list[tuple[str, int, float]]]) -> None:
    """What the pipeline does after a commit, then the hub's thread's work."""
    hub(batch(*groups), WriteResult(stored=0, duplicates=0))
    hub.drain()


def subscribe(hub: LiveHub, **message: Any) -> LiveClient:
    return hub.subscribe(Subscription.parse({"type": "subscribe", **message}), lambda: None)


# -- subscriptions -------------------------------------------------------------------------
def test_device_and_metric_globs_select_series() -> None:
    subscription = Subscription(devices=("pump-*", "meter-3"), metrics=("temp?rature", "p[rs]*"))
    assert subscription.matches("pump-7", "temperature")
    assert subscription.matches("meter-3", "pressure")
    assert not subscription.matches("meter-4", "temperature")
    assert not subscription.matches("pump-7", "humidity")
    assert not subscription.matches("xpump-7", "temperature")  # a glob matches the whole id
    assert subscription.matches("pump-7")  # a device-level question ignores metrics


def test_a_subscription_defaults_to_everything_and_every_kind() -> None:
    subscription = Subscription.parse({"type": "subscribe"})
    assert subscription.matches("any device", "any metric")
    assert subscription.describe()["events"] == ["readings", "anomalies", "alerts", "status"]


def test_event_kinds_and_device_select_events() -> None:
    subscription = Subscription.parse({"devices": ["pump-*"], "metrics": ["pressure"], "events": ["alerts"]})
    alert = LiveEvent("alerts", "pump-1", "pressure", {"id": 1})
    assert subscription.wants(alert)
    assert subscription.wants(LiveEvent("alerts", "pump-1", None, {"id": 2}))  # device-wide alert
    assert not subscription.wants(LiveEvent("alerts", "pump-1", "temperature", {"id": 3}))
    assert not subscription.wants(LiveEvent("anomalies", "pump-1", "pressure", {"id": 4}))
    assert not subscription.wants(LiveEvent("alerts", "meter-1", "pressure", {"id": 5}))


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ({"devices": []}, "devices must be a non-empty list"),
        ({"devices": [3]}, "devices must be a non-empty list"),
        ({"metrics": "temperature", "events": ["weather"]}, "events must be a non-empty list of readings"),
        ({"backfill_minutes": -1}, "backfill_minutes must be a number of minutes >= 0"),
        ({"backfill_minutes": 61}, "backfill_minutes is at most 60"),
        ({"device": ["pump-1"]}, "unknown field(s) device"),
        ([1, 2], "a subscription is a JSON object"),
    ],
)
def test_a_bad_subscription_says_what_to_change(message: Any, says: str) -> None:
    with pytest.raises(SubscriptionError, match=None) as caught:
        Subscription.parse(message)
    assert says in str(caught.value)


# -- readings ------------------------------------------------------------------------------
def test_a_client_gets_only_the_readings_it_subscribed_to_as_series_columns() -> None:
    hub = LiveHub()
    client = subscribe(hub, devices=["pump-*"], metrics=["temperature"])
    committed(
        hub,
        ("pump-1", [("temperature", 1_000 * MS, 20.5), ("pressure", 1_000 * MS, 3.0)]),
        ("meter-1", [("temperature", 1_000 * MS, 18.0)]),
        ("pump-1", [("temperature", 2_000 * MS, 20.7)]),
    )
    assert client.take() == {
        "type": "update",
        "readings": [
            {"device_id": "pump-1", "metric": "temperature", "times": [1_000, 2_000], "values": [20.5, 20.7]}
        ],
    }
    assert client.take() is None  # taken: nothing pending


def test_batches_committed_between_two_takes_coalesce_into_one_update() -> None:
    hub = LiveHub()
    client = subscribe(hub)
    for second in range(5):
        committed(hub, ("pump-1", [("temperature", second * 1_000 * MS, float(second))]))
    frame = client.take()
    assert frame is not None
    assert frame["readings"] == [
        {
            "device_id": "pump-1",
            "metric": "temperature",
            "times": [0, 1000, 2000, 3000, 4000],
            "values": [0.0, 1.0, 2.0, 3.0, 4.0],
        }
    ]


def test_status_changes_of_a_device_coalesce_to_the_newest() -> None:
    hub = LiveHub()
    client = subscribe(hub, events=["status"])
    hub.publish(
        [LiveEvent("status", "pump-1", None, {"device_id": "pump-1", "status": "stale"}, key="pump-1")]
    )
    hub.publish(
        [LiveEvent("status", "pump-2", None, {"device_id": "pump-2", "status": "offline"}, key="pump-2")]
    )
    hub.publish(
        [LiveEvent("status", "pump-1", None, {"device_id": "pump-1", "status": "offline"}, key="pump-1")]
    )
    assert client.pending == 2
    frame = client.take()
    assert frame == {
        "type": "update",
        "status": [
            {"device_id": "pump-2", "status": "offline"},
            {"device_id": "pump-1", "status": "offline"},
        ],
    }


def test_the_observer_only_hands_the_batch_over() -> None:
    hub = LiveHub()
    client = subscribe(hub)
    hub(batch(("pump-1", [("temperature", MS, 1.0)] * 1000)), WriteResult(stored=1000, duplicates=0))
    assert client.pending == 0  # nothing fanned out in the committing thread
    assert hub.drain() == 1000
    assert client.pending == 1000


def test_without_clients_the_observer_keeps_nothing() -> None:
    hub = LiveHub()
    hub(batch(("pump-1", [("temperature", MS, 1.0)])), WriteResult(stored=1, duplicates=0))
    assert hub.drain() == 0


# -- slow clients --------------------------------------------------------------------------
def test_a_client_too_far_behind_is_closed_with_the_slow_code_and_counted() -> None:
    hub = LiveHub(max_pending=10)
    slow = subscribe(hub)
    reader = subscribe(hub)
    for second in range(3):
        committed(hub, ("pump-1", [("temperature", (second * 4 + i) * MS, 1.0) for i in range(4)]))
        assert reader.take() is not None  # this one keeps up
    assert slow.closed is not None
    assert slow.closed.code == CLOSE_SLOW
    assert "over 10 updates waiting" in slow.closed.reason
    assert hub.dropped["slow"] == 1
    assert hub.updates_dropped == 12
    assert slow.pending == 0 and slow.take() is None  # what it held is released
    assert hub.clients == 1 and reader.closed is None
    committed(hub, ("pump-1", [("temperature", 99 * MS, 1.0)]))
    assert slow.pending == 0


def test_a_client_that_leaves_updates_waiting_too_long_is_closed_as_slow() -> None:
    hub = LiveHub(max_lag=10.0)
    stuck, reader = subscribe(hub), subscribe(hub)
    committed(hub, ("pump-1", [("temperature", MS, 1.0)]))
    assert stuck.waiting_since is not None
    assert reader.take() is not None and reader.waiting_since is None
    hub.check_lag(now=stuck.waiting_since + 9.0)
    assert stuck.closed is None  # not yet
    hub.check_lag(now=stuck.waiting_since + 10.5)
    assert stuck.closed is not None and stuck.closed.code == CLOSE_SLOW
    assert "waited over 10 s" in stuck.closed.reason
    assert reader.closed is None
    assert hub.dropped["slow"] == 1


def test_a_batch_larger_than_a_frame_is_sent_over_several_frames() -> None:
    hub = LiveHub(max_pending=100_000)
    woken: list[int] = []
    client = hub.subscribe(Subscription(), lambda: woken.append(1))
    committed(
        hub,
        ("pump-1", [("temperature", t * MS, float(t)) for t in range(25_000)]),
        ("pump-2", [("temperature", t * MS, float(t)) for t in range(5_000)]),
    )
    sizes = []
    while (frame := client.take(max_readings=10_000)) is not None:
        sizes.append(sum(len(series["times"]) for series in frame["readings"]))
    assert sizes == [10_000, 10_000, 10_000]
    assert client.closed is None and client.pending == 0
    assert len(woken) >= 3  # each partial take wakes the sender for the rest


def test_a_backlog_the_hub_cannot_fan_out_closes_every_client_not_ingest() -> None:
    hub = LiveHub(max_backlog=100)
    first, second = subscribe(hub), subscribe(hub)
    for _ in range(3):  # the hub's thread is not draining: the backlog grows
        hub(batch(("pump-1", [("temperature", MS, 1.0)] * 40)), WriteResult(stored=40, duplicates=0))
    assert first.closed is not None and first.closed.code == CLOSE_OVERLOAD
    assert second.closed is not None and second.closed.code == CLOSE_OVERLOAD
    assert hub.dropped["overload"] == 2
    assert hub.drain() == 0  # the backlog was let go


def test_a_slow_client_never_blocks_the_committing_thread() -> None:
    hub = LiveHub(max_pending=1_000, poll_interval=0.05)
    hub.start()
    try:
        stuck = hub.subscribe(Subscription(), lambda: None)  # never takes
        done = threading.Event()

        def commit_many() -> None:
            for n in range(200):
                hub(
                    batch(("pump-1", [("temperature", (n * 100 + i) * MS, 1.0) for i in range(100)])),
                    WriteResult(100, 0),
                )
            done.set()

        threading.Thread(target=commit_many).start()
        assert done.wait(10)
        for _ in range(100):
            if stuck.closed is not None:
                break
            threading.Event().wait(0.05)
        assert stuck.closed is not None and stuck.closed.code == CLOSE_SLOW
    finally:
        hub.stop()


# -- backfill then live --------------------------------------------------------------------
def test_backfill_comes_first_then_live_readings_none_twice() -> None:
    hub = LiveHub()
    client = subscribe(hub, backfill_minutes=10)
    assert client.holding
    # Committed while the backfill is read: 1-3 s are in the history it returns, 4-5 s not.
    committed(hub, ("pump-1", [("temperature", s * 1_000 * MS, float(s)) for s in (1, 2, 3, 4, 5)]))
    committed(hub, ("pump-2", [("temperature", 7_000 * MS, 7.0)]))
    assert client.take() is None  # nothing live before the backfill is out
    client.release({("pump-1", "temperature"): 3_000})
    frame = client.take()
    assert frame is not None
    assert frame["readings"] == [
        {"device_id": "pump-1", "metric": "temperature", "times": [4_000, 5_000], "values": [4.0, 5.0]},
        {"device_id": "pump-2", "metric": "temperature", "times": [7_000], "values": [7.0]},
    ]
    assert client.pending == 0


def test_a_client_released_wakes_its_sender() -> None:
    hub = LiveHub()
    woken = threading.Event()
    client = hub.subscribe(Subscription(backfill_seconds=60), woken.set)
    committed(hub, ("pump-1", [("temperature", MS, 1.0)]))
    assert not woken.is_set()  # holding: nothing to send yet
    client.release({})
    assert woken.is_set()


# -- analytics events ----------------------------------------------------------------------
class FakeSource:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.polls = 0
        self.resets = 0
        self.news: list[LiveEvent] = []

    def poll(self) -> list[LiveEvent]:
        self.polls += 1
        news, self.news = self.news, []
        return news

    def reset(self) -> None:
        self.resets += 1


def test_event_sources_are_polled_only_while_a_client_wants_their_kind() -> None:
    anomalies, alerts = FakeSource("anomalies"), FakeSource("alerts")
    hub = LiveHub(sources=[anomalies, alerts])
    hub.poll()
    assert anomalies.polls == alerts.polls == 0
    client = subscribe(hub, devices=["pump-*"], events=["alerts"])
    assert alerts.polls == 1  # its first poll, which sets its cursor, is done on subscribing
    alerts.news = [
        LiveEvent("alerts", "pump-1", "pressure", {"alert_id": 1, "event": "opened"}),
        LiveEvent("alerts", "meter-1", None, {"alert_id": 2, "event": "opened"}),
    ]
    hub.poll()
    assert anomalies.polls == 0 and alerts.polls == 2
    assert client.take() == {"type": "update", "alerts": [{"alert_id": 1, "event": "opened"}]}
    subscribe(hub, events=["alerts"])
    assert alerts.polls == 2  # already started: a second client does not restart it
    hub.unsubscribe(client)
    hub.poll()
    assert alerts.resets == 0  # the second client still listens


def test_a_kind_nobody_listens_to_is_reset_so_a_new_client_gets_only_news() -> None:
    alerts = FakeSource("alerts")
    hub = LiveHub(sources=[alerts])
    client = subscribe(hub, events=["alerts"])
    hub.unsubscribe(client)
    hub.poll()
    assert alerts.resets == 1
    subscribe(hub, events=["alerts"])
    assert alerts.polls == 2  # started again from then


def test_hub_thread_delivers_readings_and_wakes_the_client() -> None:
    hub = LiveHub(poll_interval=0.05)
    hub.start()
    try:
        woken = threading.Event()
        client = hub.subscribe(Subscription(), woken.set)
        hub(batch(("pump-1", [("temperature", 5 * MS, 2.5)])), WriteResult(1, 0))
        assert woken.wait(5)
        assert client.take() == {
            "type": "update",
            "readings": [{"device_id": "pump-1", "metric": "temperature", "times": [5], "values": [2.5]}],
        }
    finally:
        hub.stop()
    assert client.closed is not None and client.closed.code == 1001  # the server stopping
