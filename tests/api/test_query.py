"""The query API under /api/v1 against a real server, on both engines."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.api.conftest import Served

DAY0 = int(dt.datetime(2026, 1, 5, tzinfo=dt.UTC).timestamp())  # a Monday, 00:00 UTC


def minutely(
    served: Served, device: str, metric: str, minutes: int, start: int = DAY0, value=lambda i: float(i)
) -> None:
    """One reading a minute from `start` (epoch seconds), value(i) for the i-th."""
    lines = "\n".join(
        f"telemetry,device_id={device} {metric}={value(i)} {start + 60 * i}" for i in range(minutes)
    )
    answer = served.client.post(
        "/api/v1/ingest?precision=s", content=lines.encode(), headers={"content-type": "text/plain"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == minutes


def iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def test_devices_lists_status_last_seen_and_metrics(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 3)
    minutely(served, "pump-1", "pressure", 2)
    body = served.client.get("/api/v1/devices").json()
    (device,) = body["items"]
    assert device["device_id"] == "pump-1"
    assert device["last_seen"] == iso(DAY0 + 120)
    assert device["status"] == "offline"  # silent since January
    assert [m["name"] for m in device["metrics"]] == ["pressure", "temperature"]
    assert body["next"] is None


def test_devices_filter_by_text_and_status_and_page_with_a_cursor(served: Served) -> None:
    for n in range(5):
        minutely(served, f"tank-{n}", "level", 1)
    minutely(served, "pump-9", "level", 1)
    assert [d["device_id"] for d in served.client.get("/api/v1/devices?q=TANK").json()["items"]] == [
        f"tank-{n}" for n in range(5)
    ]
    assert served.client.get("/api/v1/devices?status=online").json()["items"] == []
    first = served.client.get("/api/v1/devices?limit=4&sort=-device_id").json()
    assert [d["device_id"] for d in first["items"]] == ["tank-4", "tank-3", "tank-2", "tank-1"]
    second = served.client.get(f"/api/v1/devices?limit=4&sort=-device_id&cursor={first['next']}").json()
    assert [d["device_id"] for d in second["items"]] == ["tank-0", "pump-9"]
    assert second["next"] is None


def test_bad_list_parameters_are_problems_saying_what_to_send(served: Served) -> None:
    wrong_sort = served.client.get("/api/v1/devices?sort=colour")
    assert wrong_sort.status_code == 400
    assert wrong_sort.headers["content-type"] == "application/problem+json"
    assert "unknown sort 'colour'" in wrong_sort.json()["detail"]
    too_many = served.client.get("/api/v1/devices?limit=100000")
    assert too_many.status_code == 422 and too_many.json()["errors"][0]["loc"] == "query.limit"
    forged = served.client.get("/api/v1/devices?cursor=bm90LWEtY3Vyc29y")
    assert forged.status_code == 400 and "was not given out by this list" in forged.json()["detail"]


def test_unknown_device_and_metric_are_404_problems(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 1)
    missing = served.client.get("/api/v1/devices/pump-2")
    assert missing.status_code == 404 and missing.json()["title"] == "Not Found"
    assert served.client.get("/api/v1/devices/pump-2/latest").status_code == 404
    no_metric = served.client.get("/api/v1/devices/pump-1/series/humidity")
    assert no_metric.status_code == 404
    assert "it has: temperature" in no_metric.json()["detail"]


def test_latest_gives_each_metrics_newest_reading(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 5, value=lambda i: 20.0 + i)
    minutely(served, "pump-1", "pressure", 2, value=lambda i: 3.0 + i)
    latest = served.client.get("/api/v1/devices/pump-1/latest").json()
    assert latest["readings"] == [
        {"metric": "pressure", "unit": None, "time": iso(DAY0 + 60), "value": 4.0},
        {"metric": "temperature", "unit": None, "time": iso(DAY0 + 240), "value": 24.0},
    ]


def test_raw_history_is_columnar_in_epoch_ms(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 10)
    body = served.client.get(
        f"/api/v1/devices/pump-1/series/temperature?bucket=raw&start={iso(DAY0)}&end={(DAY0 + 300) * 1000}"
    ).json()
    assert body["times"] == [(DAY0 + 60 * i) * 1000 for i in range(5)]
    assert body["values"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert body["truncated"] is False and body["next"] is None and body["reduced"] is False


def test_a_raw_range_past_max_points_is_truncated_with_a_cursor_to_the_rest(
    database_url: str, served_with
) -> None:
    served = served_with(database_url, max_points=10)
    minutely(served, "pump-1", "temperature", 25)
    url = f"/api/v1/devices/pump-1/series/temperature?bucket=raw&start={iso(DAY0)}&end={iso(DAY0 + 3600)}"
    pages = [served.client.get(url).json()]
    while pages[-1]["next"]:
        pages.append(served.client.get(f"{url}&cursor={pages[-1]['next']}").json())
    assert [p["points"] for p in pages] == [10, 10, 5]
    assert [p["truncated"] for p in pages] == [True, True, False]
    assert [v for p in pages for v in p["values"]] == [float(i) for i in range(25)]


def test_raw_readings_are_reduced_only_when_more_than_the_width(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 13)
    url = f"/api/v1/devices/pump-1/series/temperature?bucket=raw&width=12&start={iso(DAY0)}"
    exactly = served.client.get(f"{url}&end={iso(DAY0 + 12 * 60)}").json()  # readings 0..11
    assert exactly["reduced"] is False and exactly["values"] == [float(i) for i in range(12)]
    one_more = served.client.get(f"{url}&end={iso(DAY0 + 13 * 60)}").json()  # readings 0..12
    assert one_more["reduced"] is True and sum(one_more["count"]) == 13


def test_raw_readings_past_the_width_are_reduced_to_min_max_per_pixel_column(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 120, value=lambda i: float(i % 7))
    body = served.client.get(
        f"/api/v1/devices/pump-1/series/temperature?bucket=raw&width=12&start={iso(DAY0)}&end={iso(DAY0 + 7200)}"
    ).json()
    assert body["reduced"] is True and body["points"] == 12
    assert body["count"] == [10] * 12
    assert body["times"][:2] == [DAY0 * 1000, (DAY0 + 600) * 1000]
    assert body["min"][0] == 0.0 and body["max"][0] == 6.0  # column 0 holds readings 0..9
    assert body["values"][0] == pytest.approx(sum(i % 7 for i in range(10)) / 10)


def test_five_minute_buckets_are_aggregated_from_the_readings(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 12)
    body = served.client.get(
        f"/api/v1/devices/pump-1/series/temperature?bucket=5m&agg=max&start={iso(DAY0)}&end={iso(DAY0 + 3600)}"
    ).json()
    assert body["bucket"] == "5m" and body["source"] == "readings"
    assert body["count"] == [5, 5, 2]
    assert body["values"] == [4.0, 9.0, 11.0]


def test_a_start_inside_a_bucket_neither_drops_nor_adds_readings(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 3 * 24 * 60, value=lambda i: float(i))  # 3 days
    served.app.run_jobs("rollups")
    base = "/api/v1/devices/pump-1/series/temperature?agg=count"
    # 5-minute buckets from the readings: the first holds only readings from `start`.
    five = served.client.get(f"{base}&bucket=5m&start={iso(DAY0 + 150)}&end={iso(DAY0 + 900)}").json()
    assert five["times"] == [(DAY0 + 150) * 1000, (DAY0 + 300) * 1000, (DAY0 + 600) * 1000]
    assert five["count"] == [2, 5, 5] and five["min"][0] == 3.0  # readings 3, 4; not 0..4
    # Rollups are whole buckets: the one holding `start` is there, from its own start.
    hourly = served.client.get(f"{base}&bucket=1h&start={iso(DAY0 + 1800)}&end={iso(DAY0 + 3 * 3600)}").json()
    assert hourly["times"] == [DAY0 * 1000, (DAY0 + 3600) * 1000, (DAY0 + 7200) * 1000]
    assert hourly["values"] == [60, 60, 60]
    daily = served.client.get(
        f"{base}&bucket=1d&start={iso(DAY0 + 5 * 3600)}&end={iso(DAY0 + 26 * 3600)}"
    ).json()
    assert daily["times"] == [DAY0 * 1000, (DAY0 + 86400) * 1000] and daily["values"] == [1440, 1440]
    weekly = served.client.get(
        f"{base}&bucket=1w&start={iso(DAY0 + 86400)}&end={iso(DAY0 + 2 * 86400)}"
    ).json()
    assert weekly["times"] == [DAY0 * 1000] and weekly["values"] == [3 * 1440]  # DAY0 is a Monday
    # Merged into pixel columns, the bucket before `start` goes to the first column.
    merged = served.client.get(
        f"{base}&bucket=1h&width=10&start={iso(DAY0 + 1800)}&end={iso(DAY0 + 48 * 3600)}"
    ).json()
    assert merged["reduced"] is True and merged["times"][0] == (DAY0 + 1800) * 1000
    assert sum(merged["count"]) == 48 * 60


def test_hourly_history_and_auto_answer_from_the_rollups(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 3 * 24 * 60, value=lambda i: float(i // 60))  # 3 days
    served.app.run_jobs("rollups")
    hourly = served.client.get(
        f"/api/v1/devices/pump-1/series/temperature?bucket=1h&start={iso(DAY0)}&end={iso(DAY0 + 3 * 86400)}"
    ).json()
    assert hourly["source"] == "rollups" and hourly["points"] == 72
    assert hourly["values"][:3] == [0.0, 1.0, 2.0] and hourly["count"][0] == 60
    auto = served.client.get(
        f"/api/v1/devices/pump-1/series/temperature?width=60&start={iso(DAY0)}&end={iso(DAY0 + 3 * 86400)}"
    ).json()
    assert auto["bucket"] == "1h" and auto["source"] == "rollups"  # 72 hours ≥ 60/3; 3 days < 20
    assert auto["reduced"] is True and auto["points"] <= 60
    assert sum(auto["count"]) == 3 * 24 * 60
    assert min(auto["min"]) == 0.0 and max(auto["max"]) == 71.0


def test_auto_over_a_short_range_reads_the_readings(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 30)
    body = served.client.get(
        f"/api/v1/devices/pump-1/series/temperature?start={iso(DAY0)}&end={iso(DAY0 + 3600)}"
    ).json()
    assert body["requested_bucket"] == "auto" and body["bucket"] == "raw" and body["points"] == 30


def test_series_refuses_bad_buckets_and_times(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 1)
    base = "/api/v1/devices/pump-1/series/temperature"
    assert served.client.get(f"{base}?bucket=2h").status_code == 400
    bad_time = served.client.get(f"{base}?start=yesterday")
    assert bad_time.status_code == 400 and "ISO 8601" in bad_time.json()["detail"]
    backwards = served.client.get(f"{base}?start={iso(DAY0 + 60)}&end={iso(DAY0)}")
    assert backwards.status_code == 400 and "must be before end" in backwards.json()["detail"]


def test_trends_and_quality_are_pages(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 3 * 24 * 60, value=lambda i: float(i // 1440))
    served.app.run_jobs("rollups")
    served.app.run_jobs("quality")
    trends = served.client.get("/api/v1/devices/pump-1/trends?metric=temperature&limit=2").json()
    assert [d["day"] for d in trends["items"]] == ["2026-01-05", "2026-01-06"]
    rest = served.client.get(
        f"/api/v1/devices/pump-1/trends?metric=temperature&cursor={trends['next']}"
    ).json()
    assert [(d["day"], d["change"]) for d in rest["items"]] == [("2026-01-07", 1.0)]
    quality = served.client.get("/api/v1/quality?days=36500").json()
    assert [d["device_id"] for d in quality["items"]] == ["pump-1"]


def test_alerts_list_and_acknowledge(served: Served) -> None:
    rule = served.client.post(
        "/api/v1/alert-rules", json={"name": "hot", "metric": "temperature", "max": 50, "severity": "major"}
    )
    assert rule.status_code == 201, rule.text
    now = int(dt.datetime.now(dt.UTC).timestamp()) - 120
    minutely(served, "pump-1", "temperature", 2, start=now, value=lambda i: 90.0)
    served.app.run_jobs("alerts")
    alerts = served.client.get("/api/v1/alerts?status=open&severity=major").json()["items"]
    (alert,) = [a for a in alerts if a["rule"] == "hot"]
    # A misspelt filter is an error, not an empty list that reads as "no major alerts".
    for query, reason in (
        ("severity=Major", "unknown severity 'Major'; choose one of: critical, major, minor, warning"),
        ("status=closed", "unknown alert status 'closed'; choose one of: open, acknowledged, resolved"),
    ):
        wrong = served.client.get(f"/api/v1/alerts?{query}")
        assert (wrong.status_code, wrong.json()["detail"]) == (400, reason)
    acked = served.client.post(f"/api/v1/alerts/{alert['id']}/ack")
    assert acked.status_code == 200 and acked.json()["status"] == "acknowledged"
    assert served.client.post("/api/v1/alerts/999999/ack").status_code == 404
    stats = served.client.get("/api/v1/stats").json()
    assert stats["alerts"]["by_severity"]["major"] >= 1


def test_alert_rules_are_validated_like_the_config_files(served: Served) -> None:
    no_bound = served.client.post("/api/v1/alert-rules", json={"name": "r", "metric": "temperature"})
    assert no_bound.status_code == 422 and "needs min, max or both" in no_bound.json()["detail"]
    bad_severity = served.client.post(
        "/api/v1/alert-rules", json={"name": "r", "metric": "t", "max": 1, "severity": "apocalyptic"}
    )
    assert bad_severity.status_code == 422 and "severity" in bad_severity.json()["detail"]
    # A bound that is not a finite number would be stored as no bound at all.
    for bound in ("NaN", "Infinity", "1e400"):
        body = f'{{"name": "r", "metric": "t", "max": {bound}}}'
        not_finite = served.client.post(
            "/api/v1/alert-rules", content=body, headers={"content-type": "application/json"}
        )
        assert not_finite.status_code == 422, bound
        assert "max" in not_finite.json()["detail"] and "finite number" in not_finite.json()["detail"]
    upside_down = served.client.post(
        "/api/v1/alert-rules", json={"name": "r", "metric": "t", "min": 7, "max": 6.5}
    )
    assert upside_down.status_code == 422
    assert "min (7) is above max (6.5)" in upside_down.json()["detail"]
    assert served.client.get("/api/v1/alert-rules").json()["items"] == []
    created = served.client.post("/api/v1/alert-rules", json={"name": "r", "metric": "t", "max": 1}).json()
    assert (
        served.client.post("/api/v1/alert-rules", json={"name": "r", "metric": "t", "max": 1}).status_code
        == 409
    )
    changed = served.client.put(
        f"/api/v1/alert-rules/{created['id']}?enabled=false", json={"name": "r", "metric": "t", "min": 0}
    ).json()
    assert (changed["min"], changed["max"], changed["enabled"]) == (0.0, None, False)
    assert served.client.get(f"/api/v1/alert-rules/{created['id']}").json()["min"] == 0.0
    assert served.client.delete(f"/api/v1/alert-rules/{created['id']}").json()["deleted"] is True
    assert served.client.get(f"/api/v1/alert-rules/{created['id']}").status_code == 404


def test_builtin_rules_cannot_be_edited_through_the_api(served: Served) -> None:
    served.app.run_jobs("alerts")  # syncs the built-in rules
    rules = served.client.get("/api/v1/alert-rules").json()["items"]
    builtin = next(r for r in rules if r["origin"] == "builtin")
    refused = served.client.delete(f"/api/v1/alert-rules/{builtin['id']}")
    assert refused.status_code == 409 and "comes from the builtin settings" in refused.json()["detail"]


def test_a_filter_on_an_unknown_device_is_a_404_not_an_empty_list(served: Served) -> None:
    minutely(served, "pump-1", "temperature", 1)
    for view in ("anomalies", "alerts", "quality"):
        known = served.client.get(f"/api/v1/{view}?device_id=pump-1")
        assert known.status_code == 200 and known.json()["items"] == [], view
        typo = served.client.get(f"/api/v1/{view}?device_id=Pump-1")
        assert typo.status_code == 404, view
        assert "no device 'Pump-1' in the store; check the device id (case matters)" in typo.json()["detail"]
    metric = served.client.get("/api/v1/anomalies?device_id=pump-1&metric=temprature")
    assert (
        metric.status_code == 404
        and "has no metric 'temprature'; it has: temperature" in metric.json()["detail"]
    )


def test_stats_and_dead_letters(served: Served) -> None:
    served.post_lines("telemetry,device_id=a t=1 1767571200000000000\nnot line protocol")
    stats = served.client.get("/api/v1/stats").json()
    assert stats["devices"]["total"] == 1 and stats["dead_letters"] == 1
    assert stats["ingest"]["readings_per_second"] > 0
    letters = served.client.get("/api/v1/dead-letters").json()
    (letter,) = letters["items"]
    assert letter["origin"] == "POST /api/v1/ingest:2" and "no device_id or host tag" in letter["reason"]
    # A replay is a second pass, not an arrival: what arrived still adds up afterwards.
    replayed = served.client.post("/api/v1/dead-letters/replay").json()
    assert (replayed["replayed"], replayed["still_dead"]) == (1, 1)
    assert served.app.store.stats()["dead_letter_messages"] == 1
    metrics = served.client.get("/metrics").text
    assert 'iotpipe_ingest_messages_total{outcome="dead_lettered",source="http"} 1.0' in metrics
    assert 'iotpipe_ingest_messages_total{outcome="accepted",source="http"} 1.0' in metrics
    assert 'iotpipe_ingest_messages_total{outcome="dead_lettered",source="replay"} 1.0' in metrics


def test_stats_counts_readings_from_the_rollups_anew_at_most_every_total_ttl(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view is recomputed every STATS_TTL; its readings stored, a sum over every
    weekly rollup, only every STATS_TOTAL_TTL."""
    from iotpipe.analytics.rollups import refresh
    from iotpipe.app import queries

    monkeypatch.setattr(queries, "STATS_TTL", 0.0)
    minutely(served, "pump-1", "flow", 3)
    refresh(served.app.store)
    assert served.client.get("/api/v1/stats").json()["readings"]["stored"] == 3
    minutely(served, "pump-2", "flow", 4)
    refresh(served.app.store)
    stats = served.client.get("/api/v1/stats").json()
    assert stats["devices"]["total"] == 2  # the view itself is new
    assert stats["readings"]["stored"] == 3  # its count of readings is kept
    monkeypatch.setattr(queries, "STATS_TOTAL_TTL", 0.0)
    assert served.client.get("/api/v1/stats").json()["readings"]["stored"] == 7


def test_anomalies_page_newest_first(served: Served) -> None:
    values = [10.0] * 60 + [10.5, 9.5] * 30
    values[100] = 500.0
    minutely(served, "pump-1", "temperature", len(values), value=lambda i: values[i])
    served.app.detect_anomalies(start=DAY0 * 1_000_000)
    page = served.client.get("/api/v1/anomalies?device_id=pump-1&limit=1").json()
    assert page["items"][0]["time"] == iso(DAY0 + 6000) and page["items"][0]["method"] == "zscore"
    # A range the wrong way round is an error, not an empty page that reads as "no anomalies".
    for path in ("/api/v1/anomalies?", "/api/v1/devices/pump-1/trends?metric=temperature&"):
        backwards = served.client.get(f"{path}start={iso(DAY0 + 60)}&end={iso(DAY0)}")
        assert (backwards.status_code, backwards.json()["detail"]) == (
            400,
            f"start ({iso(DAY0 + 60)}) must be before end ({iso(DAY0)})",
        ), path


def test_unknown_routes_and_methods_are_problems(served: Served) -> None:
    assert served.client.get("/api/v1/nothing").json()["status"] == 404
    wrong = served.client.delete("/api/v1/devices")
    assert wrong.status_code == 405 and wrong.headers["content-type"] == "application/problem+json"
