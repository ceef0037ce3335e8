"""Analytics commands: jobs, query, trends, report, alerts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from iotpipe.analytics import alerts as alerting
from iotpipe.analytics.common import MICROS_PER_DAY, day_name, find_series
from iotpipe.analytics.jobs import job_names, run_job
from iotpipe.analytics.quality import DayQuality, quality_rows
from iotpipe.analytics.rollups import BUCKETS, bucket_rows
from iotpipe.analytics.trends import daily_trends
from iotpipe.cli import JsonFlag, app, get_app, out, print_json, time_option
from iotpipe.errors import IotpipeError
from iotpipe.model import format_micros, now_micros

alerts_app = typer.Typer(
    help="Alerts from rules and device conditions; list them or acknowledge one.",
    invoke_without_command=True,
)
app.add_typer(alerts_app, name="alerts")

DeviceOption = Annotated[str, typer.Option("--device", help="Device id.", show_default=False)]
MetricOption = Annotated[str, typer.Option("--metric", help="Metric name.", show_default=False)]
StartOption = Annotated[
    str | None, typer.Option("--start", help="From this time (ISO 8601 or epoch), inclusive.")
]
EndOption = Annotated[str | None, typer.Option("--end", help="Up to this time, exclusive.")]


@app.command()
def jobs(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(help="rollups, anomalies, quality, health, alerts, or all.", show_default=True)
    ] = "all",
    json_output: JsonFlag = False,
) -> None:
    """Run analytics jobs once, now (`iotpipe run` runs them periodically)."""
    application = get_app(ctx)
    names = job_names() if name == "all" else [name]
    results = [run_job(n, application.store, application.settings) for n in names]
    if json_output:
        print_json(results)
        return
    for result in results:
        details = ", ".join(f"{k}={v}" for k, v in result.items() if k not in ("job", "rollups_seen_until"))
        out.print(f"{result['job']}: {details}")


@app.command()
def query(
    ctx: typer.Context,
    device: DeviceOption,
    metric: MetricOption,
    bucket: Annotated[str, typer.Option("--bucket", help="raw, 1h, 1d or 1w.")] = "1h",
    start: StartOption = None,
    end: EndOption = None,
    json_output: JsonFlag = False,
) -> None:
    """One series' readings (raw) or rollups (1h, 1d, 1w: count, avg, min, max, stddev).

    Rollups are as current as the last `rollups` job (`iotpipe jobs rollups`).
    """
    if bucket != "raw" and bucket not in BUCKETS:
        raise IotpipeError(f"unknown bucket {bucket!r}; choose one of: raw, {', '.join(BUCKETS)}")
    store = get_app(ctx).store
    first, last = time_option(start, "--start"), time_option(end, "--end")
    with store.engine.connect() as conn:
        ref = find_series(conn, device, metric)
    if bucket == "raw":
        raw = store.raw_readings(device, metric, first, last)
        if json_output:
            print_json([{"time": format_micros(t), "value": v} for t, v in raw])
        else:
            table = Table("time", "value", title=f"{device} {metric}")
            for t, v in raw:
                table.add_row(format_micros(t), f"{v:g}")
            out.print(table)
        return
    rows: list[dict[str, Any]] = [
        {
            "bucket_start": format_micros(b.bucket_start),
            "count": b.count,
            "avg": b.avg,
            "min": b.min,
            "max": b.max,
            "stddev": b.stddev,
        }
        for b in bucket_rows(store, ref, bucket, first, last)
    ]
    if json_output:
        print_json(rows)
        return
    table = Table(
        "bucket_start", "count", "avg", "min", "max", "stddev", title=f"{device} {metric} per {bucket}"
    )
    for r in rows:
        stddev = "" if r["stddev"] is None else f"{r['stddev']:.4g}"
        table.add_row(
            r["bucket_start"], str(r["count"]), f"{r['avg']:.4g}", f"{r['min']:g}", f"{r['max']:g}", stddev
        )
    out.print(table)


@app.command()
def trends(
    ctx: typer.Context,
    device: DeviceOption,
    metric: MetricOption,
    start: StartOption = None,
    end: EndOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Daily mean, day-over-day change (absolute and %) and 7-day moving average."""
    store = get_app(ctx).store
    with store.engine.connect() as conn:
        ref = find_series(conn, device, metric)
    days = daily_trends(store, ref, time_option(start, "--start"), time_option(end, "--end"))
    if json_output:
        print_json(days)
        return
    table = Table("day", "count", "mean", "change", "change %", "7-day avg", title=f"{device} {metric}")
    for d in days:
        change = "" if d["change"] is None else f"{d['change']:+.4g}"
        pct = "" if d["change_pct"] is None else f"{d['change_pct']:+.1f}"
        table.add_row(d["day"], str(d["count"]), f"{d['mean']:.4g}", change, pct, f"{d['avg_7d']:.4g}")
    out.print(table)


_QUALITY_COUNTS = ("expected", "received", "missing", "invalid", "out_of_range", "anomalous")


@app.command()
def report(
    ctx: typer.Context,
    days: Annotated[int, typer.Option("--days", min=1, help="The last N UTC days, today included.")] = 7,
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """The data-quality report: per device, readings received vs expected, invalid,
    out-of-range and anomalous ones, and the score (as computed by the `quality` job)."""
    today = now_micros()
    first = day_name(today - (days - 1) * MICROS_PER_DAY)
    rows = quality_rows(get_app(ctx).store, first, day_name(today), device)
    report_rows = _per_device(rows)
    if json_output:
        print_json(report_rows)
        return
    if not report_rows:
        out.print(f"No quality figures since {first}; run `iotpipe jobs` (rollups, then quality) first.")
        return
    table = Table(
        "device",
        "readings",
        "expected",
        "missing %",
        "invalid",
        "out of range %",
        "anomalous %",
        "score",
        title=f"Data quality {first} – {day_name(today)} (UTC days)",
    )
    for r in report_rows:
        table.add_row(
            r["device_id"],
            f"{r['readings']:,}",
            f"{r['expected']:,}",
            f"{r['missing_pct']:.1f}",
            f"{r['invalid']:,}",
            f"{r['out_of_range_pct']:.1f}",
            f"{r['anomalous_pct']:.1f}",
            f"{r['score']:.1f}",
        )
    out.print(table)


def _per_device(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Totals over the days per device (the score from the same formula), days listed."""
    devices: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        devices.setdefault(row["device_id"], []).append(row)
    report_rows = []
    for device_id, day_rows in devices.items():
        total = DayQuality(
            **{
                k: sum(r[k] for r in day_rows)
                for k in ("expected", "received", "invalid", "out_of_range", "anomalous")
            }
        ).finish()
        days = [_entry(r, r["day"]) for r in day_rows]
        report_rows.append({"device_id": device_id, **_entry(asdict(total)), "days": days})
    return report_rows


def _entry(values: dict[str, Any], day: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {} if day is None else {"day": day}
    entry["readings"] = values["received"]
    for key in (*_QUALITY_COUNTS, "missing_pct", "out_of_range_pct", "anomalous_pct", "score"):
        if key != "received":
            entry[key] = values[key]
    return entry


@alerts_app.callback()
def alerts_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option("--status", help="open, acknowledged or resolved.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """List alerts, newest first (`iotpipe alerts ack ID` acknowledges one)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = alerting.alert_rows(get_app(ctx).store, status)
    if json_output:
        print_json(rows)
        return
    if not rows:
        out.print("No alerts." if status is None else f"No {status} alerts.")
        return
    table = Table("id", "status", "severity", "device", "rule", "message", "opened")
    for a in rows:
        table.add_row(
            str(a["id"]), a["status"], a["severity"], a["device_id"], a["rule"], a["message"], a["opened_at"]
        )
    out.print(table)


@alerts_app.command("ack")
def alerts_ack(
    ctx: typer.Context,
    alert_id: Annotated[int, typer.Argument(help="The alert's id (see `iotpipe alerts`).")],
    json_output: JsonFlag = False,
) -> None:
    """Acknowledge an open alert; it still resolves by itself when its condition clears."""
    application = get_app(ctx)
    alert = alerting.acknowledge(application.store, application.settings, alert_id)
    if json_output:
        print_json(alert)
    else:
        out.print(f"Alert {alert_id} acknowledged: {alert['message']}")
