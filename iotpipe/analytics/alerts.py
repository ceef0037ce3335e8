"""Alerts: rules evaluated against the store, one alert per condition, open → acknowledged → resolved.

Rules come from the config file (`[[analytics.alert_rules]]`, synced into `alert_rules`
on every run), from the API (stored there directly) and from the built-in conditions:
device offline, low battery, streaming anomaly, data quality below a threshold.

- threshold rules walk each matching series' readings in time order since the last
  run: a value outside [min, max] starts the condition, the alert opens once it has
  held for `for_seconds` of reading time, and the first value back inside resolves it;
- offline, low battery and low quality follow the health and quality jobs' latest
  results (a device's latest day for quality);
- each streaming anomaly episode opens one alert, resolved when the episode ends; its
  severity rises with the episode's score (`anomaly_severity_scores`).

Only the recent past raises alerts (`alert_lookback_seconds`, a day by default), so
importing old history does not flood the receivers. A partial unique index keeps one
active alert per rule and subject (a series, or a device for device conditions). Every
transition is recorded in `alert_events` and queued for the webhooks (outbox.py, sinks/webhooks.py).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update

from iotpipe.analytics.outbox import enqueue
from iotpipe.config import SEVERITIES, Settings, Severity
from iotpipe.errors import Conflict, IotpipeError, NotFound
from iotpipe.model import MICROS_PER_SECOND, Micros, format_micros, now_micros
from iotpipe.store import Store
from iotpipe.store.schema import (
    alert_events,
    alert_rules,
    alert_state,
    alerts,
    anomalies,
    data_quality,
    device_health,
    devices,
    series,
)

log = logging.getLogger(__name__)

STATUSES = ("open", "acknowledged", "resolved")
BUILTIN = {
    "offline": "device offline",
    "battery": "low battery",
    "anomaly": "streaming anomaly",
    "quality": "low data quality",
}


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    name: str
    kind: str
    device: str
    device_type: str | None
    metric: str | None
    min: float | None
    max: float | None
    for_seconds: float
    severity: str

    def selects(self, device_id: str, device_type: str | None) -> bool:
        return fnmatch.fnmatchcase(device_id, self.device) and (
            self.device_type is None or self.device_type == device_type
        )

    def violated_by(self, value: float) -> bool:
        return (self.min is not None and value < self.min) or (self.max is not None and value > self.max)


# A device condition that holds now: (subject, value, since when, message).
Condition = tuple["Subject", float | None, Micros, str]


@dataclass(frozen=True, slots=True)
class Subject:
    """What one alert is about: a series, or a whole device."""

    key: str
    device_pk: int
    device_id: str
    series_id: int | None = None
    metric: str | None = None


# -- rules ---------------------------------------------------------------------------------
def sync_rules(store: Store, settings: Settings, now: Micros) -> None:
    """Make alert_rules match the config file and the built-in settings; API rules stay."""
    config = settings.analytics
    wanted: dict[str, dict[str, Any]] = {}
    for rule in config.alert_rules:
        wanted[rule.name] = {
            "kind": "threshold",
            "origin": "config",
            "device": rule.device,
            "device_type": rule.device_type,
            "metric": rule.metric,
            "min": rule.min,
            "max": rule.max,
            "for_seconds": rule.for_seconds,
            "severity": rule.severity,
        }
    severities = {
        "offline": config.offline_severity,
        "battery": config.battery_severity,
        "anomaly": config.anomaly_severity,
        "quality": config.quality_severity,
    }
    for kind, name in BUILTIN.items():
        wanted[name] = {
            "kind": kind,
            "origin": "builtin",
            "device": "*",
            "device_type": None,
            "metric": None,
            "min": None,
            "max": None,
            "for_seconds": 0.0,
            "severity": severities[kind],
        }
    with store.write_transaction() as conn:
        existing = {r.name: r for r in conn.execute(select(alert_rules))}
        for name, values in wanted.items():
            row = existing.get(name)
            if row is None:
                conn.execute(
                    insert(alert_rules).values(
                        name=name, enabled=True, created_at=now, updated_at=now, **values
                    )
                )
            elif any(getattr(row, k) != v for k, v in values.items()) or not row.enabled:
                conn.execute(
                    update(alert_rules)
                    .where(alert_rules.c.id == row.id)
                    .values(enabled=True, updated_at=now, **values)
                )
        for name, row in existing.items():
            if row.origin in ("config", "builtin") and name not in wanted and row.enabled:
                # Removed from the file: kept (its alerts' history points at it), disabled.
                conn.execute(
                    update(alert_rules)
                    .where(alert_rules.c.id == row.id)
                    .values(enabled=False, updated_at=now)
                )


def _enabled_rules(conn: Connection) -> list[Rule]:
    rows = conn.execute(select(alert_rules).where(alert_rules.c.enabled.is_(True)).order_by(alert_rules.c.id))
    return [
        Rule(r.id, r.name, r.kind, r.device, r.device_type, r.metric, r.min, r.max, r.for_seconds, r.severity)
        for r in rows
    ]


# -- the job -------------------------------------------------------------------------------
def alerts_job(store: Store, settings: Settings) -> dict[str, Any]:
    """Evaluate the rules; the webhooks deliver what this queued (sinks/webhooks.py)."""
    return evaluate(store, settings, now_micros())


def evaluate(store: Store, settings: Settings, now: Micros) -> dict[str, Any]:
    """Evaluate every enabled rule once; return how many alerts opened and resolved."""
    sync_rules(store, settings, now)
    engine = _Engine(store, settings, now)
    with store.read_connection() as conn:
        rules = _enabled_rules(conn)
        engine.load_fleet(conn)
    for rule in rules:
        evaluator = EVALUATORS.get(rule.kind)
        if evaluator is None:  # written by a newer iotpipe, or by hand
            log.error("alert rule %r has kind %r, which this version cannot evaluate", rule.name, rule.kind)
            continue
        evaluator(engine, rule)
    return {"rules": len(rules), "opened": engine.opened, "resolved": engine.resolved}


class _Engine:
    def __init__(self, store: Store, settings: Settings, now: Micros) -> None:
        self.store = store
        self.settings = settings
        self.now = now
        self.since = now - int(settings.analytics.alert_lookback_seconds * MICROS_PER_SECOND)
        self.opened = 0
        self.resolved = 0
        self.devices: dict[int, tuple[str, str | None]] = {}
        self.series: dict[int, tuple[int, str]] = {}

    def load_fleet(self, conn: Connection) -> None:
        self.devices = {
            pk: (d, t) for pk, d, t in conn.execute(select(devices.c.id, devices.c.device_id, devices.c.type))
        }
        self.series = {
            sid: (pk, m)
            for sid, pk, m in conn.execute(select(series.c.id, series.c.device_pk, series.c.metric))
        }

    def device_subjects(self, rule: Rule) -> dict[str, Subject]:
        return {
            f"device:{pk}": Subject(f"device:{pk}", pk, device_id)
            for pk, (device_id, device_type) in self.devices.items()
            if rule.selects(device_id, device_type)
        }

    def series_subject(self, rule: Rule, series_id: int) -> Subject | None:
        known = self.series.get(series_id)
        if known is None:
            return None
        device_pk, metric = known
        device_id, device_type = self.devices[device_pk]
        if not rule.selects(device_id, device_type) or (rule.metric is not None and rule.metric != metric):
            return None
        return Subject(f"series:{series_id}", device_pk, device_id, series_id, metric)

    # -- threshold rules: walk the readings ----------------------------------------------
    def evaluate_threshold(self, rule: Rule) -> None:
        for series_id in sorted(self.series):
            subject = self.series_subject(rule, series_id)
            if subject is not None:
                self._walk(rule, subject)

    def _walk(self, rule: Rule, subject: Subject) -> None:
        with self.store.write_transaction() as conn:
            state = conn.execute(
                select(alert_state.c.cursor_time, alert_state.c.violating_since).where(
                    alert_state.c.rule_id == rule.id, alert_state.c.subject == subject.key
                )
            ).first()
            cursor, violating_since = (state[0], state[1]) if state is not None else (self.since - 1, None)
            assert subject.series_id is not None  # threshold subjects are series
            after_times, after_values = self.store.read_series(
                subject.series_id, max(cursor, self.since - 1) + 1, None, conn
            )
            rows = list(zip(after_times.tolist(), after_values.tolist(), strict=True))
            if not rows and state is not None:
                return
            active = self._active(conn, rule, subject)
            hold = int(rule.for_seconds * MICROS_PER_SECOND)
            for t, value in rows:
                if rule.violated_by(value):
                    violating_since = violating_since if violating_since is not None else t
                    if active is None and t - violating_since >= hold:
                        active = self._open(
                            conn,
                            rule,
                            subject,
                            value,
                            violating_since,
                            _threshold_message(rule, subject, value),
                        )
                else:
                    violating_since = None
                    if active is not None:
                        self._resolve(conn, active, value)
                        active = None
            cursor = rows[-1][0] if rows else cursor
            values = {"cursor_time": cursor, "violating_since": violating_since}
            statement = self.store.dialect_insert(alert_state).values(
                rule_id=rule.id, subject=subject.key, **values
            )
            conn.execute(statement.on_conflict_do_update(index_elements=["rule_id", "subject"], set_=values))

    # -- device conditions from the health and quality jobs ------------------------------
    def evaluate_offline(self, rule: Rule) -> None:
        with self.store.read_connection() as conn:
            health = {r.device_pk: r for r in conn.execute(select(device_health))}
        conditions: dict[str, Condition] = {}
        for key, subject in self.device_subjects(rule).items():
            row = health.get(subject.device_pk)
            if row is not None and row.status == "offline":
                seen = format_micros(row.last_seen) if row.last_seen is not None else "never"
                message = (
                    f"{subject.device_id} is offline: silent since {seen} "
                    f"(longer than {row.offline_after_seconds:g} s)"
                )
                conditions[key] = (subject, None, row.last_seen or self.now, message)
        self._reconcile(rule, conditions)

    def evaluate_battery(self, rule: Rule) -> None:
        with self.store.read_connection() as conn:
            health = {r.device_pk: r for r in conn.execute(select(device_health))}
        threshold = self.settings.analytics.battery_threshold
        conditions: dict[str, Condition] = {}
        for key, subject in self.device_subjects(rule).items():
            row = health.get(subject.device_pk)
            if row is not None and row.battery_low:
                message = f"{subject.device_id} battery at {row.battery:g} % (below {threshold:g} %)"
                conditions[key] = (subject, row.battery, self.now, message)
        self._reconcile(rule, conditions)

    def evaluate_quality(self, rule: Rule) -> None:
        threshold = self.settings.analytics.quality_threshold
        with self.store.read_connection() as conn:
            latest: dict[int, Any] = {}
            for day_row in conn.execute(select(data_quality).order_by(data_quality.c.day)):
                latest[day_row.device_pk] = day_row
        conditions: dict[str, Condition] = {}
        for key, subject in self.device_subjects(rule).items():
            row = latest.get(subject.device_pk)
            if row is not None and row.score < threshold:
                message = (
                    f"{subject.device_id} data quality {row.score:g} on {row.day} (below {threshold:g}): "
                    f"{row.missing_pct:.1f} % missing, {row.out_of_range_pct:.1f} % out of range, "
                    f"{row.anomalous_pct:.1f} % anomalous"
                )
                conditions[key] = (subject, row.score, self.now, message)
        self._reconcile(rule, conditions)

    def _reconcile(
        self, rule: Rule, conditions: dict[str, tuple[Subject, float | None, Micros, str]]
    ) -> None:
        """Open an alert for each condition that holds without one; resolve the others."""
        with self.store.write_transaction() as conn:
            active = {
                r.subject: r.id
                for r in conn.execute(
                    select(alerts.c.id, alerts.c.subject).where(
                        alerts.c.rule_id == rule.id, alerts.c.status != "resolved"
                    )
                )
            }
            for key, (subject, value, started_at, message) in conditions.items():
                if key not in active:
                    self._open(conn, rule, subject, value, started_at, message)
            for key, alert_id in active.items():
                if key not in conditions:
                    self._resolve(conn, alert_id, None)

    # -- streaming anomalies: one alert per episode --------------------------------------
    def evaluate_anomaly(self, rule: Rule) -> None:
        with self.store.write_transaction() as conn:
            alerted = select(alerts.c.anomaly_id).where(alerts.c.anomaly_id.is_not(None))
            episodes = conn.execute(
                select(
                    anomalies.c.id,
                    anomalies.c.series_id,
                    anomalies.c.time,
                    anomalies.c.end_time,
                    anomalies.c.value,
                    anomalies.c.score,
                )
                .where(
                    anomalies.c.method == "streaming",
                    anomalies.c.time >= self.since,
                    anomalies.c.id.not_in(alerted),
                )
                .order_by(anomalies.c.time, anomalies.c.id)
            ).all()
            for episode in episodes:
                subject = self.series_subject(rule, episode.series_id)
                if subject is None:
                    continue
                previous = self._active(conn, rule, subject)
                if previous is not None:  # a new episode means the previous one is over
                    self._resolve(conn, previous, None)
                message = (
                    f"{subject.device_id} {subject.metric} = {episode.value:g} is anomalous "
                    f"(score {episode.score:.1f}) since {format_micros(episode.time)}"
                )
                severity = episode_severity(
                    rule.severity, episode.score, self.settings.analytics.anomaly_severity_scores
                )
                alert_id = self._open(
                    conn, rule, subject, episode.value, episode.time, message, episode.id, severity
                )
                if episode.end_time is not None:
                    self._resolve(conn, alert_id, None)
            still_open = conn.execute(
                select(alerts.c.id, anomalies.c.end_time)
                .select_from(alerts.outerjoin(anomalies, anomalies.c.id == alerts.c.anomaly_id))
                .where(alerts.c.rule_id == rule.id, alerts.c.status != "resolved")
            ).all()
            for alert_id, end_time in still_open:
                if end_time is not None:
                    self._resolve(conn, alert_id, None)

    # -- lifecycle -----------------------------------------------------------------------
    def _active(self, conn: Connection, rule: Rule, subject: Subject) -> int | None:
        return conn.scalar(
            select(alerts.c.id).where(
                and_(
                    alerts.c.rule_id == rule.id,
                    alerts.c.subject == subject.key,
                    alerts.c.status != "resolved",
                )
            )
        )

    def _open(
        self,
        conn: Connection,
        rule: Rule,
        subject: Subject,
        value: float | None,
        started_at: Micros,
        message: str,
        anomaly_id: int | None = None,
        severity: str | None = None,
    ) -> int:
        alert_id = conn.execute(
            insert(alerts).values(
                rule_id=rule.id,
                subject=subject.key,
                device_pk=subject.device_pk,
                series_id=subject.series_id,
                anomaly_id=anomaly_id,
                status="open",
                severity=severity or rule.severity,
                message=message,
                value=value,
                started_at=started_at,
                opened_at=self.now,
            )
        ).inserted_primary_key
        assert alert_id is not None
        record_event(conn, self.settings, int(alert_id[0]), "opened", self.now, value)
        self.opened += 1
        return int(alert_id[0])

    def _resolve(self, conn: Connection, alert_id: int, value: float | None) -> None:
        conn.execute(
            update(alerts).where(alerts.c.id == alert_id).values(status="resolved", resolved_at=self.now)
        )
        record_event(conn, self.settings, alert_id, "resolved", self.now, value)
        self.resolved += 1


# Every kind of alert rule and how it is evaluated: `threshold` rules come from the
# config file and the API, the others are built in (BUILTIN). A kind not here is refused.
EVALUATORS: dict[str, Callable[[_Engine, Rule], None]] = {
    "threshold": _Engine.evaluate_threshold,
    "offline": _Engine.evaluate_offline,
    "battery": _Engine.evaluate_battery,
    "quality": _Engine.evaluate_quality,
    "anomaly": _Engine.evaluate_anomaly,
}


def _threshold_message(rule: Rule, subject: Subject, value: float) -> str:
    side = (
        f"below min {rule.min:g}" if rule.min is not None and value < rule.min else f"above max {rule.max:g}"
    )
    held = f" for {rule.for_seconds:g} s" if rule.for_seconds else ""
    return f"{subject.device_id} {subject.metric} = {value:g}, {side}{held} ({rule.name})"


def record_event(
    conn: Connection, settings: Settings, alert_id: int, event: str, at: Micros, value: float | None
) -> None:
    """Keep the transition in the history and queue it for every webhook."""
    inserted = conn.execute(
        insert(alert_events).values(alert_id=alert_id, event=event, at=at, value=value)
    ).inserted_primary_key
    assert inserted is not None
    event_id = inserted[0]
    if settings.analytics.webhooks:
        (alert,) = _alert_views(conn, alerts.c.id == alert_id)
        payload = {"event": event, "at": format_micros(at), "alert": alert}
        enqueue(conn, settings, int(event_id), payload, at)


# -- acknowledging and reading -------------------------------------------------------------
def acknowledge(store: Store, settings: Settings, alert_id: int, now: Micros | None = None) -> dict[str, Any]:
    """open → acknowledged; an acknowledged alert still resolves when its condition clears."""
    now = now or now_micros()
    with store.write_transaction() as conn:
        status = conn.scalar(select(alerts.c.status).where(alerts.c.id == alert_id))
        if status is None:
            raise NotFound(f"no alert {alert_id}; `iotpipe alerts` lists them")
        if status == "resolved":
            raise IotpipeError(f"alert {alert_id} is already resolved; nothing to acknowledge")
        if status == "open":
            conn.execute(
                update(alerts)
                .where(alerts.c.id == alert_id)
                .values(status="acknowledged", acknowledged_at=now)
            )
            record_event(conn, settings, alert_id, "acknowledged", now, None)
        (view,) = _alert_views(conn, alerts.c.id == alert_id)
    return view


def episode_severity(base: str, score: float, levels: Mapping[Severity, float]) -> str:
    """An anomaly alert's severity: the rule's, or the most severe level the episode's score
    (its peak by the time the alert opens) reached, whichever is more severe."""
    reached = [severity for severity, level in levels.items() if score >= level]
    return min([base, *reached], key=SEVERITIES.index)


def alert_rows(
    store: Store,
    status: str | None = None,
    limit: int | None = None,
    before_id: int | None = None,
    severity: str | None = None,
    device_id: str | None = None,
) -> list[dict[str, Any]]:
    """Alerts, newest first, as the CLI and API show them (`before_id`: a page's end)."""
    if status is not None and status not in STATUSES:
        raise IotpipeError(f"unknown alert status {status!r}; choose one of: {', '.join(STATUSES)}")
    if severity is not None and severity not in SEVERITIES:
        raise IotpipeError(f"unknown severity {severity!r}; choose one of: {', '.join(SEVERITIES)}")
    conditions = []
    if status is not None:
        conditions.append(alerts.c.status == status)
    if before_id is not None:
        conditions.append(alerts.c.id < before_id)
    if severity is not None:
        conditions.append(alerts.c.severity == severity)
    if device_id is not None:
        conditions.append(devices.c.device_id == device_id)
    with store.read_connection() as conn:
        return _alert_views(conn, and_(*conditions) if conditions else None, limit)


def _alert_views(conn: Connection, where: Any, limit: int | None = None) -> list[dict[str, Any]]:
    query = (
        select(
            alerts,
            alert_rules.c.name.label("rule"),
            alert_rules.c.kind,
            devices.c.device_id,
            series.c.metric,
        )
        .join(alert_rules, alert_rules.c.id == alerts.c.rule_id)
        .join(devices, devices.c.id == alerts.c.device_pk)
        .outerjoin(series, series.c.id == alerts.c.series_id)
        .order_by(alerts.c.id.desc())
    )
    if where is not None:
        query = query.where(where)
    if limit is not None:
        query = query.limit(limit)
    return [
        {
            "id": r.id,
            "rule": r.rule,
            "kind": r.kind,
            "severity": r.severity,
            "status": r.status,
            "device_id": r.device_id,
            "metric": r.metric,
            "message": r.message,
            "value": r.value,
            "started_at": format_micros(r.started_at),
            "opened_at": format_micros(r.opened_at),
            "acknowledged_at": format_micros(r.acknowledged_at) if r.acknowledged_at is not None else None,
            "resolved_at": format_micros(r.resolved_at) if r.resolved_at is not None else None,
        }
        for r in conn.execute(query)
    ]


def alert_history(store: Store, alert_id: int) -> list[dict[str, Any]]:
    with store.read_connection() as conn:
        rows = conn.execute(
            select(alert_events).where(alert_events.c.alert_id == alert_id).order_by(alert_events.c.id)
        )
        return [{"event": r.event, "at": format_micros(r.at), "value": r.value} for r in rows]


# -- alert rules through the API -----------------------------------------------------------
RULE_FIELDS = ("name", "device", "device_type", "metric", "min", "max", "for_seconds", "severity")


def rule_views(store: Store) -> list[dict[str, Any]]:
    """Every rule (config, API and built-in), by id."""
    with store.read_connection() as conn:
        return [_rule_view(r) for r in conn.execute(select(alert_rules).order_by(alert_rules.c.id))]


def rule_view(store: Store, rule_id: int) -> dict[str, Any]:
    with store.read_connection() as conn:
        row = conn.execute(select(alert_rules).where(alert_rules.c.id == rule_id)).first()
    if row is None:
        raise NotFound(f"no alert rule {rule_id}; GET /api/v1/alert-rules lists them")
    return _rule_view(row)


def create_rule(store: Store, values: dict[str, Any], now: Micros) -> dict[str, Any]:
    """A threshold rule (already validated like a config rule), enabled, origin 'api'."""
    with store.write_transaction() as conn:
        if conn.scalar(select(alert_rules.c.id).where(alert_rules.c.name == values["name"])) is not None:
            raise Conflict(f"an alert rule named {values['name']!r} exists; choose another name")
        inserted = conn.execute(
            insert(alert_rules).values(
                kind="threshold", origin="api", enabled=True, created_at=now, updated_at=now, **values
            )
        ).inserted_primary_key
    assert inserted is not None
    return rule_view(store, int(inserted[0]))


def update_rule(
    store: Store, rule_id: int, values: dict[str, Any], enabled: bool | None, now: Micros
) -> dict[str, Any]:
    """Replace an API rule's definition (and/or switch it on or off)."""
    current = rule_view(store, rule_id)
    if current["origin"] != "api":
        raise Conflict(
            f"alert rule {rule_id} comes from the {current['origin']} settings; change it there "
            "(only rules created through the API are edited here)"
        )
    changes: dict[str, Any] = dict(values)
    if enabled is not None:
        changes["enabled"] = enabled
    with store.write_transaction() as conn:
        if "name" in values:
            clash = conn.scalar(
                select(alert_rules.c.id).where(
                    alert_rules.c.name == values["name"], alert_rules.c.id != rule_id
                )
            )
            if clash is not None:
                raise Conflict(f"an alert rule named {values['name']!r} exists; choose another name")
        conn.execute(update(alert_rules).where(alert_rules.c.id == rule_id).values(updated_at=now, **changes))
        # A changed definition is judged afresh from the lookback window.
        conn.execute(delete(alert_state).where(alert_state.c.rule_id == rule_id))
    return rule_view(store, rule_id)


def delete_rule(store: Store, rule_id: int, now: Micros) -> dict[str, Any]:
    """Remove an API rule; one that raised alerts is disabled instead (they keep pointing at it)."""
    current = rule_view(store, rule_id)
    if current["origin"] != "api":
        raise Conflict(f"alert rule {rule_id} comes from the {current['origin']} settings; remove it there")
    with store.write_transaction() as conn:
        used = conn.scalar(select(alerts.c.id).where(alerts.c.rule_id == rule_id).limit(1))
        conn.execute(delete(alert_state).where(alert_state.c.rule_id == rule_id))
        if used is None:
            conn.execute(delete(alert_rules).where(alert_rules.c.id == rule_id))
            return {"id": rule_id, "deleted": True, "disabled": False}
        conn.execute(
            update(alert_rules).where(alert_rules.c.id == rule_id).values(enabled=False, updated_at=now)
        )
    return {"id": rule_id, "deleted": False, "disabled": True}


def _rule_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "origin": row.origin,
        "device": row.device,
        "device_type": row.device_type,
        "metric": row.metric,
        "min": row.min,
        "max": row.max,
        "for_seconds": row.for_seconds,
        "severity": row.severity,
        "enabled": bool(row.enabled),
        "created_at": format_micros(row.created_at),
        "updated_at": format_micros(row.updated_at),
    }


def alert_events_after(store: Store, after_id: int, limit: int) -> list[dict[str, Any]]:
    """Alert events (opened, acknowledged, resolved) recorded after the one with id
    `after_id`, oldest first, each with its alert as alert_rows shows it (the live feed)."""
    with store.read_connection() as conn:
        events = conn.execute(
            select(alert_events.c.id, alert_events.c.alert_id, alert_events.c.event, alert_events.c.at)
            .where(alert_events.c.id > after_id)
            .order_by(alert_events.c.id)
            .limit(limit)
        ).all()
        if not events:
            return []
        views = {v["id"]: v for v in _alert_views(conn, alerts.c.id.in_({e.alert_id for e in events}))}
    return [
        {"id": e.id, "event": e.event, "at": format_micros(e.at), "alert": views[e.alert_id]}
        for e in events
        if e.alert_id in views
    ]


def last_alert_event_id(store: Store) -> int:
    with store.read_connection() as conn:
        return int(conn.scalar(select(func.coalesce(func.max(alert_events.c.id), 0))) or 0)
