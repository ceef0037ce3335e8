"""A purge of old history runs in chunks beside live MQTT ingest without stalling it."""

from __future__ import annotations

import threading
import time

import orjson

from iotpipe.app import App
from iotpipe.config import RetentionSettings, Settings
from iotpipe.model import MICROS_PER_DAY, MICROS_PER_SECOND, WriteBatch, WriteResult, day_start, now_micros
from iotpipe.store import open_store
from tests.servers import MosquittoServer
from tests.sources.mqtt_helpers import Worker, unique, wait_until

BATCH_DELAY = 0.5


def _old_history(database_url: str, series: int, per_series: int) -> int:
    """Readings ten days old and older, half of them packed, written straight to the store."""
    store = open_store(database_url)
    start = day_start(now_micros()) - 14 * MICROS_PER_DAY
    for first in range(0, series, 20):
        batch = WriteBatch()
        for s in range(first, min(series, first + 20)):
            batch.groups.append(
                (
                    f"old-{s}",
                    [("v", start + i * 60 * MICROS_PER_SECOND, float(i % 50)) for i in range(per_series)],
                )
            )
            batch.reading_count += per_series
        store.write(batch)
    store.compact(start + 2 * MICROS_PER_DAY, step_readings=20_000)
    store.close()
    return series * per_series


def test_a_purge_during_mqtt_ingest_stalls_no_batch_longer_than_one_batch_delay(
    mosquitto: MosquittoServer, database_url: str
) -> None:
    old = _old_history(database_url, series=60, per_series=4000)
    root = unique("purge")
    latencies: list[tuple[float, float]] = []  # (commit time, worst publish-to-commit latency)

    def record(batch: WriteBatch, result: WriteResult) -> None:
        if result.times is not None and len(result.times):
            now = time.time()
            latencies.append((now, now - float(result.times.min()) / MICROS_PER_SECOND))

    with Worker(
        database_url,
        mosquitto.url,
        pipeline={"batch_delay": BATCH_DELAY},
        templates=[f"{root}/{{device_id}}"],
    ) as worker:
        worker.pipeline.observers = (*worker.pipeline.observers, record)
        from iotpipe.brokers import parse_broker_url
        from iotpipe.sinks.mqtt import Publisher

        publisher = Publisher(parse_broker_url(mosquitto.url), 1)
        stop = threading.Event()
        sent = 0

        def publish() -> None:
            nonlocal sent
            while not stop.is_set():
                payload = {"device_id": f"live-{sent % 5}", "timestamp": time.time_ns() // 1000, "t": 1.0}
                publisher.publish(f"{root}/live-{sent % 5}", orjson.dumps(payload))
                sent += 1
                time.sleep(0.01)

        feeder = threading.Thread(target=publish)
        feeder.start()
        wait_until(lambda: len(latencies) >= 2, "live ingest to commit")
        purger = App(
            Settings(database_url=database_url, retention=RetentionSettings(raw_days=7, chunk_rows=2000))  # type: ignore[call-arg]
        )
        purge_started = time.time()
        purged = purger.purge()
        purge_ended = time.time()
        purger.close()
        time.sleep(2 * BATCH_DELAY)
        stop.set()
        feeder.join()
        publisher.close()
        wait_until(lambda: worker.app.store.stats()["readings"] == sent, "every live message to be stored")

    assert purged["tiers"]["raw"]["readings"] > 0 and purged["tiers"]["raw"]["transactions"] > 30
    store = open_store(database_url)
    assert store.stats()["readings"] == sent  # all history gone, every live reading stored once
    store.close()
    during = [latency for at, latency in latencies if purge_started <= at <= purge_ended + BATCH_DELAY]
    assert len(during) >= 2, "the purge must overlap several commits"
    # A batch waits BATCH_DELAY for company; a purge chunk may hold it up, never by a batch delay.
    assert max(during) < 2 * BATCH_DELAY, (max(during), old)
