"""Views of what is stored: query, trends, anomalies, alerts, report; and running the jobs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from iotpipe.cli import JsonFlag, app, consoles, get_app, print_json, say, untrusted

alerts_app = typer.Typer(
    help="Alerts from rules and device conditions; list them or acknowledge one.",
    invoke_without_command=True,
    rich_markup_mode=None,
)

DeviceOption = Annotated[str, typer.Option("--device", help="Device id.", show_default=False)]
MetricOption = Annotated[str, typer.Option("--metric", help="Metric name.", show_default=False)]
StartOption = Annotated[
    str | None, typer.Option("--start", help="From this time (ISO 8601 or epoch), inclusive.")
]
EndOption = Annotated[str | None, typer.Option("--end", help="Up to this time, exclusive.")]


def _times(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    from iotpipe.app import parse_range

    return parse_range(start, end)


def _table(*columns: str, title: str | None = None) -> Any:
    from rich.table import Table

    return Table(*columns, title=title)


def _print(table: Any) -> None:
    consoles.out.print(table, markup=False)


@app.command(rich_help_panel="Look at the data")
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
    first, last = _times(start, end)
    rows = get_app(ctx, existing=True).series_history(device, metric, bucket, first, last)
    if json_output:
        print_json(rows)
        return
    name = f"{untrusted(device)} {untrusted(metric)}"
    if bucket == "raw":
        table = _table("time", "value", title=name)
        for r in rows:
            table.add_row(r["time"], f"{r['value']:g}")
        _print(table)
        return
    table = _table("bucket_start", "count", "avg", "min", "max", "stddev", title=f"{name} per {bucket}")
    for r in rows:
        stddev = "" if r["stddev"] is None else f"{r['stddev']:.4g}"
        table.add_row(
            r["bucket_start"], str(r["count"]), f"{r['avg']:.4g}", f"{r['min']:g}", f"{r['max']:g}", stddev
        )
    _print(table)


@app.command(rich_help_panel="Look at the data")
def trends(
    ctx: typer.Context,
    device: DeviceOption,
    metric: MetricOption,
    start: StartOption = None,
    end: EndOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Daily mean, day-over-day change (absolute and %) and 7-day moving average."""
    first, last = _times(start, end)
    days = get_app(ctx, existing=True).trends(device, metric, first, last)
    if json_output:
        print_json(days)
        return
    table = _table(
        "day",
        "count",
        "mean",
        "change",
        "change %",
        "7-day avg",
        title=f"{untrusted(device)} {untrusted(metric)}",
    )
    for d in days:
        change = "" if d["change"] is None else f"{d['change']:+.4g}"
        pct = "" if d["change_pct"] is None else f"{d['change_pct']:+.1f}"
        table.add_row(d["day"], str(d["count"]), f"{d['mean']:.4g}", change, pct, f"{d['avg_7d']:.4g}")
    _print(table)


@app.command("anomalies", rich_help_panel="Look at the data")
def anomalies(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="Only this metric.")] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="Only zscore (batch rule) or streaming (episodes).")
    ] = None,
    start: StartOption = None,
    end: EndOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show the newest this many.")] = 1000,
    detect: Annotated[
        bool,
        typer.Option(
            "--detect",
            help="First apply the z-score rule to the readings in --start..--end "
            "(default: the last anomalies.lookback_seconds), then list.",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Anomalies found in the readings, oldest first.

    zscore: each reading with |x - mean| > k * stddev over the trailing window (found by the scheduled `anomalies` job, or by --detect). streaming: one per abnormal episode, found as readings arrive; its time is the episode's first reading.
    """
    application = get_app(ctx, existing=True)
    since, until = _times(start, end)
    if detect:
        done = application.detect_anomalies(since, until, device, metric)
        say(
            f"z-score rule from {done['start']}: {done['anomalies']:,} anomalies among "
            f"{done['readings']:,} readings of {done['series']:,} series "
            f"({done['added']:,} new, {done['removed']:,} no longer anomalous).",
            to_stderr=True,
        )
    entries = application.anomalies(device, metric, method, since, until, limit)
    if json_output:
        print_json(entries)
        return
    if not entries:
        say("No anomalies found." + ("" if detect else " (`iotpipe jobs anomalies` runs the z-score rule.)"))
        return
    table = _table("time", "device", "metric", "value", "score", "method", "reason", "until")
    for e in entries:
        until_text = "" if e["method"] != "streaming" else (e["end_time"] or "ongoing")
        table.add_row(
            e["time"],
            untrusted(e["device_id"]),
            untrusted(e["metric"]),
            f"{e['value']:g}",
            f"{e['score']:.1f}",
            e["method"],
            e["reason"],
            until_text,
        )
    _print(table)


@app.command(rich_help_panel="Look at the data")
def report(
    ctx: typer.Context,
    days: Annotated[
        int, typer.Option("--days", min=1, max=36_500, help="The last N UTC days, today included.")
    ] = 7,
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """The data-quality report: per device, readings received vs expected, invalid, out-of-range and anomalous ones, and the score (as computed by the `quality` job)."""
    result = get_app(ctx, existing=True).quality_report(days, device)
    rows = result["devices"]
    if json_output:
        print_json(rows)
        return
    if not rows:
        say(
            f"No quality figures since {result['first_day']}; run `iotpipe jobs` (rollups, then quality) first."
        )
        return
    table = _table(
        "device",
        "readings",
        "expected",
        "missing %",
        "invalid",
        "out of range %",
        "anomalous %",
        "score",
        title=f"Data quality {result['first_day']} – {result['last_day']} (UTC days)",
    )
    for r in rows:
        table.add_row(
            untrusted(r["device_id"]),
            f"{r['readings']:,}",
            f"{r['expected']:,}",
            f"{r['missing_pct']:.1f}",
            f"{r['invalid']:,}",
            f"{r['out_of_range_pct']:.1f}",
            f"{r['anomalous_pct']:.1f}",
            f"{r['score']:.1f}",
        )
    _print(table)


@alerts_app.callback()
def alerts_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option("--status", help="open, acknowledged or resolved.")] = None,
    severity: Annotated[
        str | None, typer.Option("--severity", help="critical, major, minor or warning.")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="Only this device's alerts.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """List alerts, newest first (`iotpipe alerts ack ID` acknowledges one)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = get_app(ctx, existing=True).alerts(status, severity, device)
    if json_output:
        print_json(rows)
        return
    if not rows:
        kind = " ".join(word for word in (status, severity, "alerts") if word)
        say(f"No {kind}{f' for {untrusted(device)}' if device else ''}.")
        return
    table = _table("id", "status", "severity", "device", "rule", "message", "opened")
    for a in rows:
        table.add_row(
            str(a["id"]),
            a["status"],
            a["severity"],
            untrusted(a["device_id"]),
            untrusted(a["rule"]),
            untrusted(a["message"]),
            a["opened_at"],
        )
    _print(table)


@alerts_app.command("ack")
def alerts_ack(
    ctx: typer.Context,
    alert_id: Annotated[int, typer.Argument(help="The alert's id (see `iotpipe alerts`).")],
    json_output: JsonFlag = False,
) -> None:
    """Acknowledge an open alert; it still resolves by itself when its condition clears."""
    alert = get_app(ctx, existing=True).acknowledge_alert(alert_id)
    if json_output:
        print_json(alert)
    else:
        say(f"Alert {alert_id} acknowledged: {untrusted(alert['message'])}")


app.add_typer(alerts_app, name="alerts", rich_help_panel="Look at the data")


@app.command(rich_help_panel="Maintain")
def jobs(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(
            help="rollups, anomalies, quality, health, alerts, webhooks, compact, retention, lake, or all.",
            show_default=True,
        ),
    ] = "all",
    json_output: JsonFlag = False,
) -> None:
    """Run the analytics and storage jobs once, now (`iotpipe run` runs them periodically)."""
    results = get_app(ctx, existing=True).run_jobs(name)
    if json_output:
        print_json(results)
        return
    for result in results:
        details = ", ".join(f"{k}={v}" for k, v in result.items() if k not in ("job", "rollups_seen_until"))
        say(f"{result['job']}: {details}")
