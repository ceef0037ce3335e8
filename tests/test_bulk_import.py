"""The columnar import path stores and dead-letters exactly what the per-record path does."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from iotpipe.app import App
from iotpipe.config import Settings, StorageSettings
from iotpipe.formats.columnar import Block, decode_payloads
from iotpipe.model import MICROS_PER_DAY, now_micros
from iotpipe.store import Store

NOW_MS = now_micros() // 1000
OLD_MS = NOW_MS - 20 * MICROS_PER_DAY // 1000  # history past the hot window


def _import(url: str, path: Path, **storage: Any) -> tuple[dict[str, int], App]:
    app = App(Settings(database_url=url, storage=StorageSettings(**storage)))  # type: ignore[call-arg, arg-type]
    return app.import_files([path]).summary(), app


def _contents(
    store: Store,
) -> tuple[list[tuple[str, str, int, float]], list[tuple[str, str]], dict[str, Any]]:
    readings = []
    with store.engine.connect() as conn:
        names = conn.exec_driver_sql(
            "SELECT s.id, d.device_id, s.metric FROM series s JOIN devices d ON d.id = s.device_pk"
        ).all()
    for sid, device_id, metric in names:
        times, values = store.read_series(sid)
        readings += [(device_id, metric, t, v) for t, v in zip(times.tolist(), values.tolist(), strict=True)]
    letters = sorted((r["origin"], r["reason"]) for r in store.dead_letter_rows())
    stats = store.stats()
    return (
        sorted(readings),
        letters,
        {k: stats[k] for k in ("devices", "series", "readings", "invalid_values")},
    )


def _lines(rng: random.Random, count: int, base_ms: int) -> list[bytes]:
    """V1 lines, mostly plain, with every kind of record the fast path must leave alone."""
    odd = [
        b'{"device_id": "a", "timestamp": "2026-01-01T00:00:00Z", "t": 1}',
        b'{"device_id": "a", "timestamp": %d, "t": null, "h": 2.5}' % base_ms,
        b'{"device_id": "a", "timestamp": %d, "t": true}' % base_ms,
        b'{"device_id": " a", "timestamp": %d, "t": 2}' % base_ms,
        b'{"device_id": "a\\u0007", "timestamp": %d, "t": 2}' % base_ms,
        b'{"device_id": "a", "timestamp": %d, "t": "21.5"}' % base_ms,
        b'{"device_id": "a", "timestamp": %d, "t": 1e400}' % base_ms,
        b'{"device_id": "a", "timestamp": %d}' % base_ms,
        b'{"device_id": 7, "timestamp": %d, "t": 1}' % base_ms,
        b'{"timestamp": %d, "t": 1}' % base_ms,
        b'{"device_id": "a", "timestamp": %d, "t": 1, "type": "pump"}' % base_ms,
        b'{"device_id": "a", "timestamp": %d, "t": 1}' % (NOW_MS + 3 * 86_400_000),
        b'{"device_id": "a", "timestamp": %d, "t": 12345678901234567890}' % base_ms,
        b'{"device_id": "a", "ts": %d, "t": 1}' % base_ms,
        b'{"schema_version": 2, "device": {"id": "v2"}, "ts": %d, "readings": {"t": 1}}' % base_ms,
        b'[{"n": "x", "v": 1}]',
        b"not json",
        b'{"device_id": "a", "timestamp": %d, "t": 1' % base_ms,
    ]
    lines = []
    for _ in range(count):
        if rng.random() < 0.005:
            lines.append(rng.choice(odd))
            continue
        device = f"dev-{rng.randrange(20)}"
        t = base_ms + rng.randrange(0, 5 * 86_400_000)
        values = {
            m: round(rng.gauss(20, 5), rng.randrange(4))
            for m in rng.sample(["t", "h", "p", "b"], rng.randrange(1, 4))
        }
        if rng.random() < 0.1:
            values["n"] = rng.randrange(-(2**40), 2**40)
        lines.append(orjson.dumps({"device_id": device, "timestamp": t, **values}))
    return lines


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**32 - 1), old=st.booleans())
def test_columnar_import_stores_and_dead_letters_what_the_exact_path_does(
    tmp_path_factory: pytest.TempPathFactory, seed: int, old: bool
) -> None:
    tmp = tmp_path_factory.mktemp("bulk")
    rng = random.Random(seed)
    path = tmp / "data.jsonl"
    lines = _lines(rng, 3000, OLD_MS if old else NOW_MS - 86_400_000 * 5)
    lines += lines[:200]  # replays inside the file
    path.write_bytes(b"\n".join(lines) + b"\n")
    taken = decode_payloads(lines, "v1", now_micros()).taken
    assert sum(taken) > 0.8 * len(lines)  # the fast path does take most of the file
    exact, exact_app = _import(
        f"sqlite:///{tmp / 'exact.db'}", path, columnar_import=False, import_packed=False
    )
    fast, fast_app = _import(f"sqlite:///{tmp / 'fast.db'}", path)
    assert fast == exact
    assert _contents(fast_app.store) == _contents(exact_app.store)
    again, _ = _import(f"sqlite:///{tmp / 'fast.db'}", path)
    assert again["stored"] == 0 and again["duplicates"] == exact["stored"] + exact["duplicates"]
    exact_app.close()
    fast_app.close()


def test_history_is_imported_straight_into_the_packed_tier(database_url: str, tmp_path: Path) -> None:
    rng = random.Random(3)
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join(_lines(rng, 2000, OLD_MS)) + b"\n")
    summary, app = _import(database_url, path)
    tiers = app.store.stats()["tiers"]
    assert tiers["packed"]["readings"] == summary["stored"] > 0
    assert tiers["hot"]["readings"] == 0
    again, _ = _import(database_url, path)
    assert again["stored"] == 0
    app.close()


def test_line_protocol_fast_path_matches_the_exact_decoder() -> None:
    from iotpipe import formats
    from iotpipe.model import RawMessage

    now = now_micros()
    payloads = [
        b"telemetry,device_id=p1 t=21.5,h=40i 1700000000000000001",
        b"weather,host=h1 temp=-3.25,rain=0 1700000000999999999",
        b"cpu,host=h1,cpu=cpu0 usage_idle=99.1 1700000000000000000",
        b'status,device_id=p1 state="ok",t=1 1700000000000000000',
        b"telemetry,device_id=p1 t=1,t=2 1700000000000000000",
        b"telemetry,device_id=p1 t=NaN 1700000000000000000",
        b"telemetry,device_id=p1 t=1",
        b"telemetry,device_id=p\\ 1 t=1 1700000000000000000",
    ]
    decoded = decode_payloads(payloads, "lineproto", now)
    assert decoded.taken == [True, True, False, False, False, False, False, False]
    fast = sorted(
        zip(
            decoded.devices.to_pylist(),
            decoded.metrics.to_pylist(),
            decoded.times.to_pylist(),
            decoded.values.to_pylist(),
            strict=True,
        )
    )
    exact = sorted(
        (m.device_id, k, t, v)
        for p, took in zip(payloads, decoded.taken, strict=True)
        if took
        for m in formats.decode(RawMessage(p, "file", "f:1", now, "lineproto"))
        for k, t, v in m.readings
    )
    assert (
        fast
        == exact
        == [
            ("h1", "weather_rain", 1700000000999999, 0.0),
            ("h1", "weather_temp", 1700000000999999, -3.25),
            ("p1", "h", 1700000000000000, 40.0),
            ("p1", "t", 1700000000000000, 21.5),
        ]
    )


def test_decoding_a_block_looks_for_no_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow infers an untyped Python scalar's type on every compute call, and tries to
    import dateutil to do it: without dateutil, a search of sys.path each time. The
    decoders pass typed scalars only, so decoding a block (an HTTP request's body) asks
    the import system for nothing."""
    now = now_micros()
    lines = [
        b"telemetry,device_id=p1 t=21.5,h=40i 1700000000000000001",
        b"weather,host=h1 temp=-3.25,rain=0 5",
        b"telemetry,device_id=p1 t=1,t=2 1700000000000000000",
        b"telemetry,device_id=p1 " + b",".join(b"f%d=1" % n for n in range(40)) + b" 1700000000000000000",
        b"not a line",
    ]
    records = [
        orjson.dumps({"device_id": "p1", "timestamp": stamp, "t": 21.5, "n": 7})
        for stamp in (1_700_000_000, 1_700_000_000_123, 1_700_000_000_123_456, -5, 1_700_000_000_123_456_789)
    ]
    blocks = (("lineproto", lines), ("v1", records))
    for fmt, payloads in blocks:  # pyarrow's own imports, once per process
        warm = decode_payloads(payloads, fmt, now)
        Block(warm.devices, warm.metrics, warm.times, warm.values).series()
    looked_for: list[str] = []

    class Finder:
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            looked_for.append(name)

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    decoded = [decode_payloads(payloads, fmt, now) for fmt, payloads in blocks]
    series = [
        Block(d.devices, d.metrics, d.times, d.values).series() for d in decoded
    ]  # as the pipeline asks
    assert [d.taken for d in decoded] == [
        [True, True, False, True, False],
        [True, True, True, False, True],  # before 1970: the exact path's
    ]
    assert series[1] == {"p1": {"t", "n"}} and len(series[0]["p1"]) == 42
    assert looked_for == []


@settings(max_examples=100, deadline=None)
@given(
    readings=st.lists(
        st.tuples(st.sampled_from(["p1", "p2", "p3", "é"]), st.integers(0, 69).map(lambda n: f"m{n}")),
        max_size=200,
    ),
    few=st.booleans(),
)
@example(readings=[("p1", f"m{n}") for n in range(70)] + [("p2", "m3")], few=False)  # over 64 metrics
def test_a_blocks_metrics_by_device_are_its_pairs(readings: list[tuple[str, str]], few: bool) -> None:
    """Block.series() finds each device's metrics from bit masks (up to 64 metrics in a
    block) or set by set (more): either way, exactly the block's pairs grouped by device."""
    import pyarrow as pa

    if few:  # a few metrics, as most blocks: the bit masks
        readings = [(device, f"m{int(metric[1:]) % 5}") for device, metric in readings]
    block = Block(
        pa.array([d for d, _ in readings], pa.string()),
        pa.array([m for _, m in readings], pa.string()),
        pa.array(range(len(readings)), pa.int64()),
        pa.array([1.0] * len(readings), pa.float64()),
    )
    expected: dict[str, set[str]] = {}
    for device, metric in readings:
        expected.setdefault(device, set()).add(metric)
    assert block.series() == expected
    assert sorted(block.pairs().names) == sorted({pair for pair in readings})


# Each part mostly plain (repeated entries weigh the draw), sometimes one of the shapes
# the fast path must leave to the exact decoder.
_LP_MEASUREMENTS = st.sampled_from(["telemetry"] * 20 + ["weather", "", "a b", "m,x", "m=x", "mé", "m\\ x"])
_LP_TAGS = st.sampled_from(
    [",device_id=p1"] * 30
    + [",host=h1", ",device_id=", ",device_id=p1,cpu=c0", ",id=p2", "", ",device_id=p\\ 1", ",=p1"]
    + [",device_id=a=b", ",device_id=p1,", ",device_id=p,1"]
)
_LP_FIELD = st.tuples(
    st.sampled_from(["t", "h"] * 10 + ["x y", "a=b", "", "é"]),
    st.sampled_from(["1", "1.5", "-3.25", "2i"] * 10 + ["NaN", '"ok"', "1e3", "", "inf", "t", "=1"]),
)
_LP_STAMPS = st.sampled_from(
    ["1700000000000000000"] * 30 + ["-1", "", "1" * 20, "1700000000000000001 x", "17e9"]
)


@st.composite
def _lp_lines(draw: st.DrawFn) -> bytes:
    fields = ",".join(f"{k}={v}" for k, v in draw(st.lists(_LP_FIELD, min_size=0, max_size=3)))
    gap = draw(st.sampled_from([" "] * 20 + ["  ", ""]))
    line = f"{draw(_LP_MEASUREMENTS)}{draw(_LP_TAGS)} {fields}{gap}{draw(_LP_STAMPS)}"
    return line.encode()


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(_lp_lines(), min_size=1, max_size=12))
def test_every_line_protocol_line_the_fast_path_takes_decodes_as_the_exact_decoder_does(
    payloads: list[bytes],
) -> None:
    from iotpipe import formats
    from iotpipe.model import RawMessage

    now = now_micros()
    decoded = decode_payloads(payloads, "lineproto", now)
    fast: dict[int, list[tuple[Any, ...]]] = {}
    for row in zip(
        decoded.lines.to_pylist(),
        decoded.devices.to_pylist(),
        decoded.metrics.to_pylist(),
        decoded.times.to_pylist(),
        decoded.values.to_pylist(),
        strict=True,
    ):
        fast.setdefault(row[0], []).append(row[1:])
    for index, (payload, took) in enumerate(zip(payloads, decoded.taken, strict=True)):
        if not took:
            assert index not in fast
            continue
        exact = [
            (m.device_id, k, t, v)
            for m in formats.decode(RawMessage(payload, "file", "f:1", now, "lineproto"))
            for k, t, v in m.readings
        ]
        assert sorted(fast[index]) == sorted(exact), payload
    event(f"lines taken: {sum(decoded.taken) > 0}")


def test_a_line_naming_a_field_twice_is_left_to_the_exact_decoder_wherever_the_repeat_is() -> None:
    narrow = [
        b"telemetry,device_id=p1 a=1 1700000000000000000",
        b"telemetry,device_id=p1 a=2 1700000000000000001",  # the line before's key: not a repeat
        b"telemetry,device_id=p1 t=1,h=2,t=3 1700000000000000000",  # two fields apart
        b"telemetry,device_id=p1 h=2,t=3 1700000000000000000",
        b"telemetry,device_id=p1 x=1,y=2,z=3,x=4 1700000000000000000",  # the first and last
    ]
    assert decode_payloads(narrow, "lineproto", now_micros()).taken == [True, True, False, True, False]
    # Lines wider than the fields compared one by one are counted instead.
    wide = ",".join(f"f{i}={i}" for i in range(20))
    lines = [f"telemetry,device_id=p2 {wide}{extra} 1700000000000000000" for extra in ("", ",f3=9", ",f0=1")]
    decoded = decode_payloads([line.encode() for line in lines], "lineproto", now_micros())
    assert decoded.taken == [True, False, False]


def test_of_two_values_of_one_reading_the_first_in_the_file_wins_on_both_paths(tmp_path: Path) -> None:
    """The second line is one the fast path takes, the first one it leaves to the exact
    decoder (a device id with spaces, trimmed there): file order still decides."""
    t = NOW_MS - 3_600_000
    lines = [
        b'{"device_id": " a", "timestamp": %d, "t": 1.5}' % t,
        b'{"device_id": "a", "timestamp": %d, "t": 2.5}' % t,
        b'{"device_id": "a", "timestamp": %d, "t": 3.5}' % (t + 1000),
    ]
    path = tmp_path / "twice.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary, app = _import(f"sqlite:///{tmp_path / 'fast.db'}", path)
    assert (summary["stored"], summary["duplicates"]) == (2, 1)
    assert app.store.raw_readings("a", "t") == [(t * 1000, 1.5), ((t + 1000) * 1000, 3.5)]
    app.close()


def test_the_series_limit_counts_what_the_store_already_holds_as_the_exact_path_does(
    tmp_path: Path, database_url: str
) -> None:
    """Devices known from an earlier import (a fresh App: nothing cached) are looked up in
    one go; one going over the limit sends its block to the exact path, which refuses the
    very message that would go over."""
    first = tmp_path / "first.jsonl"
    first.write_bytes(orjson.dumps({"device_id": "a", "timestamp": NOW_MS - 60_000, "t": 1, "h": 2}) + b"\n")
    second = tmp_path / "second.jsonl"
    second.write_bytes(
        b"\n".join(
            [
                orjson.dumps({"device_id": "b", "timestamp": NOW_MS - 1000, "t": 1, "h": 2}),
                orjson.dumps({"device_id": "a", "timestamp": NOW_MS - 1000, "p": 3}),
                orjson.dumps({"device_id": "a", "timestamp": NOW_MS - 500, "q": 4}),
            ]
        )
    )
    found = []
    for columnar in (True, False):
        url = database_url if columnar else f"sqlite:///{tmp_path / 'exact.db'}"
        settings = Settings(database_url=url, limits={"max_series_per_device": 3})  # type: ignore[call-arg, arg-type]
        settings.storage = StorageSettings(columnar_import=columnar)  # type: ignore[call-arg]
        App(settings).import_files([first])
        app = App(settings)
        summary = app.import_files([second]).summary()
        assert summary["stored"] == 3 and summary["dead_lettered"] == 1, summary
        readings, letters, _ = _contents(app.store)
        found.append((readings, [(origin.rsplit(":", 1)[1], reason) for origin, reason in letters]))
    assert found[0] == found[1]
    assert found[0][1][0][0] == "3" and "over the limit of 3 series per device" in found[0][1][0][1]


def test_a_process_pool_decodes_a_large_import_as_the_exact_path_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large imports on machines of three or more cores decode in worker processes; the
    file's order, the dead letters and the readings stay those of the exact path."""
    from iotpipe.app import bulk_import

    monkeypatch.setattr(bulk_import, "POOL_FROM_BYTES", 0)  # this file counts as large
    monkeypatch.setattr(bulk_import, "CHUNK_LINES", 500)  # several chunks in flight
    used: list[int] = []
    real = bulk_import.BulkImport.__init__

    def spy(self: Any, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        used.append(self.workers)

    monkeypatch.setattr(bulk_import.BulkImport, "__init__", spy)
    path = tmp_path / "data.jsonl"
    lines = _lines(random.Random(11), 4000, NOW_MS - 86_400_000 * 5)
    path.write_bytes(b"\n".join(lines + lines[:300]) + b"\n")
    exact, exact_app = _import(
        f"sqlite:///{tmp_path / 'exact.db'}", path, columnar_import=False, import_packed=False
    )
    pooled, pooled_app = _import(f"sqlite:///{tmp_path / 'pooled.db'}", path, import_workers=2)
    assert used == [2]
    assert pooled == exact
    assert _contents(pooled_app.store) == _contents(exact_app.store)
    exact_app.close()
    pooled_app.close()


def test_a_process_pool_feeds_every_chunk_read_before_a_gzip_file_ends_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks still decoding in the pool when the damage is found are stored all the same."""
    import gzip

    from iotpipe.app import bulk_import
    from iotpipe.errors import TruncatedFile

    monkeypatch.setattr(bulk_import, "POOL_FROM_BYTES", 0)
    monkeypatch.setattr(bulk_import, "CHUNK_LINES", 500)  # several chunks in flight
    whole = gzip.compress(
        b"".join(b'{"device_id": "d", "timestamp": %d, "t": %d}\n' % (OLD_MS + i, i) for i in range(20_000))
    )
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    app = App(
        Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", storage=StorageSettings(import_workers=2))
    )  # type: ignore[call-arg]
    with pytest.raises(TruncatedFile, match="after line") as caught:
        app.import_files([path])
    read = int(str(caught.value).split("after line ")[1].split(" ")[0])
    assert 0 < read < 20_000
    assert app.store.stats()["readings"] == read
    app.close()
