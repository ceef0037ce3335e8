"""Retention per tier: what goes, what stays, a dry run that only counts."""

from __future__ import annotations

from pathlib import Path

from iotpipe.analytics.common import find_series
from iotpipe.analytics.rollups import bucket_rows, refresh
from iotpipe.app import App
from iotpipe.config import RetentionSettings, Settings
from iotpipe.model import MICROS_PER_DAY, MICROS_PER_HOUR, day_start, now_micros
from iotpipe.store import open_store
from tests.analytics.support import write_readings


def _app(database_url: str, **retention: int) -> App:
    return App(Settings(database_url=database_url, retention=RetentionSettings(chunk_rows=7, **retention)))  # type: ignore[call-arg]


def test_purge_deletes_each_tier_past_its_retention_and_keeps_the_rest(database_url: str) -> None:
    # One clock for the whole test: the suite may cross a midnight between collection and here,
    # or between the dry run and the purge, and retention counts whole days back from "now".
    now = now_micros()
    today = day_start(now)
    store = open_store(database_url)
    days = [today - d * MICROS_PER_DAY for d in range(12, 0, -1)]
    write_readings(
        store, [("d", "t", day + h * MICROS_PER_HOUR, float(h)) for day in days for h in range(24)]
    )
    refresh(store)
    store.compact(today - 6 * MICROS_PER_DAY, step_readings=50)  # days 12..7 ago packed, 6..1 hot
    store.close()
    app = _app(database_url, raw_days=4, hourly_days=8)

    plan = app.purge(dry_run=True, now=now)
    assert plan["tiers"]["raw"] == {
        "before": plan["tiers"]["raw"]["before"],
        "hot_readings": 2 * 24,  # days 6 and 5 ago
        "packed_days": 6,
        "readings": 8 * 24,
    }
    assert plan["tiers"]["1h"]["rows"] == 4 * 24
    assert plan["kept_forever"] == ["1d", "1w"]
    assert app.stats()["readings"] == 12 * 24  # a dry run deletes nothing

    done = app.purge(now=now)
    assert done["tiers"]["raw"] == {**plan["tiers"]["raw"], "transactions": 7 + 1}  # 48 hot rows by 7, 6 days
    assert done["tiers"]["1h"] == {
        **plan["tiers"]["1h"],
        "transactions": 4 * 24 // 7 + 1,
    }  # as the dry run said
    assert app.stats()["readings"] == 4 * 24
    with app.store.engine.connect() as conn:
        ref = find_series(conn, "d", "t")
    times, _ = app.store.read_series(ref.series_id)
    assert times.min() == today - 4 * MICROS_PER_DAY
    assert len(bucket_rows(app.store, ref, "1h")) == 8 * 24
    assert len(bucket_rows(app.store, ref, "1d")) == 12  # kept forever
    assert app.purge(dry_run=True, now=now)["tiers"]["raw"]["readings"] == 0
    app.close()


def test_purge_without_retention_keeps_everything(tmp_path: Path) -> None:
    app = _app(f"sqlite:///{tmp_path / 'r.db'}")
    assert app.purge() == {"dry_run": False, "tiers": {}, "kept_forever": ["raw", "1h", "1d", "1w"]}
    app.close()
