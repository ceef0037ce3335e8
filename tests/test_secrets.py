"""No secret reaches output, logs or dead letters: a scripted session with secrets planted
everywhere a user puts them (database URL, broker URL, ThingSpeak key, webhook URL), run
at DEBUG in both log formats, and everything it printed or stored is searched for them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.servers import MosquittoServer, PostgresServer
from tests.sources.test_thingspeak import house
from tests.sources.test_thingspeak_cli import clean_env
from tests.thingspeak_server import Fault, ThingSpeakServer

DB_PASSWORD = "planted-db-pw-9146"
MQTT_PASSWORD = "planted-mqtt-pw-5521"
READ_KEY = "PLANTEDREADKEY77"
HOOK_PASSWORD = "planted-hook-pw-3310"
HOOK_TOKEN = "planted-hook-token-8842"
SECRETS = (DB_PASSWORD, MQTT_PASSWORD, READ_KEY, HOOK_PASSWORD, HOOK_TOKEN)

CONFIG = f"""
[analytics]
webhooks = ["http://hooks:{HOOK_PASSWORD}@127.0.0.1:9/alert?token={HOOK_TOKEN}"]
webhook_backoff = 0.1

[[analytics.alert_rules]]
name = "pressure high"
metric = "pressure"
max = 50
"""


def test_a_whole_session_prints_logs_and_stores_no_secret(
    postgres: PostgresServer, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    url = postgres.create_database("secrets").replace("postgres@", f"postgres:{DB_PASSWORD}@")
    (tmp_path / "iotpipe.toml").write_text(CONFIG)
    (tmp_path / "h.jsonl").write_text(
        '{"device_id": "pump-1", "timestamp": "2026-12-01T00:00:00Z", "pressure": 70}\n{broken\n'
    )
    host = mosquitto.url.removeprefix("mqtt://")
    broker = f"mqtt://ingest:{MQTT_PASSWORD}@{host}"
    printed: list[str] = []

    def run(*args: str, **env: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "iotpipe", "--database-url", url, "--log-level", "DEBUG", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=clean_env(**env),
            timeout=120,
        )
        printed.append(f"{result.stdout}\n{result.stderr}")

    with ThingSpeakServer() as server:
        server.add_channel(house(9, entries=5, read_key=READ_KEY))
        echo = f'{{"status": "400", "error": {{"message": "bad request: /channels/9/feeds.json?api_key={READ_KEY}"}}}}'
        server.faults += [Fault(status=400, body=echo.encode())] * 3
        run("init")
        run("import", "h.jsonl")
        run("jobs", "all")  # the alert fires; its webhook cannot be reached
        run("--log-format", "json", "jobs", "webhooks")
        run("ingest", "thingspeak", "--channel", f"9:{READ_KEY}", "--base-url", server.url, "--once")
        run("ingest", "mqtt", "--url", broker, "--duration", "1")
        run("--log-format", "json", "run", "--duration", "2", IOTPIPE_MQTT_URL=broker)
        run("dlq", "list", "--json")
        run("mysql://root:" + DB_PASSWORD + "@localhost/x")  # not a command: the error echoes nothing
        run("--database-url", url.replace("postgresql", "mysql"), "stats")
    output = "\n".join(printed)
    assert "webhook http://127.0.0.1:9/…" in output  # the failure is reported, the URL redacted
    assert "channel 9" in output and "ThingSpeak refused" in output  # the echoing error is shown, masked
    for secret in SECRETS:
        assert secret not in output, (
            f"{secret} printed:\n{output[output.index(secret) - 300 : output.index(secret) + 100]}"
        )
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT string_agg(coalesce(origin,'') || reason || coalesce(device_hint,''), ' ') FROM dead_letters"
        ).fetchone()[0]
        notifications = conn.execute(
            "SELECT string_agg(coalesce(last_error, ''), ' ') FROM alert_notifications"
        ).fetchone()[0]
    for secret in SECRETS:
        assert secret not in (stored or "") and secret not in (notifications or "")


def test_log_lines_mask_secrets_and_escape_device_control_characters() -> None:
    import logging

    from iotpipe.logs import RedactingFilter

    record = logging.LogRecord(
        "iotpipe.test",
        logging.WARNING,
        __file__,
        1,
        "dead letter from %s: %s",
        ("\x1b[31mpump\nFAKE LINE", "mqtt://u:hunter22@b"),
        None,
    )
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "dead letter from \\x1b[31mpump\\x0aFAKE LINE: mqtt://u:***@b"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://bob:PW@127.0.0.1:5432/x", "postgresql://bob:***@127.0.0.1:5432/x"),
        # Pasted with an unencoded @ in the password: masked up to the host's @.
        ("postgresql://bob:p@ss@127.0.0.1/db", "postgresql://bob:***@127.0.0.1/db"),
        ("in 'mqtt://u:a@b@c@broker:1883' and", "in 'mqtt://u:***@broker:1883' and"),
        ("http://host/path@x and me@example.com", "http://host/path@x and me@example.com"),
    ],
)
def test_a_password_in_a_url_is_masked_whole(text: str, shown: str) -> None:
    from iotpipe.redact import redact

    assert redact(text) == shown
