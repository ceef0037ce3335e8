"""Export and the lake: files that give back exactly the stored readings, once each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.dataset as ds
import pytest

from iotpipe.analytics.rollups import refresh
from iotpipe.app import App
from iotpipe.config import Settings, StorageSettings
from iotpipe.model import MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_SECOND, day_name, day_start, now_micros
from iotpipe.sinks.lake import lake_job
from iotpipe.store import Store
from tests.analytics.support import write_readings

TODAY = day_start(now_micros())
FIRST_DAY = TODAY - 5 * MICROS_PER_DAY


def _history(store: Store) -> list[tuple[str, str, int, float]]:
    """Four days of two devices: the first two days packed, the rest hot."""
    rng = np.random.default_rng(5)
    readings = [
        (device, metric, FIRST_DAY + i * 7 * 60 * MICROS_PER_SECOND + j, float(rng.normal(20, 3)))
        for device in ("pump-2", "pump-1")
        for j, metric in enumerate(("temperature", "pressure"))
        for i in range(4 * 24 * 60 // 7)
    ]
    write_readings(store, readings)
    store.compact(FIRST_DAY + 2 * MICROS_PER_DAY, step_readings=300)
    assert store.stats()["tiers"]["packed"]["readings"] > 0
    return readings


def _sorted(readings: list[tuple[str, str, int, float]]) -> list[tuple[str, str, int, float]]:
    return sorted(readings, key=lambda r: (r[0], r[1], r[2]))


def _app(database_url: str, **storage: object) -> App:
    return App(Settings(database_url=database_url, storage=StorageSettings(**storage)))  # type: ignore[call-arg, arg-type]


def test_export_read_back_with_duckdb_and_pyarrow_is_the_stored_readings(
    database_url: str, tmp_path: Path
) -> None:
    app = _app(database_url)
    readings = _history(app.store)
    out = tmp_path / "export"
    result = app.export(out)
    assert (result["partitions"], result["rows"]) == (4, len(readings))
    assert sorted(p.parent.name for p in out.glob("*/*.parquet")) == [
        f"date={day_name(FIRST_DAY + d * MICROS_PER_DAY)}" for d in range(4)
    ]
    want = _sorted(readings)
    rows = duckdb.sql(
        f"SELECT device_id, metric, epoch_us(time), value, date FROM read_parquet('{out}/*/*.parquet', "
        "hive_partitioning = true) ORDER BY device_id, metric, time"
    ).fetchall()
    assert [r[:4] for r in rows] == want
    assert all(str(r[4]) == day_name(r[2]) for r in rows)  # each reading in its day's partition
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(readings)
    got = sorted(
        zip(
            table["device_id"].to_pylist(),
            table["metric"].to_pylist(),
            table["time"].cast("int64").to_pylist(),
            table["value"].to_pylist(),
            strict=True,
        )
    )
    assert got == want
    app.close()


def test_a_second_export_gives_byte_identical_partitions_and_a_late_reading_replaces_its_day(
    database_url: str, tmp_path: Path
) -> None:
    app = _app(database_url)
    readings = _history(app.store)
    out = tmp_path / "export"
    app.export(out, start=FIRST_DAY, end=TODAY)
    first = {p: p.read_bytes() for p in sorted(out.rglob("*.parquet"))}
    app.export(out, start=FIRST_DAY, end=TODAY)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.parquet"))} == first
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp file left

    late = ("pump-1", "pressure", FIRST_DAY + 3 * MICROS_PER_HOUR + 1, 99.5)  # into a packed day
    write_readings(app.store, [late])
    app.export(out, start=FIRST_DAY, end=TODAY)
    day_file = out / f"date={day_name(FIRST_DAY)}" / "part-0.parquet"
    assert day_file.read_bytes() != first[day_file]
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/*/*.parquet')").fetchall()[0]
    assert count == (len(readings) + 1,)
    app.close()


def test_export_of_rollups_and_csv_and_filters(database_url: str, tmp_path: Path) -> None:
    app = _app(database_url)
    readings = _history(app.store)
    refresh(app.store)
    result = app.export(tmp_path / "hourly", tier="1h", devices=["pump-1"], metrics=["pressure"])
    assert result["rows"] == 4 * 24
    hourly = duckdb.sql(f"SELECT sum(count) FROM read_parquet('{tmp_path}/hourly/*/*.parquet')").fetchall()[0]
    assert hourly == (sum(1 for r in readings if r[:2] == ("pump-1", "pressure")),)
    app.export(tmp_path / "csv", format="csv", devices=["pump-2"])
    rows = duckdb.sql(f"SELECT count(*) FROM read_csv('{tmp_path}/csv/*/*.csv')").fetchall()[0]
    assert rows == (sum(1 for r in readings if r[0] == "pump-2"),)
    app.close()


def test_an_export_of_rollups_spans_the_rollups_that_outlived_their_readings(
    database_url: str, tmp_path: Path
) -> None:
    from iotpipe.config import RetentionSettings

    app = App(Settings(database_url=database_url, retention=RetentionSettings(raw_days=3)))  # type: ignore[call-arg]
    _history(app.store)
    refresh(app.store)
    assert app.purge()["tiers"]["raw"]["readings"] > 0  # the first two of the four days
    hourly = app.export(tmp_path / "hourly", tier="1h", devices=["pump-1"], metrics=["pressure"])
    assert (hourly["rows"], hourly["partitions"]) == (4 * 24, 4)  # not only the two days still raw
    daily = app.export(tmp_path / "daily", tier="1d")
    assert daily["rows"] == 4 * 4  # four series, four days
    app.close()


def test_export_names_an_unknown_device(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    app = _app(url)
    write_readings(app.store, [("pump-1", "t", TODAY, 1.0)])
    app.close()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotpipe",
            "--database-url",
            url,
            "export",
            "--out",
            str(tmp_path / "x"),
            "--device",
            "pump-9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no device 'pump-9' in the store" in result.stderr
    assert "Traceback" not in result.stderr


def test_lake_after_a_late_correction_holds_the_corrected_day_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    app = _app(database_url, lake_dir=lake, lake_close_seconds=0)
    pipeline = app.pipeline()  # with the lake's observer, as every pipeline of the app
    from tests.helpers import raw

    day = TODAY - 3 * MICROS_PER_DAY
    pipeline.feed_all(
        [
            raw({"device_id": "m-1", "timestamp": (day + i * MICROS_PER_HOUR) // 1000, "kwh": float(i)})
            for i in range(24)
        ]
        + [raw({"device_id": "m-1", "timestamp": now_micros() // 1000, "kwh": 1.0})]  # today: not closed
    )
    refresh(app.store)
    assert lake_job(app.store, app.settings)["partitions"] == 1
    assert lake_job(app.store, app.settings)["days"] == 0  # nothing changed: nothing rewritten

    app.store.compact(TODAY, step_readings=1000)  # the day moves to the packed tier: same readings
    late = app.pipeline()
    late.feed_all(
        [raw({"device_id": "m-1", "timestamp": (day + 30 * 60 * MICROS_PER_SECOND) // 1000, "kwh": 0.5})]
    )
    result = lake_job(app.store, app.settings)
    assert (result["partitions"], result["rows"]) == (1, 25)
    assert [p.relative_to(lake).as_posix() for p in lake.rglob("*.parquet")] == [
        f"date={day_name(day)}/part-0.parquet"
    ]
    rows = duckdb.sql(
        f"SELECT epoch_us(time), value FROM read_parquet('{lake}/*/*.parquet', hive_partitioning = true) ORDER BY time"
    ).fetchall()
    assert len(rows) == 25 and len({t for t, _ in rows}) == 25
    assert rows[1] == (day + 30 * 60 * MICROS_PER_SECOND, 0.5)
    app.close()


@pytest.mark.parametrize("tier", ["raw", "1d"])
def test_export_of_an_empty_store_writes_nothing(tmp_path: Path, tier: str) -> None:
    app = _app(f"sqlite:///{tmp_path / 'empty.db'}")
    assert app.export(tmp_path / "out", tier=tier)["partitions"] == 0
    app.close()
