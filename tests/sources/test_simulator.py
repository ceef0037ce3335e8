"""The simulator: reproducible realistic signals, labelled anomalies and dropouts, malformed payloads."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from iotpipe import formats
from iotpipe.model import MICROS_PER_SECOND
from iotpipe.pipeline import Pipeline
from iotpipe.sources.simulator import ANOMALY_KINDS, EPISODE_KINDS, Episode, Simulator
from iotpipe.store import Store

T0 = 1_763_805_600_000_000  # 2025-11-22T10:00:00Z
FAULTY = {"anomaly_rate": 0.05, "dropout_rate": 0.01, "malformed_rate": 0.03}


def test_the_same_seed_gives_the_same_stream_and_ground_truth() -> None:
    first = Simulator(devices=4, interval=60, seed=7, **FAULTY)
    second = Simulator(devices=4, interval=60, seed=7, **FAULTY)
    assert [m.payload for m in first.history(T0, 200)] == [m.payload for m in second.history(T0, 200)]
    assert first.episodes == second.episodes


def test_the_clean_signal_under_the_faults_does_not_depend_on_the_fault_rates() -> None:
    clean = Simulator(devices=2, interval=60, seed=3, v2_ratio=0.0)
    faulty = Simulator(devices=2, interval=60, seed=3, v2_ratio=0.0, anomaly_rate=0.2)
    clean_values = [orjson.loads(m.payload) for m in clean.history(T0, 100)]
    faulty_values = [orjson.loads(m.payload) for m in faulty.history(T0, 100)]
    touched = {
        (e.device_id, e.metric, t)
        for e in faulty.episodes
        for t in range(e.start, e.end + 1, 60 * MICROS_PER_SECOND)
    }
    for plain, injected in zip(clean_values, faulty_values, strict=True):
        for metric, value in plain.items():
            if (plain["device_id"], metric, plain["timestamp"] * 1000) not in touched:
                assert injected[metric] == value


def test_episodes_are_labelled_with_their_kind_series_and_span() -> None:
    sim = Simulator(devices=10, interval=60, seed=11, anomaly_rate=0.05, dropout_rate=0.01)
    list(sim.history(T0, 500))
    kinds = {e.kind for e in sim.episodes}
    assert kinds == set(EPISODE_KINDS)
    for episode in sim.episodes:
        assert isinstance(episode, Episode)
        assert episode.start <= episode.end
        assert (episode.end - episode.start) % (60 * MICROS_PER_SECOND) == 0
        assert episode.metric == "*" if episode.kind == "dropout" else episode.metric != "*"
        if episode.kind == "spike":
            assert episode.start == episode.end
    with pytest.raises(dataclasses.FrozenInstanceError):
        sim.episodes[0].kind = "other"  # type: ignore[misc]


def test_a_dropout_silences_the_device_for_exactly_its_span() -> None:
    sim = Simulator(devices=3, interval=60, seed=5, dropout_rate=0.02)
    sent = {(m.origin, m.received_at) for m in sim.history(T0, 400)}
    dropouts = [e for e in sim.episodes if e.kind == "dropout"]
    assert dropouts
    for e in dropouts:
        times = range(e.start, e.end + 1, 60 * MICROS_PER_SECOND)
        assert not any((e.device_id, t) in sent for t in times)
        after = e.end + 60 * MICROS_PER_SECOND
        starts_again = any(o.device_id == e.device_id and o.start == after for o in dropouts)
        assert (e.device_id, after) in sent or starts_again or after >= T0 + 400 * 60 * MICROS_PER_SECOND


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_each_anomaly_kind_moves_its_metric_away_from_the_clean_signal(kind: str) -> None:
    clean = Simulator(devices=5, interval=60, seed=21, v2_ratio=0.0)
    faulty = Simulator(devices=5, interval=60, seed=21, v2_ratio=0.0, anomaly_rate=0.03)
    reference = {(m.origin, m.received_at): orjson.loads(m.payload) for m in clean.history(T0, 600)}
    injected = {(m.origin, m.received_at): orjson.loads(m.payload) for m in faulty.history(T0, 600)}
    episode = next(e for e in faulty.episodes if e.kind == kind and e.end < T0 + 590 * 60 * MICROS_PER_SECOND)
    times = range(episode.start, episode.end + 1, 60 * MICROS_PER_SECOND)
    values = [injected[(episode.device_id, t)][episode.metric] for t in times]
    normal = [reference[(episode.device_id, t)][episode.metric] for t in times]
    if kind == "stuck":
        assert len(set(values)) == 1
    else:
        assert max(abs(v - n) for v, n in zip(values, normal, strict=True)) > 1.0


def test_malformed_payloads_are_unique_and_the_others_decode_whole() -> None:
    sim = Simulator(devices=5, interval=60, seed=2, malformed_rate=0.2)
    reports = list(sim.reports(T0, 100))
    malformed = [r for r in reports if r.kind == "malformed"]
    assert 50 < len(malformed) < 150
    assert len({r.payload for r in malformed}) == len(malformed)  # the DLQ keeps one row per payload
    for report in reports:
        if report.kind != "malformed":
            assert sum(len(m.readings) for m in formats.decode(report.raw())) == report.readings == 5


@pytest.mark.parametrize(("layout", "readings"), [("tasmota", 3), ("zigbee2mqtt", 5), ("value", 1)])
def test_mqtt_layouts_decode_with_their_decoders(layout: str, readings: int) -> None:
    sim = Simulator(devices=3, interval=0.5, seed=4, layout=layout)
    for report in sim.reports(T0, 4):
        assert report.kind == layout and report.format == layout
        decoded = formats.decode(report.raw())
        assert [m.device_id for m in decoded] == [report.device_id]
        assert sum(len(m.readings) for m in decoded) == readings == report.readings


def test_history_feeds_the_pipeline_and_reconciles_with_what_was_sent(store: Store) -> None:
    sim = Simulator(devices=4, interval=30, seed=9, **FAULTY)
    reports = list(sim.reports(T0, 150))
    counters = Pipeline(store).feed_all(r.raw() for r in reports)
    assert counters.accounted()
    assert counters.readings_stored == sum(r.readings for r in reports)
    assert counters.messages_dead_lettered == sum(r.kind == "malformed" for r in reports)
    assert store.stats()["dead_letters"] == counters.messages_dead_lettered


def test_the_core_api_is_unchanged_for_existing_callers() -> None:
    sim = Simulator(5, 5.0, 1, 0.5, "dev")
    history = list(sim.history(T0, 2))
    assert [m.origin for m in history] == [f"dev-{i:03d}" for i in range(1, 6)] * 2
    assert all(m.source == "simulator" and m.format is None and m.device_id is None for m in history)
    live = list(Simulator(devices=2, interval=0.01, seed=1).live(rounds=3))
    assert len(live) == 6


def test_an_unknown_layout_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match="unknown layout 'csv'; choose one of json, tasmota, zigbee2mqtt, value"
    ):
        Simulator(layout="csv")
