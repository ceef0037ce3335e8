"""Ingest commands: `ingest mqtt`, `ingest nats`, `ingest thingspeak`, `relay mqtt-to-nats` and `simulate`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from iotpipe.cli import JsonFlag, app, consoles, get_app, ingest_app, print_json, relay_app, say, untrusted
from iotpipe.cli.core import counters_line

if TYPE_CHECKING:
    from iotpipe.app import App, IngestOutcome


@ingest_app.command("mqtt")
def ingest_mqtt(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            help="Broker: mqtt://host:1883 or mqtts://host:8883, optionally with user:password@ before the "
            "host (env IOTPIPE_MQTT_URL). Prefer IOTPIPE_MQTT__USERNAME / IOTPIPE_MQTT__PASSWORD to a "
            "password in the URL.",
            show_default=False,
        ),
    ] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic",
            help="Topic filter to subscribe to, e.g. 'telemetry/#'; repeat for several "
            "(default: one per template).",
            show_default=False,
        ),
    ] = None,
    template: Annotated[
        list[str] | None,
        typer.Option(
            "--template",
            help="Topic layout, first match wins: telemetry/{device_id}, tele/{device_id}/SENSOR, "
            "zigbee2mqtt/{device_id}, {device_id}/{metric}, or your own as TEMPLATE=FORMAT "
            "(default: the first three). A message matching none is dead-lettered.",
            show_default=False,
        ),
    ] = None,
    shared_group: Annotated[
        str | None,
        typer.Option(help="Share the subscription with other workers ($share/NAME/...).", show_default=False),
    ] = None,
    qos: Annotated[
        int | None, typer.Option(help="0, 1 (default: at least once) or 2.", show_default=False)
    ] = None,
    client_id: Annotated[
        str | None,
        typer.Option(
            help="Id of the persistent session; keep it across restarts, one per worker (default iotpipe-<host>).",
            show_default=False,
        ),
    ] = None,
    protocol: Annotated[
        str | None, typer.Option(help="MQTT version: 5 (default) or 3.1.1.", show_default=False)
    ] = None,
    inflight: Annotated[
        int | None,
        typer.Option(
            help="Unacknowledged messages the broker may send us (default 10000): on MQTT 5 our Receive "
            "Maximum; on 3.1.1 the broker's max_inflight_messages decides, raise it to match.",
            show_default=False,
        ),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA certificate(s) to verify an mqtts:// broker.")
    ] = None,
    cert_file: Annotated[Path | None, typer.Option(help="Client certificate (mqtts://).")] = None,
    key_file: Annotated[
        Path | None, typer.Option(help="Client certificate's private key (mqtts://).")
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds (default: at Ctrl-C or SIGTERM)."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Subscribe to an MQTT broker and store every reading that arrives.

    At least once: QoS 1 in a persistent session, each message acknowledged only after the batch holding it is committed; what is published while this is stopped is delivered when it returns. Stops cleanly on Ctrl-C or SIGTERM. Broker settings for full speed: docs/mqtt.md.
    """
    application = get_app(ctx)
    overrides = {
        "topics": topic,
        "templates": template,
        "shared_group": shared_group,
        "qos": qos,
        "client_id": client_id,
        "protocol": protocol,
        "inflight": inflight,
        "ca_file": ca_file,
        "cert_file": cert_file,
        "key_file": key_file,
    }
    _run_source(application, application.ingest_mqtt, overrides, url, duration, json_output, _mqtt_line)


def _run_source(
    application: App,
    ingest: Callable[..., IngestOutcome],
    overrides: dict[str, Any],
    url: str | None,
    duration: float | None,
    json_output: bool,
    summary_line: Callable[[IngestOutcome], str],
) -> None:
    """One source in the foreground: progress lines (to stderr with --json), then the
    summary as JSON or as `summary_line(outcome)`; exit status 2 if the source gave up."""
    say(f"Storing readings in {application.database_location()}", to_stderr=json_output)
    outcome = ingest(
        overrides,
        url=url,
        duration=duration,
        report=lambda c: say(counters_line(c), to_stderr=json_output),
        announce=lambda text: say(untrusted(text), to_stderr=json_output),
    )
    if json_output:
        print_json(outcome.summary())
    else:
        say(summary_line(outcome))
    if outcome.gave_up:
        raise typer.Exit(2)


def _mqtt_line(outcome: IngestOutcome) -> str:
    stats = outcome.sources["mqtt"]
    line = counters_line(outcome.counters)
    if stats["queue_full"]:
        line += (
            f"; the store was slower than the broker {stats['queue_full']:,} times: "
            f"stopped reading for {stats['blocked_seconds']:,.1f} s in all"
        )
    if stats["connects"] > 1:
        line += f"; reconnected {stats['connects'] - 1:,} times"
    return line


@ingest_app.command("nats")
def ingest_nats(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            help="NATS server: nats://host:4222 (env IOTPIPE_NATS_URL); credentials from IOTPIPE_NATS__USER / "
            "IOTPIPE_NATS__PASSWORD or IOTPIPE_NATS__TOKEN.",
            show_default=False,
        ),
    ] = None,
    stream: Annotated[
        str | None,
        typer.Option(help="JetStream stream, created if missing (default IOTPIPE).", show_default=False),
    ] = None,
    subject: Annotated[
        list[str] | None,
        typer.Option(
            "--subject",
            help="Subject the stream takes, e.g. 'telemetry.>'; repeat for several (default: one per template).",
            show_default=False,
        ),
    ] = None,
    template: Annotated[
        list[str] | None,
        typer.Option(
            "--template",
            help="Subject layout, written like an MQTT topic template: telemetry/{device_id}, "
            "tele/{device_id}/SENSOR, zigbee2mqtt/{device_id}, {device_id}/{metric}, or TEMPLATE=FORMAT "
            "(default: the first three). A message matching none is dead-lettered.",
            show_default=False,
        ),
    ] = None,
    durable: Annotated[
        str | None,
        typer.Option(help="Durable consumer shared by every worker (default iotpipe).", show_default=False),
    ] = None,
    partitions: Annotated[
        int | None,
        typer.Option(
            help="Device partitions, one consumer each, owned by one worker at a time (default 0: one shared "
            "consumer); nats-server must map subjects to them (docs/nats.md).",
            show_default=False,
        ),
    ] = None,
    ack_wait: Annotated[
        float | None,
        typer.Option(
            help="Seconds before a message not acknowledged goes to another worker (default 30).",
            show_default=False,
        ),
    ] = None,
    max_deliver: Annotated[
        int | None,
        typer.Option(
            help="Deliveries of a message before it is dead-lettered (default 5).", show_default=False
        ),
    ] = None,
    max_ack_pending: Annotated[
        int | None,
        typer.Option(
            help="Messages this worker holds unacknowledged (default 10000); it commits when half await their ack.",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds (default: at Ctrl-C or SIGTERM)."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Consume a NATS JetStream stream and store every reading that arrives.

    Workers share the stream's durable consumer: each message is acknowledged only after the batch holding it is committed, and a worker that dies leaves its messages to the others after --ack-wait. Stops cleanly on Ctrl-C or SIGTERM. See docs/nats.md.
    """
    application = get_app(ctx)
    overrides = {
        "stream": stream,
        "subjects": subject,
        "templates": template,
        "durable": durable,
        "partitions": partitions,
        "ack_wait": ack_wait,
        "max_deliver": max_deliver,
        "max_ack_pending": max_ack_pending,
    }
    _run_source(application, application.ingest_nats, overrides, url, duration, json_output, _nats_line)


def _nats_line(outcome: IngestOutcome) -> str:
    stats = outcome.sources["nats"]
    line = counters_line(outcome.counters)
    if stats["redelivered"]:
        line += f"; {stats['redelivered']:,} messages were delivered again (a worker stopped holding them)"
    if stats["max_deliver_dead_letters"]:
        line += f"; {stats['max_deliver_dead_letters']:,} dead-lettered after max_deliver"
    return line


@relay_app.command("mqtt-to-nats")
def relay_mqtt_to_nats(
    ctx: typer.Context,
    mqtt: Annotated[
        str | None,
        typer.Option(
            "--mqtt",
            help="MQTT broker to bridge: mqtt://host:1883 (env IOTPIPE_MQTT_URL).",
            show_default=False,
        ),
    ] = None,
    nats: Annotated[
        str | None,
        typer.Option(
            "--nats",
            help="NATS server with JetStream: nats://host:4222 (env IOTPIPE_NATS_URL).",
            show_default=False,
        ),
    ] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic",
            help="MQTT topic filter to relay; repeat for several (default: one per template).",
            show_default=False,
        ),
    ] = None,
    client_id: Annotated[
        str | None,
        typer.Option(
            help="Id of the relay's persistent MQTT session (default iotpipe-<host>).", show_default=False
        ),
    ] = None,
    protocol: Annotated[
        str | None, typer.Option(help="MQTT version: 5 (default) or 3.1.1.", show_default=False)
    ] = None,
    inflight: Annotated[
        int | None,
        typer.Option(
            help="MQTT messages awaiting JetStream's ack at once (default 10000).", show_default=False
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: at Ctrl-C or SIGTERM).")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Bridge an MQTT broker into NATS JetStream, for workers running `iotpipe ingest nats`.

    Subscribes with QoS 1 in a persistent session and acknowledges each message to the broker only after JetStream has acknowledged storing it. Subjects are what nats-server's own MQTT listener would give the topics (telemetry/pump-7 → telemetry.pump-7).
    """
    application = get_app(ctx)
    overrides = {"topics": topic, "client_id": client_id, "protocol": protocol, "inflight": inflight}
    result = application.relay_mqtt_to_nats(
        overrides,
        mqtt_url=mqtt,
        nats_url=nats,
        duration=duration,
        announce=lambda text: say(untrusted(text), to_stderr=json_output),
    )
    if json_output:
        print_json(result)
    else:
        say(
            f"relayed {result['nats']['relayed']:,} messages ({result['nats']['retries']:,} publishes retried)"
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

    Each channel's cursor (its last entry id) is stored with the readings it covers, so an interrupted pull resumes where it stopped. Runs until Ctrl-C or SIGTERM unless --once.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    application = get_app(ctx)
    lock = threading.Lock()
    tasks: dict[int, TaskID] = {}
    reported: dict[int, int] = {}
    with Progress(
        TextColumn("[bold]channel {task.fields[channel]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=consoles.err,
        transient=True,
        disable=json_output or not consoles.err.is_terminal,
    ) as bar:

        def on_page(progress: dict[str, Any]) -> None:
            if progress["last_entry_id"] is None:
                return
            total = max(progress["last_entry_id"] - progress["first_cursor"], 1)
            done = min(progress["cursor"] - progress["first_cursor"], total)
            with lock:
                task = tasks.get(progress["channel"])
                if task is None:
                    task = tasks[progress["channel"]] = bar.add_task(
                        "pull", total=total, channel=progress["channel"]
                    )
                bar.update(task, total=total, completed=done)

        def caught_up(progress: dict[str, Any]) -> None:
            new = progress["entries"] - reported.get(progress["channel"], 0)
            reported[progress["channel"]] = progress["entries"]
            if new:
                say(
                    f"channel {progress['channel']}: {new:,} new entries, cursor at entry {progress['cursor']}"
                )

        outcome = application.ingest_thingspeak(
            channel,
            interval=interval,
            since=since,
            all_history=all_history,
            once=once,
            base_url=base_url,
            on_page=on_page,
            caught_up=None if once or json_output else caught_up,
            announce=None if json_output else lambda text: say(untrusted(text)),
        )
    channels = outcome.sources["channels"]
    failed = [c for c in channels if c["error"]]
    if json_output:
        print_json(
            {
                "channels": [{k: v for k, v in c.items() if k != "first_cursor"} for c in channels],
                **outcome.counters.as_dict(),
            }
        )
    else:
        for c in channels:
            if not c["error"]:
                say(
                    f"channel {c['channel']}: {c['entries']:,} entries pulled "
                    f"({c['skipped_empty']:,} without field values), cursor at entry {c['cursor']} "
                    f"of {c['last_entry_id']}"
                )
        c = outcome.counters
        say(
            f"{c.readings_stored:,} readings stored, {c.readings_duplicate:,} duplicates, "
            f"{c.values_invalid:,} invalid values, {c.messages_dead_lettered:,} entries dead-lettered."
        )
    for entry in failed:
        say(f"error: {untrusted(entry['error'])}", to_stderr=True)
    if failed or outcome.gave_up:
        raise typer.Exit(2)


@app.command(rich_help_panel="Ingest")
def simulate(
    mqtt: Annotated[
        str | None,
        typer.Option(
            "--mqtt",
            help="Publish to this broker: mqtt://host:1883, optionally with user:password@ before the host.",
            show_default=False,
        ),
    ] = None,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices.")] = 10,
    interval: Annotated[float, typer.Option(min=0.001, help="Seconds between one device's reports.")] = 5.0,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds.", show_default=False)
    ] = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many messages.", show_default=False)
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed: the same seed sends the same stream.")] = None,
    anomaly_rate: Annotated[
        float,
        typer.Option(
            min=0, max=1, help="Chance per report that an anomaly starts (spike, stuck, drift, ...)."
        ),
    ] = 0.0,
    dropout_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Chance per report that a device goes silent for a while.")
    ] = 0.0,
    malformed_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Chance per message that its payload is malformed.")
    ] = 0.0,
    v2_ratio: Annotated[
        float, typer.Option(min=0, max=1, help="Share of JSON reports in the V2 schema.")
    ] = 0.5,
    topic_template: Annotated[
        str,
        typer.Option(
            help="Where and how devices publish: telemetry/{device_id} (V1/V2 JSON), tele/{device_id}/SENSOR "
            "(Tasmota), zigbee2mqtt/{device_id}, or {device_id}/{metric} (bare numbers).",
        ),
    ] = "telemetry/{device_id}",
    prefix: Annotated[str, typer.Option(help="Device ids are PREFIX-001, PREFIX-002, ...")] = "sim",
    qos: Annotated[int, typer.Option(min=0, max=2, help="QoS of the published messages.")] = 1,
) -> None:
    """Simulate devices publishing telemetry over MQTT; print a JSON summary of what was sent.

    Signals are realistic (daily temperature cycle, humidity against it, pressure, a draining battery, noisy RSSI); anomalies, dropouts and malformed payloads are injected at the given rates, reproducibly with --seed.

    The summary reconciles with `iotpipe stats --json`: its `readings` are stored, its `malformed` messages dead-lettered.
    """
    from iotpipe.app import App

    if mqtt is not None and duration is None and count is None:
        say("No --duration or --count: publishing until Ctrl-C.", to_stderr=True)
    summary = App.simulate_to(
        mqtt_url=mqtt,
        devices=devices,
        interval=interval,
        duration=duration,
        count=count,
        seed=seed,
        anomaly_rate=anomaly_rate,
        dropout_rate=dropout_rate,
        malformed_rate=malformed_rate,
        v2_ratio=v2_ratio,
        topic_template=topic_template,
        prefix=prefix,
        qos=qos,
    )
    print_json(summary)
