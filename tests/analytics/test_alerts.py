"""Alert rules and lifecycle: one alert per condition while it lasts, resolved when it
clears, every transition notified once to a real local webhook receiver."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import select, update

from iotpipe.analytics import alerts as alerting
from iotpipe.analytics.health import check_health
from iotpipe.analytics.quality import compute_quality
from iotpipe.analytics.rollups import refresh
from iotpipe.config import AlertRuleSettings, AnalyticsSettings, Settings
from iotpipe.errors import IotpipeError
from iotpipe.model import MICROS_PER_SECOND, now_micros
from iotpipe.sinks import webhooks
from iotpipe.store import Store
from iotpipe.store.schema import alert_rules, anomalies
from tests.analytics.support import WebhookReceiver, insert_anomaly, write_readings

MINUTE = 60 * MICROS_PER_SECOND
NOW = now_micros() // MINUTE * MINUTE
START = NOW - 120 * MINUTE


def settings_with(**analytics: object) -> Settings:
    return Settings(analytics=AnalyticsSettings(**analytics))  # type: ignore[arg-type]


HIGH_PRESSURE = AlertRuleSettings(
    name="high pressure", device="pump-*", metric="pressure", max=8.0, for_seconds=300, severity="critical"
)


def pressure(minutes: range, value: float) -> list[tuple[str, str, int, float]]:
    return [("pump-1", "pressure", START + m * MINUTE, value) for m in minutes]


def test_threshold_alert_waits_for_its_duration_opens_once_and_resolves(store: Store) -> None:
    with WebhookReceiver() as hook:
        settings = settings_with(alert_rules=[HIGH_PRESSURE], webhooks=[hook.url])

        def run(at_minute: int) -> dict[str, object]:
            now = START + at_minute * MINUTE
            result = alerting.evaluate(store, settings, now)
            webhooks.deliver_due(store, settings, now)
            return result

        write_readings(store, pressure(range(0, 10), 5.0) + pressure(range(10, 14), 9.0))  # 3 min high
        write_readings(store, [*pressure(range(14, 20), 5.0), ("pump-2", "pressure", START, 9.5)])
        assert run(20)["opened"] == 0  # too short; pump-2 has one reading, not 5 minutes
        write_readings(store, pressure(range(20, 30), 9.5))  # high for 9 minutes and counting
        assert run(30)["opened"] == 1
        write_readings(store, pressure(range(30, 40), 9.7))
        assert run(40) == {"rules": 5, "opened": 0, "resolved": 0}  # still the same alert
        (alert,) = alerting.alert_rows(store, "open")
        assert (alert["rule"], alert["severity"], alert["device_id"], alert["metric"]) == (
            "high pressure",
            "critical",
            "pump-1",
            "pressure",
        )
        assert "above max 8" in alert["message"]
        write_readings(store, pressure(range(40, 45), 5.0))
        assert run(45)["resolved"] == 1
        assert alerting.alert_rows(store, "open") == []
        assert [a["status"] for a in alerting.alert_rows(store)] == ["resolved"]
        assert hook.events() == [("opened", "high pressure"), ("resolved", "high pressure")]
        assert len(set(hook.ids)) == 2


def test_an_acknowledged_alert_still_resolves_and_keeps_its_history(store: Store) -> None:
    settings = settings_with(alert_rules=[HIGH_PRESSURE.model_copy(update={"for_seconds": 0})])
    write_readings(store, pressure(range(0, 5), 9.0))
    alerting.evaluate(store, settings, START + 5 * MINUTE)
    (alert,) = alerting.alert_rows(store, "open")
    acknowledged = alerting.acknowledge(store, settings, alert["id"])
    assert acknowledged["status"] == "acknowledged"
    assert alerting.acknowledge(store, settings, alert["id"])["status"] == "acknowledged"  # idempotent
    write_readings(store, pressure(range(5, 6), 1.0))
    alerting.evaluate(store, settings, START + 6 * MINUTE)
    assert [e["event"] for e in alerting.alert_history(store, alert["id"])] == [
        "opened",
        "acknowledged",
        "resolved",
    ]
    with pytest.raises(IotpipeError, match="already resolved"):
        alerting.acknowledge(store, settings, alert["id"])
    with pytest.raises(IotpipeError, match="no alert 999"):
        alerting.acknowledge(store, settings, 999)


def test_offline_device_and_low_battery_alert_once_and_resolve_when_it_reports(store: Store) -> None:
    with WebhookReceiver() as hook:
        settings = settings_with(webhooks=[hook.url])
        write_readings(
            store,
            [("tank-2", "battery", START + m * MINUTE, 15.0) for m in range(0, 30)]
            + [("pump-1", "battery", START + m * MINUTE, 90.0) for m in range(0, 60)],
        )

        def run(now: int) -> None:
            check_health(store, settings, now)
            alerting.evaluate(store, settings, now)
            webhooks.deliver_due(store, settings, now)

        run(START + 60 * MINUTE)  # tank-2 silent 31 min > 5 min; pump-1 just reported
        run(START + 61 * MINUTE)
        active = {(a["rule"], a["device_id"]) for a in alerting.alert_rows(store, "open")}
        assert active == {("device offline", "tank-2"), ("low battery", "tank-2")}
        write_readings(store, [("tank-2", "battery", START + 62 * MINUTE, 95.0)])
        run(START + 62 * MINUTE)
        assert alerting.alert_rows(store, "open") == []
        assert sorted(hook.events()) == [
            ("opened", "device offline"),
            ("opened", "low battery"),
            ("resolved", "device offline"),
            ("resolved", "low battery"),
        ]


def test_each_streaming_anomaly_episode_opens_one_alert_until_it_ends(store: Store) -> None:
    settings = settings_with()
    write_readings(store, pressure(range(0, 60), 5.0))
    series_id = store.cached_series_id("pump-1", "pressure")
    assert series_id is not None
    episode = insert_anomaly(store, series_id, START + 10 * MINUTE, 50.0)
    assert alerting.evaluate(store, settings, NOW)["opened"] == 1
    assert alerting.evaluate(store, settings, NOW)["opened"] == 0
    with store.engine.begin() as conn:
        conn.execute(update(anomalies).where(anomalies.c.id == episode).values(end_time=START + 12 * MINUTE))
    assert alerting.evaluate(store, settings, NOW)["resolved"] == 1
    # An episode that began and ended between two runs still gets its one alert.
    insert_anomaly(store, series_id, START + 30 * MINUTE, -40.0, end_time=START + 31 * MINUTE)
    assert alerting.evaluate(store, settings, NOW) == {"rules": 4, "opened": 1, "resolved": 1}
    kinds = [(a["kind"], a["status"]) for a in alerting.alert_rows(store)]
    assert kinds == [("anomaly", "resolved"), ("anomaly", "resolved")]
    # Batch z-score anomalies are not streaming episodes: no alert.
    insert_anomaly(store, series_id, START + 40 * MINUTE, 80.0, method="zscore")
    assert alerting.evaluate(store, settings, NOW)["opened"] == 0


def test_an_anomaly_alerts_severity_rises_with_the_episodes_score(store: Store) -> None:
    settings = settings_with(anomaly_severity_scores={"major": 10, "critical": 20})
    write_readings(store, pressure(range(0, 60), 5.0))
    series_id = store.cached_series_id("pump-1", "pressure")
    assert series_id is not None
    for minute, score in ((10, 6.0), (20, 10.0), (30, 19.9), (40, 250.0)):
        insert_anomaly(
            store,
            series_id,
            START + minute * MINUTE,
            50.0,
            end_time=START + (minute + 1) * MINUTE,
            score=score,
        )
    assert alerting.evaluate(store, settings, NOW)["opened"] == 4
    found = [(a["severity"], a["message"]) for a in reversed(alerting.alert_rows(store))]
    assert [severity for severity, _ in found] == ["minor", "major", "major", "critical"]
    assert "(score 250.0)" in found[-1][1]
    # A level never lowers an alert below the rule's own severity.
    settings = settings_with(anomaly_severity="major", anomaly_severity_scores={"warning": 1})
    insert_anomaly(store, series_id, START + 50 * MINUTE, 50.0, score=7.0)
    alerting.evaluate(store, settings, NOW)
    assert alerting.alert_rows(store, status="open")[0]["severity"] == "major"


@pytest.mark.parametrize("levels", [{"major": 0}, {"critical": -3}, {"major": float("inf")}, {"urgent": 10}])
def test_anomaly_severity_scores_are_positive_decades_of_known_severities(levels: dict[str, float]) -> None:
    with pytest.raises(ValidationError, match="anomaly_severity_scores"):
        settings_with(anomaly_severity_scores=levels)


def test_low_quality_day_raises_an_alert(store: Store) -> None:
    settings = settings_with(quality_threshold=90)
    write_readings(store, [("tank-2", "humidity", START + m * MINUTE, 150.0) for m in range(0, 60)])
    refresh(store)
    compute_quality(store, settings, START + 60 * MINUTE)
    alerting.evaluate(store, settings, START + 60 * MINUTE)
    (alert,) = alerting.alert_rows(store, "open")
    assert (alert["rule"], alert["kind"], alert["value"]) == ("low data quality", "quality", 60.0)
    assert "100.0 % out of range" in alert["message"]


def test_a_failing_webhook_is_retried_with_backoff_and_delivered_once(store: Store) -> None:
    with WebhookReceiver(refuse_first=2) as hook:
        settings = settings_with(
            alert_rules=[HIGH_PRESSURE.model_copy(update={"for_seconds": 0})], webhooks=[hook.url]
        )
        write_readings(store, pressure(range(0, 3), 9.0))
        alerting.evaluate(store, settings, NOW)
        second = MICROS_PER_SECOND
        assert webhooks.deliver_due(store, settings, NOW) == {"sent": 0, "retrying": 1, "failed": 0}
        assert webhooks.deliver_due(store, settings, NOW + second) == {"sent": 0, "retrying": 0, "failed": 0}
        assert webhooks.deliver_due(store, settings, NOW + 2 * second)["retrying"] == 1  # backoff 2 s
        assert webhooks.deliver_due(store, settings, NOW + 5 * second)["retrying"] == 0  # next after 4 s
        assert webhooks.deliver_due(store, settings, NOW + 6 * second)["sent"] == 1
        assert webhooks.deliver_due(store, settings, NOW + 60 * second)["sent"] == 0
        assert hook.events() == [("opened", "high pressure")]


def test_a_webhook_that_never_answers_gives_up_without_failing_the_job(store: Store) -> None:
    settings = settings_with(
        alert_rules=[HIGH_PRESSURE.model_copy(update={"for_seconds": 0})],
        webhooks=["http://127.0.0.1:9/nobody-listens"],
        webhook_max_attempts=2,
        webhook_timeout=1.0,
    )
    write_readings(store, pressure(range(0, 3), 9.0))
    alerting.evaluate(store, settings, NOW)
    assert webhooks.deliver_due(store, settings, NOW)["retrying"] == 1
    assert webhooks.deliver_due(store, settings, NOW + 10 * MICROS_PER_SECOND)["failed"] == 1
    assert webhooks.deliver_due(store, settings, NOW + 100 * MICROS_PER_SECOND)["failed"] == 0


def test_rules_removed_from_the_config_file_are_disabled_not_deleted(store: Store) -> None:
    alerting.sync_rules(store, settings_with(alert_rules=[HIGH_PRESSURE]), NOW)
    alerting.sync_rules(store, settings_with(), NOW)
    with store.engine.connect() as conn:
        rules = {r.name: (r.origin, r.enabled) for r in conn.execute(select(alert_rules))}
    assert rules["high pressure"] == ("config", False)
    assert rules["device offline"] == ("builtin", True)


def test_a_rule_needs_a_bound() -> None:
    with pytest.raises(ValueError, match="needs min, max or both"):
        AlertRuleSettings(name="nothing", metric="pressure")


def test_a_rule_needs_finite_bounds_the_right_way_round() -> None:
    with pytest.raises(ValueError, match="finite number"):
        AlertRuleSettings(name="nan", metric="pressure", max=float("nan"))
    with pytest.raises(ValueError, match="finite number"):
        AlertRuleSettings(name="wait", metric="pressure", max=1.0, for_seconds=float("inf"))
    with pytest.raises(ValueError, match=r"min \(7\) is above max \(6.5\).*swap them"):
        AlertRuleSettings(name="upside down", metric="pressure", min=7, max=6.5)
    assert AlertRuleSettings(name="exactly", metric="pressure", min=3, max=3).max == 3.0
