"""The `iotpipe` command: parses flags into settings, builds the App, calls one operation.

Commands live in one module per family (core, and those of each source and of the
analytics); each registers itself on `app` when imported below.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from iotpipe import __version__
from iotpipe.app import App
from iotpipe.config import load_settings
from iotpipe.errors import DecodeError, IotpipeError
from iotpipe.formats.timestamps import parse_timestamp
from iotpipe.logs import setup_logging
from iotpipe.model import Micros

app = typer.Typer(
    name="iotpipe",
    help="IoT telemetry platform: ingest sensor readings (simulator, files, MQTT, ThingSpeak), "
    "store them once in SQLite or PostgreSQL, and inspect them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dlq_app = typer.Typer(
    help="Inspect and replay the dead-letter queue (messages that could not be stored).", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")
ingest_app = typer.Typer(
    help="Ingest from one source in the foreground (MQTT, ThingSpeak).", no_args_is_help=True
)
app.add_typer(ingest_app, name="ingest")

# soft_wrap: paths and JSON must reach pipes and tests unbroken by the terminal width.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _version(value: bool) -> None:
    if value:
        print(f"iotpipe {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML config file (default ./iotpipe.toml; env IOTPIPE_CONFIG)."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            "-d",
            help="sqlite:///path.db or postgresql://user@host:port/db (env IOTPIPE_DATABASE_URL).",
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR (env IOTPIPE_LOG_LEVEL).")
    ] = None,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="text or json (env IOTPIPE_LOG_FORMAT).")
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    settings = load_settings(
        config,
        database_url=database_url,
        log_level=log_level.upper() if log_level else None,
        log_format=log_format,
    )
    setup_logging(settings.log_level, settings.log_format)
    ctx.obj = App(settings)
    ctx.call_on_close(ctx.obj.close)


def get_app(ctx: typer.Context) -> App:
    assert isinstance(ctx.obj, App)
    return ctx.obj


def time_option(value: str | None, flag: str) -> Micros | None:
    """A --start/--end style option as µs, or an error that shows the expected form."""
    if value is None:
        return None
    try:
        return parse_timestamp(value, flag)
    except DecodeError as exc:
        raise IotpipeError(f"{exc}; write e.g. 2026-11-22T10:00:00Z") from None


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def main() -> None:
    try:
        app(prog_name="iotpipe")
    except IotpipeError as exc:
        # Escaped: messages quote config sections like [thingspeak], which rich would eat.
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        sys.exit(2)


# Importing the command modules registers their commands.
from iotpipe.cli import analytics, anomalies, core, mqtt, thingspeak  # noqa: E402,F401
