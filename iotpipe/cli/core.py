"""Core commands: run, init, import, stats and the dead-letter queue."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from iotpipe import __version__
from iotpipe.app import import_format_names
from iotpipe.cli import JsonFlag, app, consoles, dlq_app, get_app, print_json, say, untrusted
from iotpipe.model import Counters

if TYPE_CHECKING:
    from iotpipe.app import App

# Generated, so that the help names exactly what the import accepts.
FORMATS_HELP = ", ".join(import_format_names())


def counters_line(c: Counters) -> str:
    return (
        f"stored {c.readings_stored:,} readings from {c.messages_accepted:,} messages "
        f"({c.readings_duplicate:,} duplicates, {c.messages_dead_lettered:,} dead letters)"
    )


WORKERS_HELP = (
    "Processes answering HTTP on the port (default 1; env IOTPIPE_API__WORKERS): one per core "
    "answers more requests, sooner."
)


@app.command(rich_help_panel="Run")
def run(
    ctx: typer.Context,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C or SIGTERM).")
    ] = None,
    devices: Annotated[
        int | None, typer.Option(min=1, help="Simulated devices, when no source is configured.")
    ] = None,
    interval: Annotated[
        float | None, typer.Option(min=0.001, help="Seconds between a simulated device's reports.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for a reproducible simulation.")] = None,
    host: Annotated[str | None, typer.Option(help="API address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="API port (default 8080).")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Serve a non-loopback address without API keys.")
    ] = False,
    workers: Annotated[int | None, typer.Option(min=1, max=64, help=WORKERS_HELP)] = None,
) -> None:
    """Run the main job: ingest from the configured sources, run the analytics jobs, serve the API.

    With no source configured it starts the built-in simulator, so this works with zero setup on the embedded SQLite default. The HTTP API (and dashboard) is served on 127.0.0.1:8080 unless `[api] enabled = false`. Stops cleanly on Ctrl-C or SIGTERM: what was received is stored (or left unacknowledged at the broker).
    """
    application = _with_api_options(get_app(ctx), host, port, insecure, workers)
    sim = application.settings.simulator
    given = {"devices": devices, "interval": interval, "seed": seed}
    application.settings.simulator = sim.model_copy(update={k: v for k, v in given.items() if v is not None})
    say(f"iotpipe {__version__}: storing readings in {application.database_location()}")
    say("Press Ctrl-C to stop.")
    from iotpipe.api import create_app  # the CLI is the entry point that composes App and API

    # The sources' pipeline and HTTP ingest alike: devices may write over HTTP too.
    outcome = application.run(
        duration=duration,
        report=lambda _c: say(counters_line(application.ingest_totals())),
        announce=lambda text: say(untrusted(text)),
        web=create_app,
    )
    say(counters_line(application.ingest_totals()))
    if outcome.gave_up:
        raise typer.Exit(2)


@app.command(rich_help_panel="Run")
def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1; env IOTPIPE_API__HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default 8080; 0 picks a free one).")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve a non-loopback address without API keys (anyone reaching it may read and write).",
        ),
    ] = False,
    workers: Annotated[int | None, typer.Option(min=1, max=64, help=WORKERS_HELP)] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C or SIGTERM).")
    ] = None,
) -> None:
    """Serve the HTTP API (and the dashboard) and run the analytics jobs.

    Ingests from MQTT and ThingSpeak too when they are configured, never from the simulator; devices can also write over HTTP. Listens on 127.0.0.1:8080 unless told otherwise, and refuses a non-loopback address while no API key exists, unless --insecure.
    """
    application = _with_api_options(get_app(ctx), host, port, insecure, workers)
    say(f"iotpipe {__version__}: storing readings in {application.database_location()}")
    say("Press Ctrl-C to stop.")
    from iotpipe.api import create_app

    outcome = application.serve(
        duration=duration,
        report=lambda _c: say(counters_line(application.ingest_totals())),
        announce=lambda text: say(untrusted(text)),
        web=create_app,
    )
    say(counters_line(application.ingest_totals()))
    if outcome.gave_up:
        raise typer.Exit(2)


def _with_api_options(
    application: App, host: str | None, port: int | None, insecure: bool, workers: int | None
) -> App:
    given = {"host": host, "port": port, "insecure": insecure or None, "workers": workers}
    config = application.settings.api
    application.settings.api = config.model_copy(update={k: v for k, v in given.items() if v is not None})
    return application


@app.command(rich_help_panel="Maintain")
def init(ctx: typer.Context) -> None:
    """Create the database schema, or upgrade it to this version (safe to run again)."""
    application = get_app(ctx)
    applied = application.init()
    where = application.database_location()
    if applied:
        say(f"Applied {len(applied)} migration(s) to {where}: {', '.join(applied)}")
    else:
        say(f"{where} is up to date.")


@app.command("import", rich_help_panel="Ingest")
def import_(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Files: .jsonl .json .senml.json .csv .lp, optionally gzipped (.gz).", show_default=False
        ),
    ],
    format: Annotated[
        str | None, typer.Option("--format", "-f", help=f"Force a decoder: {FORMATS_HELP}.")
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            "--device", help="Device id for records that carry none (e.g. one device's CSV export)."
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Import historical files. Re-importing the same files stores nothing new.

    Ctrl-C stops between two records; what was read is stored, and running the same import again stores only what is missing.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    application = get_app(ctx)
    with Progress(
        TextColumn("[bold]importing"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=consoles.err,
        transient=True,
        disable=json_output or not consoles.err.is_terminal,
    ) as bar:
        task = bar.add_task("import", total=None)
        outcome = application.import_files(
            paths, format, device, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    summary = outcome.summary()
    if json_output:
        print_json(summary)
    else:
        if outcome.interrupted:
            say(
                f"Interrupted after {outcome.files_done} of {outcome.files} file(s); what was read so far is "
                "stored. Run the same import again to finish: stored readings are not stored twice."
            )
        done = "So far" if outcome.interrupted else f"Imported {len(paths)} file(s)"
        say(
            f"{done}: {summary['stored']:,} readings stored, {summary['duplicates']:,} duplicates, "
            f"{summary['invalid']:,} invalid values, {summary['dead_lettered']:,} messages dead-lettered "
            f"(of {summary['messages']:,})."
        )
        if summary["dead_lettered"]:
            say("See them with `iotpipe dlq list`; after a fix, `iotpipe dlq replay`.")
    if outcome.interrupted:
        raise typer.Exit(130)


@app.command(rich_help_panel="Look at the data")
def stats(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """Counts of devices, series, readings, invalid values and dead letters; bytes per reading per tier."""
    application = get_app(ctx, existing=True)
    counts = application.stats()
    if json_output:
        print_json(counts)
        return
    from rich.table import Table

    table = Table("what", "count", title=application.database_location())
    for key, value in counts.items():
        if key == "tiers":
            continue
        if isinstance(value, dict):  # dead letters per limit: only the limits that refused something
            for name, count in value.items():
                if count:
                    table.add_row(f"dead-lettered over [limits] {name}", f"{count:,}")
        else:
            table.add_row(key.replace("_", " "), f"{value:,}")
    for tier, sizes in counts["tiers"].items():
        per_reading = sizes["bytes_per_reading"]
        shown = "" if per_reading is None else f" ({per_reading:.2f} B/reading)"
        table.add_row(f"{tier} readings", f"{sizes['readings']:,}{shown}")
    consoles.out.print(table)


@app.command(rich_help_panel="Look at the data")
def export(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Folder to write date=YYYY-MM-DD/ partitions into.")],
    format: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
    start: Annotated[str | None, typer.Option("--start", help="From this time (ISO 8601 or epoch).")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Up to this time, exclusive.")] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Only this device (repeatable).")
    ] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="Only this metric (repeatable).")
    ] = None,
    tier: Annotated[str, typer.Option("--tier", help="raw readings, or 1h or 1d rollups.")] = "raw",
    json_output: JsonFlag = False,
) -> None:
    """Export readings or rollups as Hive-partitioned Parquet or CSV, one file per UTC day.

    Each partition is written to a temp file and renamed, so a reader never sees half of one; exporting the same range again replaces its partitions (the same data gives the same bytes). DuckDB: SELECT * FROM read_parquet('OUT/*/*.parquet', hive_partitioning = true).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from iotpipe.app import parse_range

    application = get_app(ctx, existing=True)
    first, last = parse_range(start, end)
    with Progress(
        TextColumn("[bold]exporting days"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=consoles.err,
        transient=True,
        disable=json_output or not consoles.err.is_terminal,
    ) as bar:
        task = bar.add_task("export", total=None)
        result = application.export(
            out,
            format,
            first,
            last,
            device,
            metric,
            tier,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if json_output:
        print_json(result)
        return
    say(
        f"Exported {result['rows']:,} {tier} rows of {result['series']:,} series into "
        f"{result['partitions']:,} daily {format} partitions under {out}."
    )


@app.command(rich_help_panel="Maintain")
def purge(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Delete what each tier's retention lets go ([retention] raw_days, hourly_days, daily_days, weekly_days).

    Deletes in small transactions, so ingest goes on meanwhile. Tiers without a retention are kept forever.
    """
    result = get_app(ctx, existing=True).purge(dry_run)
    if json_output:
        print_json(result)
        return
    if not result["tiers"]:
        say("No retention is configured: every tier is kept forever. Set [retention] in iotpipe.toml.")
        return
    verb = "would delete" if dry_run else "deleted"
    for tier, entry in result["tiers"].items():
        counts = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in entry.items() if k != "before")
        say(f"{tier}: {verb} what is older than {entry['before']}: {counts}")
    if result["kept_forever"]:
        say(f"kept forever: {', '.join(result['kept_forever'])}")


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 50,
    json_output: JsonFlag = False,
) -> None:
    """List dead letters, oldest first, with the reason each was rejected."""
    entries = get_app(ctx, existing=True).dead_letters(limit)
    if json_output:
        print_json(entries)
        return
    if not entries:
        say("The dead-letter queue is empty.")
        return
    from rich.table import Table

    table = Table("id", "received", "origin", "attempts", "reason", "payload")
    for e in entries:
        payload = e["payload"] if len(e["payload"]) <= 60 else e["payload"][:57] + "..."
        table.add_row(
            str(e["id"]),
            e["received_at"],
            untrusted(e["origin"]),
            str(e["attempts"]),
            untrusted(e["reason"]),
            untrusted(payload),
        )
    consoles.out.print(table, markup=False)


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(min=1, help="Replay at most this many.")] = None,
    json_output: JsonFlag = False,
) -> None:
    """Re-run dead letters through the current decoders; those that now decode are stored and leave the queue, the others stay with their new reason."""
    summary = get_app(ctx, existing=True).replay_dead_letters(limit)
    if json_output:
        print_json(summary)
    else:
        say(
            f"Replayed {summary['replayed']:,} dead letters: {summary['stored_messages']:,} now stored "
            f"({summary['stored']:,} readings), {summary['still_dead']:,} still rejected."
        )
