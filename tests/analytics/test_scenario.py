"""Done-when scenario: a spike, a stuck sensor, a level shift and a silent device, fed
through the pipeline as a live fleet would send them, each raise the expected alert
exactly once while it lasts, resolved when the condition clears; a webhook receiver
sees every notification once."""

from __future__ import annotations

import random
from collections import Counter

import orjson
from sqlalchemy import select

from iotpipe.analytics import alerts as alerting
from iotpipe.analytics.health import check_health
from iotpipe.app import App
from iotpipe.config import AnalyticsSettings, Settings
from iotpipe.model import MICROS_PER_SECOND, RawMessage, now_micros
from iotpipe.pipeline import Pipeline
from iotpipe.sinks import webhooks
from iotpipe.store.schema import anomalies
from tests.analytics.support import WebhookReceiver

MINUTE = 60 * MICROS_PER_SECOND
T0 = now_micros() // MINUTE * MINUTE - 240 * MINUTE
INJECTED_AT = 150  # minute of every fault


def temperature(device_id: str, minute: int, rng: random.Random) -> float:
    value = 20.0 + rng.gauss(0, 0.2)
    if device_id == "dev-spike" and minute == INJECTED_AT:
        return 35.0
    if device_id == "dev-stuck" and INJECTED_AT <= minute < INJECTED_AT + 30:
        return 20.12
    if device_id == "dev-shift" and minute >= INJECTED_AT:
        return value + 6.0
    return round(value, 3)


def feed(pipeline: Pipeline, devices: list[str], minutes: range, rng: random.Random) -> None:
    for minute in minutes:
        at = T0 + minute * MINUTE
        for device_id in devices:
            body = {
                "device_id": device_id,
                "timestamp": at // 1000,
                "temperature": temperature(device_id, minute, rng),
            }
            pipeline.feed(RawMessage(orjson.dumps(body), "mqtt", f"telemetry/{device_id}", at))
    pipeline.flush()


def test_spike_stuck_shift_and_silence_each_alert_once_and_resolve(database_url: str) -> None:
    with WebhookReceiver() as hook:
        settings = Settings(database_url=database_url, analytics=AnalyticsSettings(webhooks=[hook.url]))  # type: ignore[call-arg]
        app = App(settings)
        store = app.store
        pipeline = app.pipeline(batch_size=25)  # small batches, as a live stream commits them
        rng = random.Random(8)
        faulty = ["dev-spike", "dev-stuck", "dev-shift"]

        def evaluate(minute: int) -> dict[str, object]:
            now = T0 + minute * MINUTE
            check_health(store, settings, now)
            result = alerting.evaluate(store, settings, now)
            webhooks.deliver_due(store, settings, now)
            return result

        feed(pipeline, [*faulty, "dev-silent"], range(0, INJECTED_AT), rng)
        # dev-silent stops reporting; the spike's episode ends `calm` (24) readings after it.
        feed(pipeline, faulty, range(INJECTED_AT, 178), rng)
        first = evaluate(178)
        assert evaluate(178)["opened"] == 0  # the same conditions: no second alert
        active = sorted(
            (a["device_id"], a["kind"]) for a in alerting.alert_rows(store) if a["status"] == "open"
        )
        assert active == [("dev-shift", "anomaly"), ("dev-silent", "offline"), ("dev-stuck", "anomaly")]
        assert first["opened"] == 4  # the spike's episode is already over: opened and resolved

        feed(pipeline, faulty, range(178, 240), rng)
        feed(pipeline, ["dev-silent"], range(235, 240), rng)
        evaluate(240)
        assert evaluate(240) == {"rules": 4, "opened": 0, "resolved": 0}
        app.close()

    every = alerting.alert_rows(store)
    assert Counter((a["device_id"], a["kind"]) for a in every) == {
        ("dev-spike", "anomaly"): 1,
        ("dev-stuck", "anomaly"): 1,
        ("dev-shift", "anomaly"): 1,
        ("dev-silent", "offline"): 1,
    }
    assert {a["status"] for a in every} == {"resolved"}
    with store.engine.connect() as conn:
        episodes = conn.execute(
            select(anomalies.c.series_id, anomalies.c.time).where(anomalies.c.method == "streaming")
        ).all()
    assert len(episodes) == 3
    assert sorted((e["event"], e["alert"]["device_id"]) for e in hook.received) == sorted(  # type: ignore[index]
        (event, device)
        for device in ("dev-shift", "dev-silent", "dev-spike", "dev-stuck")
        for event in ("opened", "resolved")
    )
    assert len(set(hook.ids)) == 8
