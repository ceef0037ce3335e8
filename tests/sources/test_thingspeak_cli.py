"""`iotpipe ingest thingspeak` and `iotpipe run` with ThingSpeak channels, as processes, against
the local ThingSpeak: what users see, what ends up in the store, and crash-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotpipe.app.wiring import thingspeak_readers
from iotpipe.config import ThingSpeakSettings, load_settings
from iotpipe.sources.thingspeak import ChannelSpec, Cursor
from iotpipe.store import Store, open_store
from tests.sources.test_thingspeak import KEY, SECOND, T0, house, light_and_temperature, thingspeak_time
from tests.thingspeak_server import Channel, Fault, ThingSpeakServer


@pytest.fixture
def server() -> Iterator[ThingSpeakServer]:
    with ThingSpeakServer() as running:
        yield running


# The database of the current test (both engines, see `_on_each_engine`); None outside this module.
_database: dict[str, str | None] = {"url": None}


@pytest.fixture(autouse=True)
def _on_each_engine(database_url: str) -> Iterator[None]:
    _database["url"] = database_url
    yield
    _database["url"] = None


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without iotpipe settings, plus a fast (local) rate limit
    and the test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOTPIPE_")}
    env["IOTPIPE_API__PORT"] = "0"  # an `iotpipe run` of a test serves on a free port, not 8080
    if _database["url"] is not None:
        env["IOTPIPE_DATABASE_URL"] = _database["url"]
    env["IOTPIPE_THINGSPEAK__REQUESTS_PER_SECOND"] = "200"
    env["IOTPIPE_THINGSPEAK__BURST"] = "10"
    return env | extra


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "iotpipe", *args]


def iotpipe(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), capture_output=True, text=True, cwd=cwd, env=env or clean_env(), timeout=120
    )


def ingest(server: ThingSpeakServer, cwd: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """`ingest thingspeak --once --json`, its JSON summary."""
    result = iotpipe(
        "ingest", "thingspeak", "--base-url", server.url, "--once", "--json", *args, cwd=cwd, env=env
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def opened(cwd: Path) -> Store:
    return open_store(_database["url"] or f"sqlite:///{cwd / 'iotpipe.db'}")


def weather_station() -> Channel:
    """Public weather station 12397 of MathWorks' examples, made private here."""
    channel = Channel(
        12397,
        "WeatherStation",
        {
            "field1": "Wind Direction (North = 0 degrees)",
            "field2": "Wind Speed (mph)",
            "field3": "% Humidity",
            "field4": "Temperature (F)",
        },
        read_key=KEY,
        tags=["weather", "station"],
    )
    channel.add_series(300, T0, 60, lambda n, field: f"{(n * 7 + int(field[-1])) % 100}.5")
    return channel


def test_run_pulls_two_channels_and_stats_show_their_field_names_as_metrics(
    tmp_path: Path, server: ThingSpeakServer
) -> None:
    server.add_channel(house(9, entries=500))
    server.add_channel(weather_station())
    (tmp_path / "iotpipe.toml").write_text(
        f'[thingspeak]\nbase_url = "{server.url}"\ninterval = 0.5\nchannels = [{{id = 9}}, {{id = 12397}}]\n'
    )
    # Keys stay out of the file; the User API Key only brings the channels' tags.
    env = clean_env(
        IOTPIPE_THINGSPEAK__READ_KEYS__12397=KEY, IOTPIPE_THINGSPEAK__USER_API_KEY=server.user_api_key
    )
    result = iotpipe("--log-level", "debug", "run", "--duration", "3", cwd=tmp_path, env=env)

    assert result.returncode == 0, result.stderr
    assert f"ThingSpeak: polling channel(s) 9, 12397 at {server.url} every 0.5s." in result.stdout
    assert "simulating" not in result.stdout
    assert KEY not in result.stdout + result.stderr
    assert server.user_api_key not in result.stdout + result.stderr
    stats = json.loads(iotpipe("stats", "--json", cwd=tmp_path).stdout)
    assert {k: stats[k] for k in ("devices", "series", "readings", "dead_letters", "invalid_values")} == {
        "devices": 2,
        "series": 6,
        "readings": 500 * 2 + 300 * 4,
        "dead_letters": 0,
        "invalid_values": 0,
    }
    store = opened(tmp_path)
    expected = {
        ("thingspeak-9", 500): ["light", "outside_temperature"],
        ("thingspeak-12397", 300): [
            "wind_direction_north_0_degrees",
            "wind_speed_mph",
            "humidity",
            "temperature_f",
        ],
    }
    for (device_id, count), names in expected.items():
        assert [len(store.raw_readings(device_id, name)) for name in names] == [count] * len(names)
    weather = next(d for d in store.device_rows() if d["device_id"] == "thingspeak-12397")
    assert weather["attributes"]["field_labels"]["field1"] == "Wind Direction (North = 0 degrees)"
    assert weather["name"] == "WeatherStation"
    assert weather["attributes"]["tags"] == ["weather", "station"]


def test_once_then_again_pulls_only_new_entries(tmp_path: Path, server: ThingSpeakServer) -> None:
    channel = server.add_channel(house(entries=1000))
    first = ingest(server, tmp_path, "--channel", "9")
    assert first["channels"] == [
        {
            "channel": 9,
            "entries": 1000,
            "skipped_empty": 0,
            "requests": 1,
            "cursor": 1000,
            "last_entry_id": 1000,
            "error": None,
        }
    ]
    assert first["readings_stored"] == 2000

    channel.add_series(3, T0 + 1000 * 15, 15, light_and_temperature)
    before = len(server.requests)
    second = ingest(server, tmp_path, "--channel", "9")
    assert server.requests[before].start == thingspeak_time(T0 + 999 * 15)
    assert (second["channels"][0]["entries"], second["readings_stored"], second["readings_duplicate"]) == (
        3,
        6,
        0,
    )

    again = ingest(server, tmp_path, "--channel", "9", "--all")  # a repair run: everything again, stored once
    assert (again["readings_stored"], again["readings_duplicate"]) == (0, 2006)


def test_a_process_killed_mid_backfill_resumes_from_its_committed_cursor(
    tmp_path: Path, server: ThingSpeakServer
) -> None:
    server.add_channel(house(entries=20_000))
    frozen = threading.Event()
    # The probe and two pages are answered; the third page's request never is.
    server.faults += [Fault(), Fault(), Fault(), Fault(hang=frozen)]
    process = subprocess.Popen(
        command("ingest", "thingspeak", "--channel", "9", "--base-url", server.url, "--once"),
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        server.wait_for_requests(4)
    finally:
        process.kill()  # SIGKILL: no cleanup, no last flush
        process.wait()
        frozen.set()
    store = opened(tmp_path)
    cursor = Cursor.decode(9, store.watermark("thingspeak", "9") or "")
    stored = store.stats()["readings"]
    assert 0 < cursor.entry_id < 20_000 and stored == 2 * cursor.entry_id

    before = len(server.requests)
    summary = ingest(server, tmp_path, "--channel", "9")
    assert server.requests[before].start == thingspeak_time(cursor.time // SECOND)
    assert summary["readings_duplicate"] == 0
    assert summary["readings_stored"] == 40_000 - stored
    assert store.stats()["readings"] == 40_000


def test_private_channel_needs_its_key_and_the_others_are_still_pulled(
    tmp_path: Path, server: ThingSpeakServer
) -> None:
    server.add_channel(house(9, entries=10))
    server.add_channel(house(204504, entries=20, read_key=KEY))
    args = (
        "ingest",
        "thingspeak",
        "--base-url",
        server.url,
        "--once",
        "--channel",
        "9",
        "--channel",
        "204504",
    )
    result = iotpipe(*args, cwd=tmp_path)

    assert result.returncode == 2
    assert (
        "error: ThingSpeak channel 204504 is private (it answered -1 to a read without a key)"
        in result.stderr
    )
    assert "IOTPIPE_THINGSPEAK__READ_KEYS__204504=KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert "channel 9: 10 entries pulled" in result.stdout
    assert opened(tmp_path).stats()["readings"] == 20  # channel 9's, nothing of the private one

    with_key = iotpipe(*args, cwd=tmp_path, env=clean_env(IOTPIPE_THINGSPEAK__READ_KEYS__204504=KEY))
    assert with_key.returncode == 0, with_key.stderr
    assert "channel 204504: 20 entries pulled" in with_key.stdout
    assert KEY not in with_key.stdout + with_key.stderr
    assert opened(tmp_path).stats()["readings"] == 60


def test_continuous_mode_polls_until_ctrl_c(tmp_path: Path, server: ThingSpeakServer) -> None:
    channel = server.add_channel(house(entries=100))
    process = subprocess.Popen(
        command("ingest", "thingspeak", "--channel", "9", "--base-url", server.url, "--interval", "0.2"),
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server.wait_for_requests(2)  # caught up, then polled again
        channel.add_series(4, T0 + 100 * 15, 15, light_and_temperature)
        server.wait_for_requests(len(server.requests) + 2)  # a whole poll after the new entries
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert "channel 9: 100 new entries, cursor at entry 100" in stdout
    assert "channel 9: 4 new entries, cursor at entry 104" in stdout
    assert "Stopping." in stdout and "208 readings stored" in stdout
    assert opened(tmp_path).stats()["readings"] == 208


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channel", "9", "--since", "2024-01-01", "--all"], "--since and --all exclude each other"),
        (["--channel", "abc"], "--channel 'abc' is not a ThingSpeak channel id"),
        (["--channel", "9", "--channel", "9"], "channel(s) [9] given twice"),
        ([], "no ThingSpeak channel to pull: give --channel ID (or ID:READ_KEY), or list them in"),
        (["--channel", "9", "--since", "yesterday"], "--since 'yesterday' is not a valid ISO 8601 time"),
        (["--channel", "9", "--base-url", "ftp://example"], "must start with https://"),
    ],
    ids=["since-and-all", "bad-id", "twice", "no-channel", "bad-since", "bad-url"],
)
def test_bad_arguments_are_explained(args: list[str], message: str, tmp_path: Path) -> None:
    result = iotpipe("ingest", "thingspeak", "--once", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_channels_and_keys_come_from_the_config_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("IOTPIPE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "iotpipe.toml").write_text(
        '[thingspeak]\ninterval = 30\nchannels = [{id = 9}, {id = 204504, since = "2024-01-01T00:00:00Z"}]\n'
    )
    monkeypatch.setenv("IOTPIPE_THINGSPEAK__READ_KEYS__204504", KEY)
    settings = load_settings().thingspeak
    assert (settings.interval, settings.read_key(9), settings.read_key(204504)) == (30, None, KEY)
    specs = [ChannelSpec(9), ChannelSpec(204504, KEY)]
    nine, private = thingspeak_readers(specs, settings, lambda _source, _key: None)
    assert nine.cursor == Cursor(0, 946_684_800 * SECOND)  # no cursor, no since: the whole history
    assert private.cursor == Cursor(0, 1_704_067_200 * SECOND)  # its since

    monkeypatch.setenv("IOTPIPE_THINGSPEAK__CHANNELS", '[{"id": 5, "read_key": "K5"}]')
    assert load_settings().thingspeak.read_key(5) == "K5"
    stored = Cursor(77, T0 * SECOND).encode()
    [resumed] = thingspeak_readers(
        [ChannelSpec(5)], ThingSpeakSettings.model_validate({}), lambda _s, _k: stored
    )
    assert resumed.cursor == Cursor(77, T0 * SECOND)  # a stored cursor wins over since


def test_the_ingest_command_has_useful_help(tmp_path: Path) -> None:
    result = iotpipe("ingest", "thingspeak", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for option in ("--channel", "--interval", "--since", "--all", "--once", "--base-url", "--json"):
        assert option in result.stdout


# The real command, crashing (os._exit: no cleanup, like a power cut) as it stores the
# readings of its second page: its cursor must not be committed ahead of them.
_CRASH_ON_SECOND_PAGE = """
import os, sys
from iotpipe.store.base import Store
inserts = {"count": 0}
original = Store._write
def write(self, batch):
    if batch.groups:
        inserts["count"] += 1
        if inserts["count"] == 2:
            os._exit(9)
    return original(self, batch)
Store._write = write
from iotpipe.cli import main
sys.argv = ["iotpipe", *sys.argv[1:]]
main()
"""


def test_a_crash_while_a_page_is_stored_never_leaves_the_cursor_ahead_of_the_readings(
    tmp_path: Path, server: ThingSpeakServer
) -> None:
    server.add_channel(house(entries=20_000))
    crashed = subprocess.run(
        [
            sys.executable,
            "-c",
            _CRASH_ON_SECOND_PAGE,
            "ingest",
            "thingspeak",
            "--channel",
            "9",
            "--base-url",
            server.url,
            "--once",
        ],
        cwd=tmp_path,
        env=clean_env(IOTPIPE_THINGSPEAK__RESULTS="3000"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 9, crashed.stderr
    store = opened(tmp_path)
    cursor = Cursor.decode(9, store.watermark("thingspeak", "9") or "")
    assert 0 < cursor.entry_id < 20_000  # the first page, committed with its readings
    assert store.stats()["readings"] == 2 * cursor.entry_id
    summary = ingest(server, tmp_path, "--channel", "9")
    assert summary["readings_duplicate"] == 0
    assert store.stats()["readings"] == 40_000
