"""The pipeline on both engines: exact accounting, dedupe, dead letters, batching, acks."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection

import pytest

from iotpipe.model import MICROS_PER_SECOND, WriteBatch, WriteResult, now_micros
from iotpipe.pipeline import Pipeline, PipelineConfig
from iotpipe.store import Store
from tests.helpers import raw

T0 = 1_763_805_600_000_000  # 2025-11-22T10:00:00Z


def v1(device: str, at: int, **metrics: object) -> dict[str, object]:
    return {"device_id": device, "timestamp": at // 1000, **metrics}


def test_counters_add_up_and_every_reading_is_stored_once(store: Store) -> None:
    pipeline = Pipeline(store, PipelineConfig(batch_size=7))
    messages = [
        raw(v1(f"d{i % 3}", T0 + i * MICROS_PER_SECOND, temperature=20.0 + i, humidity=50)) for i in range(20)
    ]
    messages += messages[:5]  # replayed
    messages.append(raw(b"not json at all {"))
    counters = pipeline.feed_all(messages)

    assert counters.accounted()
    assert counters.messages_received == 26
    assert counters.messages_accepted == 25
    assert counters.messages_dead_lettered == 1
    assert counters.readings_stored == 40
    assert counters.readings_duplicate == 10
    assert store.stats()["readings"] == 40
    assert store.stats()["dead_letters"] == 1


def test_duplicates_inside_one_batch_are_stored_once(store: Store) -> None:
    pipeline = Pipeline(store)
    pipeline.feed_all([raw(v1("d", T0, temperature=1.0)), raw(v1("d", T0, temperature=2.0))])
    # Which of the two values wins is the engine's choice; that exactly one is kept is ours.
    assert len(store.raw_readings("d", "temperature")) == 1
    assert pipeline.counters.readings_duplicate == 1


def test_a_replayed_batch_on_postgres_and_sqlite_counts_only_duplicates(store: Store) -> None:
    batch = [raw(v1("d", T0 + i * MICROS_PER_SECOND, temperature=float(i))) for i in range(100)]
    Pipeline(store).feed_all(batch)
    again = Pipeline(store)
    again.feed_all([*batch, raw(v1("d", T0 + 1000 * MICROS_PER_SECOND, temperature=5.0))])
    assert again.counters.readings_stored == 1
    assert again.counters.readings_duplicate == 100
    assert len(store.raw_readings("d", "temperature")) == 101


def test_invalid_value_is_counted_and_the_rest_of_the_message_kept(store: Store) -> None:
    pipeline = Pipeline(store)
    pipeline.feed_all([raw(v1("d", T0, temperature=21.5, humidity="wet"))])
    assert store.raw_readings("d", "temperature") == [(T0, 21.5)]
    assert store.raw_readings("d", "humidity") == []
    assert pipeline.counters.values_invalid == 1
    assert store.stats()["invalid_values"] == 1
    assert store.stats()["dead_letters"] == 0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"device_id": "d", "temp', "payload is not valid JSON"),
        (b'{"temperature": 20}', "device_id missing"),
        (
            b'{"device_id": "d", "timestamp": "yesterday", "t": 1}',
            "timestamp 'yesterday' is not a valid ISO 8601 time",
        ),
        (b'{"device_id": "d", "timestamp": "2999-01-01T00:00:00Z", "t": 1}', "more than a day in the future"),
        (b'{"device_id": "d", "temperature": "abc"}', "no valid metric: temperature: 'abc' is not a number"),
        (b'{"device_id": "d", "status": {"ok": true}}', "no metric in message"),
        (b"", "payload is empty"),
    ],
)
def test_rejected_message_is_dead_lettered_with_its_reason_and_creates_no_device(
    store: Store, payload: bytes, reason: str
) -> None:
    pipeline = Pipeline(store)
    counters = pipeline.feed_all([raw(payload, origin="telemetry/d")])
    letters = store.dead_letter_rows()
    assert len(letters) == 1
    assert reason in letters[0]["reason"]
    assert bytes(letters[0]["payload"]) == payload
    assert letters[0]["origin"] == "telemetry/d"
    assert store.stats()["devices"] == 0
    assert counters.accounted() and counters.messages_dead_lettered == 1


def test_oversize_payload_is_dead_lettered_with_its_size(store: Store) -> None:
    pipeline = Pipeline(store, PipelineConfig(max_payload_bytes=100))
    big = raw(v1("d", T0, temperature=1.0, padding="x" * 200))
    counters = pipeline.feed_all([big, raw(v1("d", T0, temperature=1.0))])
    [letter] = store.dead_letter_rows()
    assert "over the limit of 100" in letter["reason"]
    assert len(letter["payload"]) == 100  # the evidence, not the whole body
    assert counters.readings_stored == 1 and counters.accounted()


def test_a_day_ahead_is_accepted_but_not_more(store: Store) -> None:
    now = now_micros()
    pipeline = Pipeline(store)
    counters = pipeline.feed_all(
        [
            raw(v1("d", now + 23 * 3600 * MICROS_PER_SECOND, t=1.0), received_at=now),
            raw(v1("d", now + 25 * 3600 * MICROS_PER_SECOND, t=2.0), received_at=now),
        ]
    )
    assert counters.readings_stored == 1 and counters.messages_dead_lettered == 1


def test_ancient_history_is_accepted(store: Store) -> None:
    counters = Pipeline(store).feed_all([raw(v1("d", 946_684_800_000_000, t=1.0))])  # 2000-01-01
    assert counters.readings_stored == 1


def test_acks_are_called_only_after_the_batch_commits(store: Store) -> None:
    acked: list[int] = []
    pipeline = Pipeline(store, PipelineConfig(batch_size=3, batch_delay=3600))
    for i in range(5):
        message = raw(v1("d", T0 + i * MICROS_PER_SECOND, t=float(i)), ack=lambda i=i: acked.append(i))
        pipeline.feed(message)
        acked_before = len(acked)
        assert acked_before <= store.stats()["readings"]  # never acked ahead of the commit
    pipeline.flush()
    assert acked == [0, 1, 2, 3, 4]


def test_failed_write_acks_nothing_and_keeps_the_batch_for_retry(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    acked: list[int] = []
    pipeline = Pipeline(store, PipelineConfig(batch_size=100))
    pipeline.feed(raw(v1("d", T0, t=1.0), ack=lambda: acked.append(1)))
    original = store.write

    def broken(batch: object) -> object:
        raise ConnectionError("database went away")

    monkeypatch.setattr(store, "write", broken)
    with pytest.raises(ConnectionError):
        pipeline.flush()
    assert acked == [] and store.stats()["readings"] == 0
    monkeypatch.setattr(store, "write", original)
    pipeline.flush()
    assert acked == [1] and store.stats()["readings"] == 1


def test_push_path_flushes_by_time_and_on_stop(store: Store) -> None:
    pipeline = Pipeline(store, PipelineConfig(batch_size=10_000, batch_delay=0.2, queue_size=4))
    writer = threading.Thread(target=pipeline.run)
    writer.start()
    committed = threading.Event()
    pipeline.submit(raw(v1("d", T0, t=1.0), ack=committed.set))
    assert committed.wait(10), "a lone message must be committed after batch_delay"
    for i in range(1, 50):  # more than the queue holds: submit blocks, nothing is dropped
        pipeline.submit(raw(v1("d", T0 + i * MICROS_PER_SECOND, t=float(i))))
    pipeline.stop()
    writer.join(10)
    assert store.stats()["readings"] == 50
    assert pipeline.counters.accounted()


def test_watermark_commits_with_the_readings_before_it(store: Store) -> None:
    pipeline = Pipeline(store, PipelineConfig(batch_size=1000))
    pipeline.feed(raw(v1("d", T0, t=1.0)))
    pipeline.set_watermark("thingspeak", "9", "42")
    assert store.watermark("thingspeak", "9") is None
    pipeline.flush()
    assert store.watermark("thingspeak", "9") == "42"


def test_device_metadata_and_seen_times_follow_the_readings(store: Store) -> None:
    v2 = {
        "schema_version": 2,
        "device": {
            "id": "pump-7",
            "type": "pump",
            "firmware": "1.4.0",
            "location": {"lat": 42.79, "lon": -86.1},
        },
        "ts": T0 // 1000,
        "readings": {"pressure": {"value": 3.2, "unit": "bar"}},
    }
    Pipeline(store).feed_all(
        [
            raw(v2),
            raw(v1("pump-7", T0 - 10 * MICROS_PER_SECOND, t=1.0)),
            raw(v1("pump-7", T0 + 10 * MICROS_PER_SECOND, t=1.0)),
        ]
    )
    [device] = store.device_rows()
    assert (device["type"], device["firmware"], device["latitude"], device["longitude"]) == (
        "pump",
        "1.4.0",
        42.79,
        -86.1,
    )
    assert device["first_seen"] == T0 - 10 * MICROS_PER_SECOND
    assert device["last_seen"] == T0 + 10 * MICROS_PER_SECOND
    Pipeline(store).feed_all([raw({**v2, "device": {**v2["device"], "firmware": "1.5.0"}})])  # type: ignore[dict-item]
    assert store.device_rows()[0]["firmware"] == "1.5.0"


def test_queued_watermark_commits_after_the_messages_submitted_before_it(store: Store) -> None:
    seen: list[tuple[int, str | None]] = []
    pipeline = Pipeline(
        store,
        PipelineConfig(batch_size=2, batch_delay=3600),
        observers=[lambda batch, result: seen.append((result.stored, store.watermark("ts", "9")))],
    )
    for i in range(3):
        pipeline.submit(raw(v1("d", T0 + i * MICROS_PER_SECOND, t=1.0)))
    pipeline.submit_watermark("ts", "9", "3")
    pipeline.stop()
    pipeline.run()
    # The first batch (2 readings) committed without the mark; the last one with it.
    assert seen == [(2, None), (1, "3")]


def test_unacked_window_forces_a_write(store: Store) -> None:
    acked: list[int] = []
    pipeline = Pipeline(store, PipelineConfig(batch_size=10_000, batch_delay=3600, max_unacked=3))
    for i in range(7):
        pipeline.feed(raw(v1("d", T0 + i * MICROS_PER_SECOND, t=1.0), ack=lambda i=i: acked.append(i)))
    # Two windows full: the first is committed and acked; the second is committed too,
    # or (PostgreSQL, written behind) still being written.
    assert acked in ([0, 1, 2], [0, 1, 2, 3, 4, 5])
    pipeline.flush()
    assert acked == list(range(7))
    assert pipeline.counters.batches_written == 3


def test_a_failing_batch_stores_nothing_even_with_every_series_known(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    Pipeline(store).feed_all([raw(v1("d", T0, t=1.0))])  # series now cached: no setup statements

    def failing_step(conn: object, spans: object) -> None:  # after the readings' insert, in the transaction
        raise RuntimeError("a step of the write failed")

    monkeypatch.setattr(store, "_touch_devices", failing_step)
    pipeline = Pipeline(store)
    pipeline.feed(raw(v1("d", T0 + MICROS_PER_SECOND, t=2.0)))
    with pytest.raises(RuntimeError):
        pipeline.flush()
    monkeypatch.undo()
    assert store.raw_readings("d", "t") == [(T0, 1.0)]


def test_observers_get_the_committed_readings_in_unix_micros(store: Store) -> None:
    seen: list[tuple[list[int], list[int], list[float]]] = []

    def observer(batch: WriteBatch, result: WriteResult) -> None:
        seen.append((result.series_ids.tolist(), result.times.tolist(), result.values.tolist()))

    Pipeline(store, observers=[observer]).feed_all([raw(v1("d", T0, t=1.0, u=2.0))])
    [(series_ids, times, values)] = seen
    assert times == [T0, T0]  # Unix µs on every engine, whatever the engine stores
    assert sorted(values) == [1.0, 2.0]
    assert len(set(series_ids)) == 2


def test_every_batch_marks_the_hours_it_touched_late_data_included(store: Store) -> None:
    from sqlalchemy import select

    from iotpipe.store.schema import dirty_hours

    hour = 3600 * MICROS_PER_SECOND
    Pipeline(store).feed_all(
        [raw(v1("d", T0 + 5 * MICROS_PER_SECOND, t=1.0)), raw(v1("d", T0 + hour, t=2.0))]
    )
    Pipeline(store).feed_all([raw(v1("d", T0 - 3 * hour + 1, t=3.0))])  # late reading
    with store.engine.connect() as conn:
        marked = sorted(conn.execute(select(dirty_hours.c.hour_start)).scalars())
    assert marked == [T0 - 3 * hour, T0, T0 + hour]


def test_device_attributes_merge_and_metadata_alone_is_written(store: Store) -> None:
    from iotpipe.model import DeviceInfo

    pipeline = Pipeline(store)
    pipeline.set_device_info("ch-9", DeviceInfo(attributes={"field_labels": {"field1": "Light"}}))
    pipeline.feed_all([raw(v1("ch-9", T0, light=1.0))])
    pipeline.set_device_info("ch-9", DeviceInfo(name="my house", attributes={"tags": ["home"]}))
    pipeline.flush()  # a batch holding only metadata is still written
    [device] = store.device_rows()
    assert device["name"] == "my house"
    assert device["attributes"] == {"field_labels": {"field1": "Light"}, "tags": ["home"]}


def test_a_batch_written_behind_that_fails_is_retried_first_and_nothing_is_lost(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "writes_behind", True)
    original = store.write
    failures = [ConnectionError("database restarting")]

    def flaky(batch: WriteBatch) -> WriteResult:
        if failures:
            raise failures.pop()
        return original(batch)

    monkeypatch.setattr(store, "write", flaky)
    acked: list[int] = []
    pipeline = Pipeline(store, PipelineConfig(batch_size=2, batch_delay=3600))
    messages = [
        raw(v1("d", T0 + i * MICROS_PER_SECOND, t=float(i)), ack=lambda i=i: acked.append(i))
        for i in range(5)
    ]
    pipeline.feed(messages[0])
    pipeline.feed(messages[1])  # full: written behind, and that write fails
    pipeline.feed(messages[2])
    with pytest.raises(ConnectionError, match="database restarting"):
        pipeline.feed(messages[3])  # full again: the earlier failure surfaces here
    assert acked == [] and store.stats()["readings"] == 0

    pipeline.flush()  # the failed batch first, then the open one
    assert acked == [0, 1, 2, 3]
    pipeline.feed_all(messages[4:])
    assert acked == [0, 1, 2, 3, 4]
    assert store.stats()["readings"] == 5
    assert pipeline.counters.messages_received == 5 and pipeline.counters.accounted()


def test_the_writer_thread_survives_a_database_outage_and_loses_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iotpipe.pipeline import PipelineWriter

    original = store.write
    outage = threading.Event()
    outage.set()

    def during_outage(batch: WriteBatch) -> WriteResult:
        if outage.is_set():
            raise ConnectionError("the database is down")
        return original(batch)

    monkeypatch.setattr(store, "write", during_outage)
    acked: list[int] = []
    pipeline = Pipeline(store, PipelineConfig(batch_size=5, batch_delay=0.1))
    writer = PipelineWriter(pipeline, max_backoff=1.0)
    writer.start()
    for i in range(12):
        pipeline.submit(raw(v1("d", T0 + i * MICROS_PER_SECOND, t=float(i)), ack=lambda i=i: acked.append(i)))
    time.sleep(1.5)  # the writer meets the outage and keeps retrying
    assert acked == [] and store.stats()["readings"] == 0
    outage.clear()
    writer.stop()
    assert sorted(acked) == list(range(12))
    assert store.stats()["readings"] == 12
    assert pipeline.counters.accounted()


def test_the_same_bad_payload_n_times_is_one_dead_letter_received_n_times(store: Store) -> None:
    bad = [raw(b"{not json", origin="telemetry/pump-1") for _ in range(5)]
    counters = Pipeline(store, PipelineConfig(batch_size=2)).feed_all(bad)
    stats = store.stats()
    # Summaries count messages; the queue keeps one row per distinct (source, origin, payload).
    assert counters.messages_dead_lettered == 5
    assert (stats["dead_letters"], stats["dead_letter_messages"]) == (1, 5)
    [letter] = store.dead_letter_rows()
    assert letter["attempts"] == 5


def test_holding_sets_full_batches_aside_until_the_caller_writes_them(store: Store) -> None:
    pipeline = Pipeline(store, PipelineConfig(batch_size=10))
    with pipeline.holding() as held:
        for i in range(25):
            pipeline.feed(raw(v1("d", T0 + i * MICROS_PER_SECOND, temperature=float(i))))
    assert [batch.batch.reading_count for batch in held] == [10, 10, 5]
    assert store.stats()["readings"] == 0  # nothing written while held
    for batch in held:
        pipeline.write_held(batch)
    assert store.stats()["readings"] == 25
    assert pipeline.counters.readings_stored == 25 and pipeline.counters.batches_written == 3


def test_a_held_feed_that_raises_leaves_nothing_for_the_next_one(store: Store) -> None:
    pipeline = Pipeline(store)
    with pytest.raises(RuntimeError), pipeline.holding():
        pipeline.feed(raw(v1("a", T0, temperature=1.0)))
        raise RuntimeError("the body broke half-way")
    with pipeline.holding() as held:
        pipeline.feed(raw(v1("b", T0, temperature=2.0)))
    for batch in held:
        pipeline.write_held(batch)
    assert pipeline.counters.messages_received == 1
    assert store.raw_readings("a", "temperature") == []
    assert store.raw_readings("b", "temperature") == [(T0, 2.0)]


def test_a_message_whose_series_check_meets_a_store_outage_is_kept_not_acknowledged_and_stored_later(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new device's series are looked up in the store before its message joins a batch;
    # that read failing must not leave the message counted and acknowledged without readings.
    original = store.known_metrics
    failures = [ConnectionError("database restarting")]

    def flaky(device_ids: Collection[str]) -> dict[str, frozenset[str]]:
        if "new" in device_ids and failures:
            raise failures.pop()
        return original(device_ids)

    monkeypatch.setattr(store, "known_metrics", flaky)
    acked: list[int] = []
    pipeline = Pipeline(store, PipelineConfig(batch_size=100, batch_delay=3600))
    pipeline.feed(raw(v1("old", T0, t=1.0), ack=lambda: acked.append(0)))
    with pytest.raises(ConnectionError, match="database restarting"):
        pipeline.feed(raw(v1("new", T0, t=2.0), ack=lambda: acked.append(1)))
    pipeline.flush()  # the store is back: the kept message joins the batch
    assert acked == [0, 1]
    assert (store.stats()["devices"], store.stats()["readings"]) == (2, 2)
    counters = pipeline.counters
    assert counters.messages_received == 2 == counters.messages_accepted
    assert counters.accounted()
