"""The anomalies command: what the detectors found, and the z-score rule run over any range."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from iotpipe.analytics.anomalies import METHODS, ZscoreRule, anomaly_rows, detect_zscore
from iotpipe.cli import JsonFlag, app, err, get_app, out, print_json, time_option
from iotpipe.errors import IotpipeError
from iotpipe.model import MICROS_PER_SECOND, Micros, format_micros, now_micros


@app.command("anomalies")
def anomalies_command(
    ctx: typer.Context,
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="Only this metric.")] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="Only zscore (batch rule) or streaming (episodes).")
    ] = None,
    start: Annotated[str | None, typer.Option("--start", help="From this time (ISO 8601 or epoch).")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Up to this time, exclusive.")] = None,
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

    zscore: each reading with |x - mean| > k * stddev over the trailing window (found by
    the scheduled `anomalies` job, or by --detect). streaming: one per abnormal episode,
    found as readings arrive; its time is the episode's first reading.
    """
    if method is not None and method not in METHODS:
        raise IotpipeError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    application = get_app(ctx)
    since, until = time_option(start, "--start"), time_option(end, "--end")
    if detect:
        settings = application.settings.anomalies
        begin = (
            since if since is not None else now_micros() - int(settings.lookback_seconds * MICROS_PER_SECOND)
        )
        done = detect_zscore(
            application.store, ZscoreRule.from_settings(settings), begin, until, device, metric
        )
        err.print(
            f"z-score rule from {format_micros(begin)}: {done['anomalies']:,} anomalies among "
            f"{done['readings']:,} readings of {done['series']:,} series "
            f"({done['added']:,} new, {done['removed']:,} no longer anomalous).",
            highlight=False,
        )
    rows = anomaly_rows(application.store, device, metric, method, since, until, limit)
    entries = [_entry(row) for row in rows]
    if json_output:
        print_json(entries)
        return
    if not entries:
        out.print(
            "No anomalies found." + ("" if detect else " (`iotpipe jobs anomalies` runs the z-score rule.)")
        )
        return
    table = Table("time", "device", "metric", "value", "score", "method", "reason", "until")
    for row, entry in zip(rows, entries, strict=True):
        until_text = "" if row["method"] != "streaming" else _end_text(row["end_time"])
        table.add_row(
            entry["time"],
            entry["device_id"],
            entry["metric"],
            f"{entry['value']:g}",
            f"{entry['score']:.1f}",
            entry["method"],
            entry["reason"],
            until_text,
        )
    out.print(table)


def _entry(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "device_id": row["device_id"],
        "metric": row["metric"],
        "time": format_micros(row["time"]),
        "value": row["value"],
        "score": row["score"],
        "method": row["method"],
        "reason": row["reason"],
    }


def _end_text(end_time: Micros | None) -> str:
    return "ongoing" if end_time is None else format_micros(end_time)
