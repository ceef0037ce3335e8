"""The ThingSpeak connector against a local server speaking ThingSpeak's exact protocol:
complete backfills past the 8,000-entry cap, incremental polls, resumes, errors, politeness."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from iotpipe.app.wiring import thingspeak_readers
from iotpipe.config import ThingSpeakSettings
from iotpipe.model import Counters
from iotpipe.pipeline import Pipeline, PipelineConfig
from iotpipe.sources.thingspeak import (
    AccessDenied,
    ChannelNotFound,
    ChannelReader,
    ChannelSpec,
    ClientOptions,
    Cursor,
    Page,
    RateLimited,
    RateLimiter,
    ThingSpeakClient,
    ThingSpeakError,
    ThingSpeakSource,
    ThingSpeakUnavailable,
    UnexpectedResponse,
)
from iotpipe.store import Store
from tests.thingspeak_server import Channel, Fault, ThingSpeakServer, iso

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
SECOND = 1_000_000
KEY = "PRIVATEREADKEY42"


@pytest.fixture
def server() -> Iterator[ThingSpeakServer]:
    with ThingSpeakServer() as running:
        yield running


class FakeTime:
    """A clock that moves only when slept on: retries and rate limits without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client_for(server: ThingSpeakServer, fake: FakeTime | None = None, **options: float) -> ThingSpeakClient:
    fake = fake or FakeTime()
    settings = {"requests_per_second": 1000.0, "burst": 100, **options}
    opts = ClientOptions(base_url=server.url, **settings)  # type: ignore[arg-type]
    limiter = RateLimiter(opts.requests_per_second, opts.burst, clock=fake.clock, sleep=fake.sleep)
    return ThingSpeakClient(opts, sleep=fake.sleep, rng=random.Random(4), limiter=limiter)


def house(
    channel_id: int = 9, entries: int = 0, step: int = 15, read_key: str | None = None, start: int = T0
) -> Channel:
    """Public channel 9 "my_house" of ThingSpeak's docs, with `entries` regular updates."""
    channel = Channel(
        channel_id,
        "my_house",
        {"field1": "Light", "field2": "Outside Temperature"},
        description="Netduino Plus connected to sensors around the house",
        latitude="40.44",
        longitude="-79.996",
        read_key=read_key,
    )
    channel.add_series(entries, start, step, light_and_temperature)
    return channel


def light_and_temperature(n: int, field: str) -> str:
    return str(n) if field == "field1" else f"{20 + n % 50 / 10:.1f}"


def feed_page(pipeline: Pipeline, page: Page) -> None:
    """A page into a pipeline in pull mode: messages, then device info, then the cursor."""
    for raw in page.messages:
        pipeline.feed(raw)
    if page.info is not None:
        pipeline.set_device_info(f"thingspeak-{page.channel_id}", page.info)
    if page.watermark is not None:
        pipeline.set_watermark(*page.watermark)


def pull(store: Store, reader: ChannelReader, client: ThingSpeakClient, pages: int | None = None) -> Counters:
    """What `iotpipe ingest thingspeak` does with each page: feed it, commit it with its cursor."""
    pipeline = Pipeline(store)
    for number, page in enumerate(reader.pull(client), 1):
        feed_page(pipeline, page)
        pipeline.flush()
        if pages is not None and number >= pages:
            break
    pipeline.flush()
    return pipeline.counters


def resumed(store: Store, *channel_ids: int) -> ChannelReader:
    [reader] = thingspeak_readers(
        [ChannelSpec(i) for i in channel_ids], ThingSpeakSettings.model_validate({}), store.watermark
    )
    return reader


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def served_ids(server: ThingSpeakServer, since_request: int = 0) -> list[int]:
    return [i for r in server.requests[since_request:] if r.status == 200 for i in r.entry_ids]


def thingspeak_time(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


# -- complete, incremental, resumable -------------------------------------------------------
def test_history_longer_than_8000_entries_is_pulled_completely_without_duplicates(
    store: Store, server: ThingSpeakServer
) -> None:
    server.add_channel(house(entries=20_000))
    counters = pull(store, ChannelReader(ChannelSpec(9)), client_for(server))

    assert (counters.messages_received, counters.readings_stored) == (20_000, 40_000)
    assert (counters.readings_duplicate, counters.messages_dead_lettered) == (0, 0)
    assert store.stats()["readings"] == 40_000
    light = store.raw_readings("thingspeak-9", "light")
    assert light == [((T0 + 15 * n) * SECOND, float(n)) for n in range(20_000)]
    # Every window was explicit and capped; only the first answer (the newest 8,000 of the
    # whole history) was a probe: each entry after it was served exactly once.
    requests = server.requests
    assert all(r.start and r.end and r.params["results"] == "8000" for r in requests)
    assert all(r.params["timezone"] == "UTC" for r in requests)
    assert requests[0].entry_ids == list(range(12_001, 20_001))
    assert sorted(served_ids(server, 1)) == list(range(1, 20_001))
    assert len(requests) <= 6
    assert "start=2000-01-01%2000:00:00" in server.raw_queries[0]  # the documented %20 form
    cursor = Cursor.decode(9, store.watermark("thingspeak", "9") or "")
    assert cursor == Cursor(20_000, (T0 + 19_999 * 15) * SECOND)


def test_second_run_pulls_only_new_entries(store: Store, server: ThingSpeakServer) -> None:
    channel = server.add_channel(house(entries=300))
    client = client_for(server)
    assert pull(store, ChannelReader(ChannelSpec(9)), client).readings_stored == 600

    channel.add_series(5, T0 + 300 * 15, 15, light_and_temperature)
    before = len(server.requests)
    counters = pull(store, resumed(store, 9), client)

    [poll] = server.requests[before:]  # up to date: one request for the whole way
    assert poll.start == thingspeak_time(T0 + 299 * 15)  # from the cursor's own second
    assert poll.entry_ids == [300, 301, 302, 303, 304, 305]  # the cursor's entry is skipped
    assert (counters.messages_received, counters.readings_stored, counters.readings_duplicate) == (5, 10, 0)

    before = len(server.requests)
    nothing = pull(store, resumed(store, 9), client)
    assert nothing.messages_received == 0 and len(server.requests) == before + 1


def test_restart_mid_backfill_resumes_from_the_stored_cursor(store: Store, server: ThingSpeakServer) -> None:
    server.add_channel(house(entries=20_000))
    client = client_for(server)
    first = pull(store, ChannelReader(ChannelSpec(9)), client, pages=2)  # then the process dies
    stored = Cursor.decode(9, store.watermark("thingspeak", "9") or "")
    assert 0 < stored.entry_id < 20_000
    assert first.readings_stored == 2 * stored.entry_id  # the cursor covers exactly what is stored

    before = len(server.requests)
    second = pull(store, resumed(store, 9), client)

    assert server.requests[before].start == thingspeak_time(stored.time // SECOND)
    assert min(i for i in served_ids(server, before) if i > stored.entry_id) == stored.entry_id + 1
    assert second.readings_duplicate == 0
    assert first.readings_stored + second.readings_stored == store.stats()["readings"] == 40_000


def test_backfill_cut_by_an_outage_resumes_where_it_stopped(store: Store, server: ThingSpeakServer) -> None:
    server.add_channel(house(entries=20_000))
    client = client_for(server, max_attempts=3)
    pipeline = Pipeline(store)
    pages = ChannelReader(ChannelSpec(9)).pull(client)
    for _ in range(2):
        feed_page(pipeline, next(pages))
        pipeline.flush()
    server.faults += [Fault(status=503)] * 3  # ThingSpeak goes down mid-backfill

    with pytest.raises(ThingSpeakUnavailable) as failure:
        next(pages)
    assert str(failure.value).startswith(
        "ThingSpeak did not answer for channel 9 after 3 attempts (last: HTTP 503)"
    )
    assert "resumes from the stored cursor" in str(failure.value)
    stored_before = store.stats()["readings"]
    assert stored_before == 2 * Cursor.decode(9, store.watermark("thingspeak", "9") or "").entry_id

    counters = pull(store, resumed(store, 9), client)
    assert counters.readings_duplicate == 0
    assert stored_before + counters.readings_stored == store.stats()["readings"] == 40_000


def test_dense_bursts_narrow_the_window_until_nothing_is_cut(store: Store, server: ThingSpeakServer) -> None:
    channel = server.add_channel(house())
    channel.add_series(2_000, T0, 3600, light_and_temperature)  # hourly for 83 days
    burst_start = T0 + 2_000 * 3600
    channel.add_series(12_000, burst_start, 1, light_and_temperature)  # then every second
    channel.add_series(3_000, burst_start + 12_000, 600, light_and_temperature)  # then every 10 min
    counters = pull(store, ChannelReader(ChannelSpec(9), results=4_000), client_for(server))

    assert counters.messages_received == 17_000 and counters.readings_duplicate == 0
    assert sorted(set(served_ids(server))) == list(range(1, 17_001))
    assert all(r.params["results"] == "4000" for r in server.requests)
    assert len(server.requests) <= 20


def test_an_empty_channel_needs_one_request_and_stores_nothing(
    store: Store, server: ThingSpeakServer
) -> None:
    server.add_channel(house())
    counters = pull(store, ChannelReader(ChannelSpec(9)), client_for(server))
    assert counters.messages_received == 0 and len(server.requests) == 1
    assert store.watermark("thingspeak", "9") is None


# -- values and metadata --------------------------------------------------------------------
def test_field_strings_are_parsed_missing_or_invalid_and_status_and_position_are_kept(
    store: Store, server: ThingSpeakServer
) -> None:
    channel = server.add_channel(house())
    channel.add(T0, field1="12", field2="")
    channel.add(T0 + 15, field1=None, field2="abc")
    channel.add(T0 + 30, field1=" 7 ", field2="1e3")
    channel.add(T0 + 45, status="battery replaced")  # a status-only update
    channel.add(T0 + 60, field1="NaN", field2="21.5")
    channel.add(T0 + 75, field1="1", latitude="51.5", longitude="-0.12", elevation="35")
    reader = ChannelReader(ChannelSpec(9))
    counters = pull(store, reader, client_for(server))

    assert [v for _, v in store.raw_readings("thingspeak-9", "light")] == [12.0, 7.0, 1.0]
    assert [v for _, v in store.raw_readings("thingspeak-9", "outside_temperature")] == [1000.0, 21.5]
    assert store.stats()["invalid_values"] == 1  # "NaN" beside a good value: counted, not stored
    [dead] = store.dead_letter_rows()
    assert dead["origin"] == "channel 9 entry 2"
    assert dead["reason"] == "no valid metric: outside_temperature: 'abc' is not a number"
    assert reader.totals.skipped == 1 and counters.messages_received == 5  # status-only: nothing to store
    [device] = store.device_rows()
    assert (device["latitude"], device["longitude"], device["elevation"]) == (51.5, -0.12, 35.0)
    assert device["attributes"]["status"] == "battery replaced"
    assert device["attributes"]["status_at"] == "2023-11-14T22:14:05Z"
    assert Cursor.decode(9, store.watermark("thingspeak", "9") or "").entry_id == 6


def test_channel_metadata_is_the_device_record_and_follows_changes(
    store: Store, server: ThingSpeakServer
) -> None:
    channel = server.add_channel(house(entries=10))
    client = client_for(server)
    pull(store, ChannelReader(ChannelSpec(9)), client)
    [device] = store.device_rows()
    assert (device["device_id"], device["name"], device["latitude"], device["longitude"]) == (
        "thingspeak-9",
        "my_house",
        40.44,
        -79.996,
    )
    assert device["attributes"] == {
        "description": "Netduino Plus connected to sensors around the house",
        "field_labels": {"field1": "Light", "field2": "Outside Temperature"},
        "channel_id": 9,
    }

    channel.name, channel.description, channel.latitude = "my house", "moved to the garage", "40.5"
    channel.labels = {"field1": "Light", "field2": "Garage Temp (C)"}
    channel.add_series(3, T0 + 3600, 15, light_and_temperature)
    pull(store, resumed(store, 9), client)

    [device] = store.device_rows()
    assert (device["name"], device["latitude"]) == ("my house", 40.5)
    assert device["attributes"]["description"] == "moved to the garage"
    assert device["attributes"]["field_labels"] == {"field1": "Light", "field2": "Garage Temp (C)"}
    assert len(store.raw_readings("thingspeak-9", "garage_temp_c")) == 3  # the new label names the metric
    assert len(store.raw_readings("thingspeak-9", "outside_temperature")) == 10


def test_an_entry_without_entry_id_is_stored_not_dropped(store: Store, server: ThingSpeakServer) -> None:
    channel = server.add_channel(house(entries=1))
    entries = [
        {"created_at": iso(T0), "entry_id": 1, "field1": "1", "field2": None},
        {"created_at": iso(T0 + 15), "field1": "5", "field2": None},  # malformed: no entry_id
    ]
    server.faults.append(
        Fault(status=200, body=orjson.dumps({"channel": channel.channel_object(), "feeds": entries}))
    )
    counters = pull(store, ChannelReader(ChannelSpec(9)), client_for(server))
    assert counters.readings_stored == 2
    assert [v for _, v in store.raw_readings("thingspeak-9", "light")] == [1.0, 5.0]
    assert Cursor.decode(9, store.watermark("thingspeak", "9") or "").entry_id == 1


def test_an_unreadable_stored_cursor_says_how_to_start_again() -> None:
    with pytest.raises(ThingSpeakError) as failure:
        Cursor.decode(9, "12345")
    assert str(failure.value) == (
        "the stored cursor of ThingSpeak channel 9 is unreadable ('12345'): start it again with --all or --since"
    )


def test_tags_and_elevation_come_from_the_channel_settings_with_a_user_key(
    store: Store, server: ThingSpeakServer, caplog: pytest.LogCaptureFixture
) -> None:
    channel = server.add_channel(house(entries=3))
    channel.tags, channel.elevation = ["weather", "garden"], "260"
    counters = pull(store, ChannelReader(ChannelSpec(9, user_key=server.user_api_key)), client_for(server))
    assert counters.readings_stored == 6
    [device] = store.device_rows()
    assert device["attributes"]["tags"] == ["weather", "garden"]
    assert device["elevation"] == 260.0
    assert channel.write_key not in str(device)  # the settings list the channel's keys: never kept
    assert server.requests[0].params["api_key"] == server.user_api_key
    assert "api_key" not in server.requests[1].params  # a public channel's feed needs no key

    caplog.set_level(logging.WARNING)
    reader = ChannelReader(ChannelSpec(9, user_key="NOT-THE-USER-KEY"))
    again = pull(store, reader, client_for(server))
    assert (again.messages_received, again.readings_duplicate) == (3, 6)  # only the tags are lost
    assert "ThingSpeak refused the User API Key for the settings of channel 9" in caplog.text
    assert "going on without the channel's tags" in caplog.text
    assert "NOT-THE-USER-KEY" not in caplog.text


# -- errors, each with a message that says what to do ----------------------------------------
def test_private_channel_works_with_its_key_and_fails_clearly_without(
    store: Store, server: ThingSpeakServer
) -> None:
    server.add_channel(house(204504, entries=40, read_key=KEY))
    client = client_for(server)

    with pytest.raises(AccessDenied) as missing:
        pull(store, ChannelReader(ChannelSpec(204504)), client)
    assert str(missing.value) == (
        "ThingSpeak channel 204504 is private (it answered -1 to a read without a key): give its Read "
        "API Key as --channel 204504:KEY, IOTPIPE_THINGSPEAK__READ_KEYS__204504=KEY or read_key in its "
        "entry of thingspeak.channels in iotpipe.toml"
    )
    with pytest.raises(AccessDenied, match="refused the read key given for channel 204504"):
        pull(store, ChannelReader(ChannelSpec(204504, "WRONGKEY")), client)
    assert [r.status for r in server.requests] == [400, 400]  # ThingSpeak's -1 comes with HTTP 400
    assert store.stats()["readings"] == 0 and store.watermark("thingspeak", "204504") is None

    counters = pull(store, ChannelReader(ChannelSpec(204504, KEY)), client)
    assert counters.readings_stored == 80
    assert server.requests[-1].params["api_key"] == KEY


def test_missing_channel_is_a_404_that_names_it(server: ThingSpeakServer) -> None:
    with pytest.raises(ChannelNotFound) as failure:
        client_for(server).feeds(ChannelSpec(424242), T0, T0 + 60)
    assert str(failure.value) == (
        f"ThingSpeak channel 424242 does not exist ({server.url} answered 404): check the channel id "
        "(the number in the channel's URL)"
    )


def test_a_zero_body_is_thingspeaks_failure_code_not_data(server: ThingSpeakServer) -> None:
    server.add_channel(house(entries=3))
    server.faults.append(Fault(status=200, body=b"0"))
    with pytest.raises(
        UnexpectedResponse, match="ThingSpeak answered 0, its failure code, to a read of channel 9"
    ):
        client_for(server).feeds(ChannelSpec(9), T0, T0 + 60)


def test_a_documented_error_object_is_reported_with_its_details(server: ThingSpeakServer) -> None:
    server.add_channel(house(entries=3))
    server.faults.append(Fault(status=400))
    with pytest.raises(ThingSpeakError) as failure:
        client_for(server).feeds(ChannelSpec(9), T0, T0 + 60)
    assert "HTTP 400: error_bad_request - Bad Request - scripted by the test" in str(failure.value)


def test_server_errors_are_retried_with_exponential_backoff_and_jitter(server: ThingSpeakServer) -> None:
    server.add_channel(house(entries=3))
    server.faults += [Fault(status=500), Fault(status=502), Fault(status=503)]
    fake = FakeTime()
    feed = client_for(server, fake).feeds(ChannelSpec(9), T0, T0 + 60)

    assert [e["entry_id"] for e in feed.entries] == [1, 2, 3]  # nothing lost
    assert [r.status for r in server.requests] == [500, 502, 503, 200]
    # Steps of 1, 2, 4 s; each wait is half its step plus a random share of the other half.
    for delay, step in zip(fake.sleeps, (1, 2, 4), strict=True):
        assert step / 2 <= delay <= step
    assert len(set(fake.sleeps)) == 3


def test_persistent_server_errors_give_up_naming_the_channel(server: ThingSpeakServer) -> None:
    server.add_channel(house(entries=3))
    server.faults += [Fault(status=500)] * 4
    with pytest.raises(ThingSpeakUnavailable) as failure:
        client_for(server, max_attempts=4).feeds(ChannelSpec(9), T0, T0 + 60)
    assert str(failure.value) == (
        f"ThingSpeak did not answer for channel 9 after 4 attempts (last: HTTP 500): check that "
        f"{server.url} is reachable; the next run resumes from the stored cursor"
    )


def test_a_request_that_times_out_is_retried(server: ThingSpeakServer) -> None:
    server.add_channel(house(entries=3))
    server.faults.append(Fault(delay=2.0))  # a ThingSpeak that stalls once
    fake = FakeTime()
    feed = client_for(server, fake, timeout=0.3).feeds(ChannelSpec(9), T0, T0 + 60)
    assert len(feed.entries) == 3
    assert len(server.requests) == 2 and len(fake.sleeps) == 1


def test_connection_refused_is_retried_then_reported(server: ThingSpeakServer) -> None:
    fake = FakeTime()
    options = ClientOptions(base_url="http://127.0.0.1:9", max_attempts=2)
    client = ThingSpeakClient(options, sleep=fake.sleep, limiter=RateLimiter(100, 10, fake.clock, fake.sleep))
    with pytest.raises(
        ThingSpeakUnavailable, match=r"after 2 attempts \(last: connection failed \(ConnectError"
    ):
        client.feeds(ChannelSpec(9), T0, T0 + 60)
    assert len(fake.sleeps) == 1


def test_429_retry_after_holds_every_channel_of_the_client(server: ThingSpeakServer) -> None:
    """Real time here: the server's own clock shows nobody asked again before Retry-After."""
    server.add_channel(house(9, entries=3))
    server.add_channel(house(10, entries=3))
    server.faults.append(Fault(status=429, retry_after="1", channel=9))
    client = ThingSpeakClient(ClientOptions(base_url=server.url, requests_per_second=100, burst=10))
    first = threading.Thread(target=client.feeds, args=(ChannelSpec(9), T0, T0 + 60))
    first.start()
    wait_until(lambda: client.limiter.paused_until > 0)  # the 429 is answered and the pause taken
    feed_10 = client.feeds(ChannelSpec(10), T0, T0 + 60)
    first.join()

    limited, *after = server.requests
    assert (limited.channel, limited.status) == (9, 429)
    assert {r.channel for r in after} == {9, 10} and all(r.status == 200 for r in after)
    assert all(r.at - limited.at >= 1.0 for r in after)
    assert len(feed_10.entries) == 3


def test_429_without_retry_after_backs_off_and_a_long_one_fails_clearly(server: ThingSpeakServer) -> None:
    server.add_channel(house(entries=3))
    server.faults.append(Fault(status=429))
    fake = FakeTime()
    assert len(client_for(server, fake).feeds(ChannelSpec(9), T0, T0 + 60).entries) == 3
    assert 0.5 <= fake.now <= 1.0  # the first backoff step, spent waiting on the shared limiter

    server.faults.append(Fault(status=429, retry_after="7200"))
    with pytest.raises(RateLimited) as failure:
        client_for(server).feeds(ChannelSpec(9), T0, T0 + 60)
    assert str(failure.value).startswith(
        "ThingSpeak is rate-limiting reads of channel 9 (HTTP 429, retry after 7200s, attempt 1): lower "
        "thingspeak.requests_per_second in iotpipe.toml"
    )


def test_the_rate_limit_holds_across_channels_by_the_servers_clock(server: ThingSpeakServer) -> None:
    """Two channels pulled at once through one client: the server sees at most `rate`
    requests per second (after a burst of 2), whoever sends them."""
    for channel_id in (9, 10):
        server.add_channel(house(channel_id, entries=60, step=60))
    rate, burst = 10.0, 2
    client = ThingSpeakClient(ClientOptions(base_url=server.url, requests_per_second=rate, burst=burst))
    readers = [ChannelReader(ChannelSpec(i), results=10) for i in (9, 10)]  # many small pages
    threads = [threading.Thread(target=lambda r=r: list(r.pull(client))) for r in readers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    arrivals = sorted(r.at for r in server.requests)
    assert {r.channel for r in server.requests} == {9, 10} and len(arrivals) >= 16
    assert all(reader.cursor.entry_id == 60 for reader in readers)
    jitter = 0.3 / rate  # a busy machine may record one arrival a little late
    for i in range(len(arrivals)):
        for j in range(i + burst, len(arrivals)):
            assert arrivals[j] - arrivals[i] >= (j - i - burst + 1) / rate - jitter, (i, j)


# -- secrets ----------------------------------------------------------------------------------
def test_a_read_key_never_reaches_logs_errors_origins_or_the_store(
    store: Store, server: ThingSpeakServer, caplog: pytest.LogCaptureFixture
) -> None:
    channel = server.add_channel(house(204504, entries=5, read_key=KEY))
    channel.add(T0 + 3600, field1="garbage", field2="junk")  # a dead letter
    server.faults.append(Fault(status=500))  # a retry, which is logged
    caplog.set_level(logging.DEBUG)
    spec = ChannelSpec(204504, KEY)
    pull(store, ChannelReader(spec), client_for(server))
    with pytest.raises(AccessDenied) as wrong:
        pull(store, ChannelReader(ChannelSpec(204504, KEY + "X")), client_for(server))

    assert "retry 1 of 4" in caplog.text
    assert KEY not in caplog.text and KEY not in str(wrong.value) and KEY not in repr(spec)
    [dead] = store.dead_letter_rows()
    assert dead["origin"] == "channel 204504 entry 6" and KEY.encode() not in bytes(dead["payload"])
    assert all(KEY not in str(row) for row in store.device_rows())
    settings = ThingSpeakSettings.model_validate({"channels": [{"id": 204504, "read_key": KEY}]})
    assert KEY not in repr(settings) and settings.read_key(204504) == KEY


# -- polling inside `iotpipe run` -----------------------------------------------------------------
def test_service_polls_channels_into_a_running_pipeline_until_stopped(
    store: Store, server: ThingSpeakServer
) -> None:
    public = server.add_channel(house(9, entries=100))
    server.add_channel(house(204504, entries=50, read_key=KEY))
    settings = ThingSpeakSettings.model_validate(
        {"channels": [{"id": 9}, {"id": 204504, "read_key": KEY}], "base_url": server.url}
    )
    readers = thingspeak_readers([ChannelSpec(9), ChannelSpec(204504, KEY)], settings, store.watermark)
    options = ClientOptions(base_url=server.url, requests_per_second=100, burst=5)
    service = ThingSpeakSource(readers, options, interval=0.2)
    pipeline = Pipeline(store, PipelineConfig(batch_delay=0.1))
    writer = threading.Thread(target=pipeline.run)
    writer.start()
    service.start(pipeline)
    try:
        wait_until(lambda: store.stats()["readings"] == 300)
        public.add_series(7, T0 + 100 * 15, 15, light_and_temperature)
        wait_until(lambda: store.stats()["readings"] == 314)
    finally:
        service.stop()
        pipeline.stop()
        writer.join()
    assert pipeline.counters.readings_duplicate == 0
    assert Cursor.decode(9, store.watermark("thingspeak", "9") or "").entry_id == 107
    assert Cursor.decode(204504, store.watermark("thingspeak", "204504") or "").entry_id == 50
    assert "polling channel(s) 9, 204504" in service.describe()
