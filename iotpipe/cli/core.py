"""Core commands: init, run, import, stats and the dead-letter queue."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from iotpipe import __version__, formats
from iotpipe.app import database_location
from iotpipe.cli import JsonFlag, app, dlq_app, err, get_app, out, print_json
from iotpipe.errors import IotpipeError
from iotpipe.model import format_micros
from iotpipe.pipeline import Counters
from iotpipe.sources.files import FileSource


@app.command()
def init(ctx: typer.Context) -> None:
    """Create the database schema, or upgrade it to this version (safe to run again)."""
    application = get_app(ctx)
    applied = application.init()
    where = database_location(application.settings)
    if applied:
        out.print(f"Applied {len(applied)} migration(s) to {where}: {', '.join(applied)}")
    else:
        out.print(f"{where} is up to date.")


@app.command()
def run(
    ctx: typer.Context,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: run until Ctrl-C).")
    ] = None,
    devices: Annotated[
        int | None, typer.Option(help="Simulated devices, when no source is configured.")
    ] = None,
    interval: Annotated[
        float | None, typer.Option(help="Seconds between a simulated device's reports.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for a reproducible simulation.")] = None,
) -> None:
    """Run the main job: ingest from the configured sources into the store.

    With no source configured it starts the built-in simulator, so this works with
    zero setup on the embedded SQLite default.
    """
    application = get_app(ctx)
    sim = application.settings.simulator
    application.settings.simulator = sim.model_copy(
        update={
            k: v for k, v in {"devices": devices, "interval": interval, "seed": seed}.items() if v is not None
        }
    )
    sim = application.settings.simulator
    application.init()
    out.print(f"iotpipe {__version__}: storing readings in {database_location(application.settings)}")
    out.print("Press Ctrl-C to stop.")

    def report(c: Counters) -> None:
        out.print(
            f"stored {c.readings_stored:,} readings from {c.messages_accepted:,} messages "
            f"({c.readings_duplicate:,} duplicates, {c.messages_dead_lettered:,} dead letters)"
        )

    try:
        counters = application.run(duration=duration, report=report, announce=out.print)
    except KeyboardInterrupt:
        out.print("Stopping.")
        return
    report(counters)


@app.command("import")
def import_(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(help="Files: .jsonl .json .senml.json .csv .lp, optionally .gz.", show_default=False),
    ],
    format: Annotated[
        str | None,
        typer.Option("--format", "-f", help="Force a decoder: " + ", ".join(formats.format_names()) + "."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device", help="Device id for records that carry none (e.g. one device's CSV export)."
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Import historical files. Re-importing the same files stores nothing new."""
    application = get_app(ctx)
    if format is not None and format not in formats.format_names():
        raise IotpipeError(f"unknown format {format!r}; choose one of: {', '.join(formats.format_names())}")
    try:
        source = FileSource(
            paths, format=format, device_id=device, limits=application.settings.limits.to_limits()
        )
    except FileNotFoundError as exc:
        raise IotpipeError(f"{exc}; check the path") from None
    with Progress(
        TextColumn("[bold]importing"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=json_output or not err.is_terminal,
    ) as bar:
        task = bar.add_task("import", total=source.bytes_total)
        counters = application.import_files(source, progress=lambda done: bar.update(task, completed=done))
    summary = _summary(counters)
    if json_output:
        print_json(summary)
    else:
        out.print(
            f"Imported {len(paths)} file(s): {summary['stored']:,} readings stored, "
            f"{summary['duplicates']:,} duplicates, {summary['invalid']:,} invalid values, "
            f"{summary['dead_lettered']:,} messages dead-lettered (of {summary['messages']:,})."
        )
        if summary["dead_lettered"]:
            out.print("See them with `iotpipe dlq list`; after a fix, `iotpipe dlq replay`.")


def _summary(counters: Counters) -> dict[str, int]:
    return {
        "messages": counters.messages_received,
        "stored": counters.readings_stored,
        "duplicates": counters.readings_duplicate,
        "invalid": counters.values_invalid,
        "dead_lettered": counters.messages_dead_lettered,
    }


@app.command()
def stats(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """Counts of devices, series, readings and dead letters in the store."""
    counts = get_app(ctx).store.stats()
    if json_output:
        print_json(counts)
        return
    table = Table("what", "count", title=database_location(get_app(ctx).settings))
    for key, value in counts.items():
        table.add_row(key.replace("_", " "), f"{value:,}")
    out.print(table)


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 50,
    json_output: JsonFlag = False,
) -> None:
    """List dead letters, oldest first, with the reason each was rejected."""
    rows = get_app(ctx).store.dead_letter_rows(limit=limit)
    entries = [
        {
            "id": r["id"],
            "received_at": format_micros(r["received_at"]),
            "source": r["source"],
            "origin": r["origin"],
            "reason": r["reason"],
            "attempts": r["attempts"],
            "payload": bytes(r["payload"]).decode("utf-8", "replace"),
        }
        for r in rows
    ]
    if json_output:
        print_json(entries)
        return
    if not entries:
        out.print("The dead-letter queue is empty.")
        return
    table = Table("id", "received", "origin", "reason", "payload")
    for e in entries:
        payload = e["payload"] if len(e["payload"]) <= 60 else e["payload"][:57] + "..."
        table.add_row(str(e["id"]), e["received_at"], e["origin"], e["reason"], payload)
    out.print(table)


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(help="Replay at most this many.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Re-run dead letters through the current decoders; those that now decode are stored
    and leave the queue, the others stay with their new reason."""
    counters = get_app(ctx).replay_dead_letters(limit)
    summary = {
        "replayed": counters.messages_received,
        "stored_messages": counters.messages_accepted,
        "still_dead": counters.messages_dead_lettered,
        "stored": counters.readings_stored,
        "duplicates": counters.readings_duplicate,
    }
    if json_output:
        print_json(summary)
    else:
        out.print(
            f"Replayed {summary['replayed']:,} dead letters: {summary['stored_messages']:,} now stored "
            f"({summary['stored']:,} readings), {summary['still_dead']:,} still rejected."
        )
