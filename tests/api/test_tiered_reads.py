"""The API reads history through both tiers: what it answers is the same before and after
compaction moves the old days into the packed tier, and while a late reading sits hot in
a packed day. On both engines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from iotpipe.model import MICROS_PER_SECOND, day_start, now_micros
from tests.api.conftest import Served, serve
from tests.api.test_query import iso
from tests.api.test_thingspeak_api import CHANNEL_86945

NOW = now_micros() // MICROS_PER_SECOND
DAY0 = day_start(now_micros()) // MICROS_PER_SECOND - 10 * 86400  # ten days ago: packed by the job
HOUR = 3600


@pytest.fixture
def served(database_url: str) -> Iterator[Served]:
    """A server whose history answers hold at most 1,000 points, so raw reads page."""
    yield from serve(database_url, max_points=1000)


def post(served: Served, lines: list[str]) -> None:
    answer = served.client.post(
        "/api/v1/ingest?precision=s",
        content="\n".join(lines).encode(),
        headers={"content-type": "text/plain"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == len(lines)


def series_pages(served: Served, url: str) -> list[dict[str, Any]]:
    """Every page of a history answer, following `next`."""
    pages = [served.client.get(url).json()]
    while pages[-1]["next"] is not None:
        assert len(pages) < 20
        pages.append(served.client.get(f"{url}&cursor={pages[-1]['next']}").json())
    return pages


SERIES = "/api/v1/devices/pump-1/series"
QUERIES = {
    "raw, paged": f"{SERIES}/temperature?bucket=raw&start={iso(DAY0 + 10 * HOUR)}&end={iso(DAY0 + 53 * HOUR)}",
    "raw, min/max per pixel": f"{SERIES}/temperature?bucket=raw&width=300"
    f"&start={iso(DAY0 + 10 * HOUR)}&end={iso(DAY0 + 53 * HOUR)}",
    "auto to now (packed and hot)": f"{SERIES}/temperature?width=500&start={iso(DAY0 - 86400)}&end={iso(NOW + HOUR)}",
    "1m across midnight": f"{SERIES}/temperature?bucket=1m&start={iso(DAY0 + 23 * HOUR)}&end={iso(DAY0 + 25 * HOUR)}",
    "5m, three days": f"{SERIES}/temperature?bucket=5m&agg=max&start={iso(DAY0)}&end={iso(DAY0 + 72 * HOUR)}",
    "5m from inside a bucket, across days": f"{SERIES}/temperature?bucket=5m&agg=count"
    f"&start={iso(DAY0 + 23 * HOUR + 150)}&end={iso(DAY0 + 49 * HOUR)}",
    "pressure raw": f"{SERIES}/pressure?bucket=raw&start={iso(DAY0)}&end={iso(NOW)}",
}
THINGSPEAK = (
    "/channels/86945/feeds.json",
    "/channels/86945/feeds.json?results=2",
    "/channels/86945/fields/2.json",
    "/channels/86945/feeds/last.json",
    "/channels/86945/feeds.csv",
)


def answers(served: Served) -> dict[str, Any]:
    found: dict[str, Any] = {name: series_pages(served, url) for name, url in QUERIES.items()}
    found["latest"] = served.client.get("/api/v1/devices/pump-1/latest").json()
    found["devices"] = served.client.get("/api/v1/devices").json()
    stats = served.client.get("/api/v1/stats").json()
    found["stats"] = {k: stats[k] for k in ("devices", "readings", "alerts", "quality", "dead_letters")}
    for url in THINGSPEAK:
        answer = served.client.get(url)
        found[url] = answer.json() if url.endswith(".json") else answer.text
    return found


def post_history(served: Served) -> None:
    """Three days of minutely temperature (values in quarters: every sum is exact), a day of
    pressure every 10 minutes, and an old ThingSpeak channel: all older than the hot window."""
    post(
        served,
        [f"telemetry,device_id=pump-1 temperature={(i % 400) / 4} {DAY0 + 60 * i}" for i in range(3 * 1440)],
    )
    post(
        served, [f"telemetry,device_id=pump-1 pressure={i / 4} {DAY0 + 86400 + 600 * i}" for i in range(144)]
    )
    assert served.client.post("/api/v1/ingest", json=CHANNEL_86945).json()["stored"] == 5


def packed_readings(served: Served) -> int:
    return int(served.app.store.stats()["tiers"]["packed"]["readings"])


def test_api_series_reads_packed_history_exactly(served: Served) -> None:
    post_history(served)
    post(served, [f"telemetry,device_id=pump-1 temperature=-3.5 {NOW - HOUR}"])  # stays hot
    before = answers(served)
    assert sum(len(p["times"]) for p in before["raw, paged"]) == 43 * 60
    assert len(before["raw, paged"]) == 3  # paged by max_points through the packed tier
    assert before["raw, min/max per pixel"][0]["reduced"] is True
    assert {r["metric"]: r["value"] for r in before["latest"]["readings"]} == {
        "pressure": 35.75,
        "temperature": -3.5,
    }

    assert packed_readings(served) == 0
    served.app.run_jobs("compact")
    assert packed_readings(served) == 3 * 1440 + 144 + 5  # every old reading moved; the recent one stays hot
    assert answers(served) == before


def test_a_late_reading_in_a_packed_day_is_read_once_before_and_after_repacking(served: Served) -> None:
    post_history(served)
    served.app.run_jobs("compact")
    packed = packed_readings(served)
    # Late: a temperature between two packed minutes, a pressure after its packed day's
    # last one (the series' newest reading is now hot, in a packed day), a ThingSpeak entry.
    post(served, [f"telemetry,device_id=pump-1 temperature=99.25 {DAY0 + 86400 + 30}"])
    post(served, [f"telemetry,device_id=pump-1 pressure=-1.5 {DAY0 + 2 * 86400 - 60}"])
    late = served.client.post(
        "/api/v1/ingest",
        json={
            **CHANNEL_86945,
            "feeds": [{"created_at": "2017-02-12T00:00:00Z", "entry_id": 99, "field1": "7"}],
        },
    )
    assert late.json()["stored"] == 1
    assert packed_readings(served) == packed  # the late readings are hot, their days packed
    mixed = answers(served)
    raw = [t for page in mixed["raw, paged"] for t in page["times"]]
    assert raw.count((DAY0 + 86400 + 30) * 1000) == 1 and len(raw) == 43 * 60 + 1
    assert {r["metric"]: r["value"] for r in mixed["latest"]["readings"]}["pressure"] == -1.5
    assert mixed["/channels/86945/feeds/last.json"]["entry_id"] == 4

    served.app.run_jobs("compact")  # re-packs the days with their late readings
    assert packed_readings(served) == packed + 3
    assert answers(served) == mixed
