"""The `iotpipe` command: parses flags, makes one `App` call, prints what it returns.

Commands live in one module per family (core, ingest, views); each registers itself on
`app` when imported below. Nothing heavy is imported until a command runs: the App,
the store and the sources load on first use, so `iotpipe --help` answers at once.
Help is plain text (click's formatter), grouped by purpose.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core

from iotpipe import __version__
from iotpipe.errors import IotpipeError

if TYPE_CHECKING:
    from rich.console import Console

    from iotpipe.app import App

# The help panels, in the order `iotpipe --help` lists them.
PANELS = ("Run", "Ingest", "Look at the data", "Maintain")


class GroupedCommands(typer.core.TyperGroup):
    """Lists subcommands under their panel (`rich_help_panel`), in PANELS order, as plain
    text: rich's help renderer alone costs more time than the rest of `--help`."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            panel = getattr(command, "rich_help_panel", None) or "Commands"
            sections.setdefault(panel, []).append((name, command.get_short_help_str(limit=90)))
        for panel in sorted(sections, key=lambda p: PANELS.index(p) if p in PANELS else len(PANELS)):
            with formatter.section(panel):
                formatter.write_dl(sections[panel])


app = typer.Typer(
    name="iotpipe",
    cls=GroupedCommands,
    help="IoT telemetry platform: ingest sensor readings (MQTT, HTTP, NATS JetStream, ThingSpeak, "
    "files, a simulator), store each once in SQLite or PostgreSQL, roll them up, find anomalies, "
    "raise alerts, and serve them through an HTTP API, a live feed and a web dashboard.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
dlq_app = typer.Typer(
    cls=GroupedCommands,
    help="Inspect and replay the dead-letter queue (messages that could not be stored).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
ingest_app = typer.Typer(
    cls=GroupedCommands,
    help="Ingest from one source in the foreground (MQTT, NATS JetStream, ThingSpeak).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

relay_app = typer.Typer(
    cls=GroupedCommands,
    help="Bridge one broker into another (an existing Mosquitto into NATS JetStream).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


class _Consoles:
    """rich consoles, made on first use (rich costs ~0.1 s to import)."""

    _out: Console | None = None
    _err: Console | None = None

    @property
    def out(self) -> Console:
        if self._out is None:
            from rich.console import Console

            # soft_wrap: paths and JSON must reach pipes and tests unbroken by the width.
            self._out = Console(soft_wrap=True)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, soft_wrap=True)
        return self._err


consoles = _Consoles()


def say(text: str, *, to_stderr: bool = False) -> None:
    """Print a line of our own words (device text goes through `untrusted` first), with
    every secret masked."""
    from iotpipe.redact import redact

    (consoles.err if to_stderr else consoles.out).print(redact(text), highlight=False, markup=False)


def untrusted(text: object) -> str:
    """Device-supplied text made safe for a terminal: control characters escaped, so a
    device id cannot move the cursor or recolour the screen."""
    from iotpipe.text import printable

    return printable(str(text))


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
    # Only remembered here: this runs before a subcommand's --help, which must stay instant.
    ctx.obj = {
        "config_file": config,
        "database_url": database_url,
        "log_level": log_level.upper() if log_level else None,
        "log_format": log_format,
    }


def get_app(ctx: typer.Context, existing: bool = False) -> App:
    """The App for this invocation, built from the global options on first use. A command
    that works on what is `existing` (reads, purges, replays, runs the jobs) refuses a
    SQLite file that is not there, rather than create an empty one and say "nothing"."""
    root = ctx.find_root()
    built = root.meta.get("iotpipe.app")
    if built is None:
        from iotpipe.app import App

        options = dict(root.obj or {})
        built = App.from_options(options.pop("config_file", None), **options)
        root.meta["iotpipe.app"] = built
        root.call_on_close(built.close)
    if existing:
        built.expect_database()
    return built


def print_json(value: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


class _RedactingStream:
    """stderr as seen by everything the CLI runs (click's usage errors echo the argument a
    user pasted, a URL with its password included): every write passes through redact()."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        from iotpipe.redact import redact

        return self._stream.write(redact(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main() -> None:
    sys.stderr = _RedactingStream(sys.stderr)
    try:
        app(prog_name="iotpipe")
    except IotpipeError as exc:
        _fail(str(exc))
    except Exception as exc:  # the environment (database, disk) or a bug: one line, never a traceback
        from iotpipe.app import explain_error

        message, expected = explain_error(exc)
        if not expected:
            import logging

            logging.getLogger("iotpipe").debug("internal error", exc_info=exc)
        _fail(message)


def _fail(message: str) -> None:
    from iotpipe.redact import redact

    sys.stderr.write(f"error: {redact(message)}\n")
    sys.exit(2)


app.add_typer(ingest_app, name="ingest", rich_help_panel="Ingest")
app.add_typer(relay_app, name="relay", rich_help_panel="Ingest")
app.add_typer(dlq_app, name="dlq", rich_help_panel="Look at the data")

# Importing the command modules registers their commands, in the order listed.
from iotpipe.cli import core, ingest, keys, views  # noqa: E402,F401
