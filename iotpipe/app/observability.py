"""Health checks and the gauges /metrics reads at scrape time.

Live: the process answers. Ready: the database answers, its schema has every migration
of this version, and a configured MQTT broker is connected. The gauges come from the
store (devices by status, open alerts by severity, the rollup backlog) and from what this
process runs (the pipeline's queue, the MQTT source's connection).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.config import SEVERITIES
from iotpipe.model import MICROS_PER_SECOND, now_micros
from iotpipe.sinks.metrics import Gauge, gauge, labelled

if TYPE_CHECKING:
    from iotpipe.app import App


def readiness(app: App) -> dict[str, Any]:
    """{"ready": bool, "checks": {name: {"ok": bool, "detail": str}}}."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        pending = app.store.pending_migrations()
        checks["database"] = {"ok": True, "detail": app.store.describe()}
        checks["migrations"] = {
            "ok": not pending,
            "detail": "current" if not pending else f"pending: {', '.join(pending)}; run `iotpipe init`",
        }
    except Exception as exc:  # the database is down: that is the answer, not an error
        checks["database"] = {"ok": False, "detail": f"unreachable: {type(exc).__name__}"}
    mqtt = _mqtt_source(app)
    if app.settings.mqtt_url:
        connected = mqtt is not None and _connected(mqtt)
        checks["mqtt"] = {"ok": connected, "detail": "connected" if connected else "not connected"}
    return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}


def _mqtt_source(app: App) -> Any:
    for source in app.running_sources:
        if getattr(source, "name", "") == "mqtt":
            return source
    return None


def _connected(source: Any) -> bool:
    stats = source.stats
    return bool(stats.connects > stats.disconnects)


def gauges(app: App) -> list[Gauge]:
    """Current values for /metrics; a database outage leaves the store's gauges out."""
    from iotpipe.analytics.fleet import open_alerts_by_severity, rollup_backlog, status_counts

    found: list[Gauge] = []
    pipeline = app.running_pipeline
    if pipeline is not None:
        found.append(
            gauge(
                "iotpipe_queue_depth", "Messages waiting for the pipeline's writer.", pipeline.queue_depth()
            )
        )
    mqtt = _mqtt_source(app)
    if mqtt is not None:
        found.append(
            gauge("iotpipe_mqtt_connected", "1 while connected to the MQTT broker.", float(_connected(mqtt)))
        )
        found.append(
            gauge(
                "iotpipe_mqtt_reconnects",
                "Connections to the MQTT broker after the first, since start.",
                max(0, mqtt.stats.connects - 1),
            )
        )
    try:
        by_status, _ = status_counts(app.store, app.settings.analytics, now_micros())
        severities = dict.fromkeys(SEVERITIES, 0)
        severities.update(open_alerts_by_severity(app.store))
        backlog, finished = rollup_backlog(app.store)
    except Exception:
        return found
    lag = 0.0
    if backlog and finished is not None:
        lag = (now_micros() - finished) / MICROS_PER_SECOND
    found += [
        labelled("iotpipe_devices", "Devices by status (online, stale, offline).", "status", by_status),
        labelled("iotpipe_alerts_open", "Alerts not yet resolved, by severity.", "severity", severities),
        gauge("iotpipe_rollup_dirty_buckets", "Series-hours waiting for the rollup job.", backlog),
        gauge("iotpipe_rollup_lag_seconds", "Since the rollup job last finished, while buckets wait.", lag),
    ]
    return found
