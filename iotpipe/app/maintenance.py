"""The storage jobs: compaction into the packed tier, and retention per tier.

Both run in short transactions (store/compaction.py, store/retention.py) so that ingest
goes on beside them; `iotpipe run` schedules them like the analytics jobs (app/wiring.py
ALL_JOBS), `iotpipe jobs compact|retention` runs them once, and on PostgreSQL one
instance at a time runs each (analytics.jobs.run_job's advisory lock).
"""

from __future__ import annotations

import time
from typing import Any

from iotpipe.config import RetentionSettings, Settings, StorageSettings
from iotpipe.model import MICROS_PER_DAY, Micros, day_name, day_start, now_micros
from iotpipe.store import Store, retention


def pack_before(settings: StorageSettings, now: Micros) -> Micros:
    """The first day still hot: the days before it ended `hot_days` days ago or earlier."""
    return day_start(now - settings.hot_days * MICROS_PER_DAY)


def compact_job(store: Store, settings: Settings) -> dict[str, Any]:
    config = settings.storage
    before = pack_before(config, now_micros())
    deadline = time.monotonic() + config.compact_seconds
    return {"before": day_name(before), **store.compact(before, config.compact_step_readings, deadline)}


def cutoffs(settings: RetentionSettings, now: Micros) -> dict[str, Micros]:
    """Per tier with a retention, the time before which its data goes (a UTC day start)."""
    today = now - now % MICROS_PER_DAY
    days = {
        "raw": settings.raw_days,
        "1h": settings.hourly_days,
        "1d": settings.daily_days,
        "1w": settings.weekly_days,
    }
    return {tier: today - n * MICROS_PER_DAY for tier, n in days.items() if n is not None}


def purge(
    store: Store, settings: RetentionSettings, dry_run: bool = False, now: Micros | None = None
) -> dict[str, Any]:
    """Delete (or with `dry_run`, count) what each tier's retention lets go."""
    limits = cutoffs(settings, now if now is not None else now_micros())
    tiers: dict[str, Any] = {}
    for tier, cutoff in limits.items():
        entry: dict[str, Any] = {"before": day_name(cutoff)}
        if dry_run:
            with store.read_connection() as conn:
                entry.update(retention.expired(conn, tier, cutoff))
        else:
            entry.update(
                retention.purge(store.write_transaction, tier, cutoff, settings.chunk_rows, lambda: False)
            )
        tiers[tier] = entry
    kept = [t for t in retention.TIERS if t not in limits]
    return {"dry_run": dry_run, "tiers": tiers, "kept_forever": kept}


def retention_job(store: Store, settings: Settings) -> dict[str, Any]:
    return purge(store, settings.retention)
