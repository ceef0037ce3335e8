"""`iotpipe ingest thingspeak`: pull ThingSpeak channels into the store, once or every interval."""

from __future__ import annotations

import threading
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from iotpipe.app import App, database_location
from iotpipe.cli import JsonFlag, err, get_app, ingest_app, out, print_json
from iotpipe.config import ThingSpeakSettings
from iotpipe.errors import IotpipeError
from iotpipe.pipeline import Pipeline
from iotpipe.sources.thingspeak import (
    HISTORY_START,
    ChannelReader,
    ChannelSpec,
    Page,
    ThingSpeakPoller,
    client_options,
    configured_channels,
    feed_page,
    parse_start,
    resume_readers,
    with_keys,
)


@ingest_app.command("thingspeak")
def ingest_thingspeak(
    ctx: typer.Context,
    channel: Annotated[
        list[str] | None,
        typer.Option(
            "--channel",
            help="Channel id, or ID:READ_KEY for a private channel; repeat for several "
            "(default: thingspeak.channels in iotpipe.toml). A key on the command line is visible to other "
            "users of the machine: prefer IOTPIPE_THINGSPEAK__READ_KEYS__<ID>=KEY.",
            show_default=False,
        ),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="Seconds between polls of each channel (default: 60, or thingspeak.interval)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Pull entries from this time (ISO 8601) on, instead of resuming from the stored cursor."
        ),
    ] = None,
    all_history: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Pull the whole history again, ignoring the stored cursor (stored readings are skipped).",
        ),
    ] = False,
    once: Annotated[bool, typer.Option("--once", help="Catch up with every channel, then exit.")] = False,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            help="ThingSpeak server (default: https://api.thingspeak.com, or thingspeak.base_url).",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Pull ThingSpeak channels: the whole history on the first run, then only new entries.

    Each channel's cursor (its last entry id) is stored with the readings it covers, so an interrupted pull resumes where it stopped. Runs until Ctrl-C unless --once.
    """
    application = get_app(ctx)
    settings = application.settings.thingspeak
    if since is not None and all_history:
        raise IotpipeError("--since and --all exclude each other: give one (or neither, to resume)")
    specs = _channel_specs(channel, settings)
    readers = _readers(application, specs, settings, since, all_history)
    options = client_options(settings, base_url)
    pipeline = application.pipeline()
    if not json_output:
        out.print(
            f"Pulling ThingSpeak channel(s) {', '.join(str(s.id) for s in specs)} from {options.base_url} "
            f"into {database_location(application.settings)}"
            + ("." if once else f", every {interval or settings.interval:g}s; Ctrl-C stops.")
        )
    with Progress(
        TextColumn("[bold]channel {task.fields[channel]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=json_output or not err.is_terminal,
    ) as bar:
        sink = _PullSink(pipeline, bar, readers)
        poller = ThingSpeakPoller(
            readers,
            options,
            sink.deliver,
            interval=interval or settings.interval,
            once=once,
            caught_up=None if once or json_output else sink.report,
        )
        poller.start()
        try:
            while not poller.join(timeout=0.5):  # short joins keep Ctrl-C responsive
                pass
        except KeyboardInterrupt:
            if not json_output:
                out.print("Stopping.")
            poller.stop()
    pipeline.flush()
    _print_summary(readers, pipeline, json_output)


def _channel_specs(flags: list[str] | None, settings: ThingSpeakSettings) -> list[ChannelSpec]:
    """Channels from --channel (a key not given there comes from the settings), else the config's."""
    if flags:
        specs = [with_keys(ChannelSpec.parse(text), settings) for text in flags]
    else:
        specs = configured_channels(settings)
    if not specs:
        raise IotpipeError(
            "no ThingSpeak channel to pull: give --channel ID (or ID:READ_KEY), or list them in "
            "thingspeak.channels in iotpipe.toml"
        )
    ids = [spec.id for spec in specs]
    if len(set(ids)) != len(ids):
        raise IotpipeError(
            f"channel(s) {sorted({i for i in ids if ids.count(i) > 1})} given twice: give each once"
        )
    return specs


def _readers(
    application: App,
    specs: list[ChannelSpec],
    settings: ThingSpeakSettings,
    since: str | None,
    all_history: bool,
) -> list[ChannelReader]:
    if all_history:
        return [ChannelReader(spec, start=HISTORY_START, results=settings.results) for spec in specs]
    if since is not None:
        start = parse_start(since)
        return [ChannelReader(spec, start=start, results=settings.results) for spec in specs]
    return resume_readers(specs, settings, application.store.watermark)


class _PullSink:
    """Feeds pages into the pipeline in the channel's thread and commits each page."""

    def __init__(self, pipeline: Pipeline, bar: Progress, readers: list[ChannelReader]) -> None:
        self.pipeline = pipeline
        self.bar = bar
        self._lock = threading.Lock()
        self._tasks: dict[int, TaskID] = {}
        self._first: dict[int, int] = {r.channel_id: r.cursor.entry_id for r in readers}
        self._reported: dict[int, int] = {r.channel_id: 0 for r in readers}

    def deliver(self, reader: ChannelReader, page: Page) -> None:
        feed_page(self.pipeline, page)
        self.pipeline.flush()  # a page is the unit of progress: commit it with its cursor
        self._progress(reader)

    def _progress(self, reader: ChannelReader) -> None:
        if reader.last_entry_id is None:
            return
        first = self._first[reader.channel_id]
        total = max(reader.last_entry_id - first, 1)
        done = min(reader.cursor.entry_id - first, total)
        with self._lock:
            task = self._tasks.get(reader.channel_id)
            if task is None:
                task = self._tasks[reader.channel_id] = self.bar.add_task(
                    "pull", total=total, channel=reader.channel_id
                )
            self.bar.update(task, total=total, completed=done)

    def report(self, reader: ChannelReader) -> None:
        """In continuous mode: one line per poll that brought something."""
        new = reader.totals.entries - self._reported[reader.channel_id]
        self._reported[reader.channel_id] = reader.totals.entries
        if new:
            out.print(
                f"channel {reader.channel_id}: {new:,} new entries, cursor at entry {reader.cursor.entry_id}"
            )


def _print_summary(readers: list[ChannelReader], pipeline: Pipeline, json_output: bool) -> None:
    counters = pipeline.counters
    channels: list[dict[str, Any]] = [
        {
            "channel": r.channel_id,
            "entries": r.totals.entries,
            "skipped_empty": r.totals.skipped,
            "requests": r.totals.requests,
            "cursor": r.cursor.entry_id,
            "last_entry_id": r.last_entry_id,
            "error": r.totals.error,
        }
        for r in readers
    ]
    failed = [r for r in readers if r.totals.error]
    if json_output:
        print_json({"channels": channels, **counters.as_dict()})
    else:
        for c in channels:
            if not c["error"]:
                out.print(
                    f"channel {c['channel']}: {c['entries']:,} entries pulled "
                    f"({c['skipped_empty']:,} without field values), cursor at entry {c['cursor']} "
                    f"of {c['last_entry_id']}"
                )
        out.print(
            f"{counters.readings_stored:,} readings stored, {counters.readings_duplicate:,} duplicates, "
            f"{counters.values_invalid:,} invalid values, {counters.messages_dead_lettered:,} entries "
            "dead-lettered."
        )
    for reader in failed:
        err.print(f"[red]error:[/red] {escape(reader.totals.error or '')}", highlight=False)
    if failed:
        raise typer.Exit(2)
