"""ThingSpeak's endpoints served by iotpipe: recorded requests get ThingSpeak's documented answers."""

from __future__ import annotations

import itertools

import orjson

from tests.api.conftest import Served

# The recorded feeds.json of public channel 86945 (mchwalisz/thingspeak cassettes, 2019),
# first three of its 16 entries, as the reference notes quote it.
CHANNEL_86945 = {
    "channel": {
        "id": 86945,
        "name": "py thingspeak",
        "description": "Python thingspeak testing",
        "latitude": "0.0",
        "longitude": "0.0",
        "field1": "cpu_pc",
        "field2": "mem_avail_mb",
        "created_at": "2016-02-09T20:22:23Z",
        "updated_at": "2017-02-11T21:40:41Z",
        "last_entry_id": 16,
    },
    "feeds": [
        {"created_at": "2016-02-09T20:25:53Z", "entry_id": 1, "field1": "9.2", "field2": "1000"},
        {"created_at": "2016-02-09T20:30:16Z", "entry_id": 2, "field1": "25.0", "field2": "58.9"},
        {"created_at": "2017-02-11T19:48:30Z", "entry_id": 3, "field1": "1", "field2": None},
    ],
}


def test_update_answers_the_new_entry_id_and_update_json_the_feed_entry(served: Served) -> None:
    key = served.key("channel 3 write key", "writer", ["thingspeak-3"])
    # The firmware way: GET with the key and fields in the query.
    assert served.client.get(f"/update?api_key={key}&field1=73").text == "1"
    # The form way, with the key in ThingSpeak's header.
    second = served.client.post(
        "/update",
        content=b"field1=74&field2=1.5",
        headers={"THINGSPEAKAPIKEY": key, "content-type": "application/x-www-form-urlencoded"},
    )
    assert second.status_code == 200 and second.text == "2"
    entry = served.client.post(
        f"/update.json?api_key={key}", json={"field1": "75", "created_at": "2026-01-05 10:00:00"}
    ).json()
    assert entry == {
        "channel_id": 3,
        "field1": "75",
        "field2": None,
        "field3": None,
        "field4": None,
        "field5": None,
        "field6": None,
        "field7": None,
        "field8": None,
        "created_at": "2026-01-05T10:00:00Z",
        "entry_id": 3,
        "status": None,
        "latitude": None,
        "longitude": None,
        "elevation": None,
        "location": None,
    }
    assert [v for _, v in served.app.store.raw_readings("thingspeak-3", "field1")] == [75.0, 73.0, 74.0]


def test_a_failed_update_answers_0(served: Served) -> None:
    reader = served.key("reader", "reader")
    writer = served.key("writer", "writer", ["thingspeak-3"])
    # Recorded: a bad or placeholder key gets body 0 with HTTP 200, a read key HTTP 400.
    wrong = served.client.post("/update.json", data={"api_key": "XXXXXXXXXXXXXXXX", "field1": "1"})
    assert (wrong.status_code, wrong.text) == (200, "0")
    read_key = served.client.post("/update.json", data={"api_key": reader, "field1": "1"})
    assert (read_key.status_code, read_key.text) == (400, "0")
    assert served.client.get(f"/update?api_key={writer}").text == "0"  # no field
    assert served.client.get(f"/update?api_key={writer}&field1=1&created_at=2026-01-05T00:00:00Z").text == "1"
    # created_at must be unique within a channel: the same one again stores nothing.
    assert served.client.get(f"/update?api_key={writer}&field1=2&created_at=2026-01-05T00:00:00Z").text == "0"
    assert served.client.get(f"/update?api_key={writer}&field1=1&created_at=someday").text == "0"


def test_bulk_update_json_stores_every_update_and_answers_success(served: Served) -> None:
    key = served.key("channel 9 write key", "writer", ["thingspeak-9"])
    body = {
        "write_api_key": key,
        "updates": [
            {"created_at": "2026-01-05 00:00:00 +0000", "field1": 1.0, "field2": "2.0"},
            {"created_at": "2026-01-05T00:01:00Z", "field1": 1.1, "field2": "2.2"},
            {"created_at": 1767571320, "field1": 1.2, "latitude": 42.79, "longitude": -86.1},
        ],
    }
    answer = served.client.post("/channels/9/bulk_update.json", json=body)
    assert answer.status_code == 202 and answer.json()["success"] is True
    assert [v for _, v in served.app.store.raw_readings("thingspeak-9", "field1")] == [1.0, 1.1, 1.2]
    assert served.app.device("thingspeak-9")["location"] == {"lat": 42.79, "lon": -86.1, "elevation": None}


def test_bulk_update_with_delta_t_counts_back_from_the_last_update(served: Served) -> None:
    key = served.key("k", "writer", ["thingspeak-9"])
    body = {
        "write_api_key": key,
        "updates": [{"delta_t": 0, "field1": 1}, {"delta_t": 15, "field1": 2}, {"delta_t": 15, "field1": 3}],
    }
    assert served.client.post("/channels/9/bulk_update.json", json=body).status_code == 202
    times = [t for t, _ in served.app.store.raw_readings("thingspeak-9", "field1")]
    assert [b - a for a, b in itertools.pairwise(times)] == [15_000_000, 15_000_000]


def test_bulk_update_with_another_channels_key_is_refused_with_thingspeaks_error(served: Served) -> None:
    key = served.key("k", "writer", ["thingspeak-9"])
    answer = served.client.post(
        "/channels/10/bulk_update.json", json={"write_api_key": key, "updates": [{"delta_t": 0, "field1": 1}]}
    )
    assert answer.status_code == 401
    assert answer.json()["error"]["error_code"] == "error_auth_required" and answer.json()["status"] == "401"
    bad = served.client.post(
        "/channels/9/bulk_update.json", json={"write_api_key": key, "updates": [{"field1": 1}]}
    )
    assert bad.status_code == 400 and "created_at or delta_t" in bad.json()["error"]["details"]


def test_a_channel_imported_from_thingspeak_reads_back_as_thingspeak_serves_it(served: Served) -> None:
    assert served.client.post("/api/v1/ingest", json=CHANNEL_86945).json()["stored"] == 5
    feed = served.client.get("/channels/86945/feeds.json").json()
    assert {k: feed["channel"][k] for k in ("id", "name", "field1", "field2", "last_entry_id")} == {
        "id": 86945,
        "name": "py thingspeak",
        "field1": "cpu_pc",
        "field2": "mem_avail_mb",
        "last_entry_id": 3,
    }
    assert feed["feeds"] == [
        {"created_at": "2016-02-09T20:25:53Z", "entry_id": 1, "field1": "9.2", "field2": "1000"},
        {"created_at": "2016-02-09T20:30:16Z", "entry_id": 2, "field1": "25", "field2": "58.9"},
        {"created_at": "2017-02-11T19:48:30Z", "entry_id": 3, "field1": "1", "field2": None},
    ]
    assert [
        e["entry_id"] for e in served.client.get("/channels/86945/feeds.json?results=2").json()["feeds"]
    ] == [2, 3]
    one_field = served.client.get("/channels/86945/fields/2.json").json()["feeds"]
    assert one_field[0] == {"created_at": "2016-02-09T20:25:53Z", "entry_id": 1, "field2": "1000"}
    last = served.client.get("/channels/86945/feeds/last.json").json()
    assert last == {"created_at": "2017-02-11T19:48:30Z", "entry_id": 3, "field1": "1", "field2": None}
    csv_text = served.client.get("/channels/86945/feeds.csv").text
    assert csv_text.splitlines()[:2] == [
        "created_at,entry_id,field1,field2",
        "2016-02-09T20:25:53Z,1,9.2,1000",
    ]


def test_feeds_take_thingspeaks_time_bucket_and_rounding_parameters(served: Served) -> None:
    key = served.key("k", "writer", ["thingspeak-5"])
    updates = [{"created_at": f"2026-01-05T00:{m:02d}:00Z", "field1": m + 0.123} for m in range(30)]
    served.client.post("/channels/5/bulk_update.json", json={"write_api_key": key, "updates": updates})
    reader = served.key("r", "reader")
    base = f"/channels/5/feeds.json?api_key={reader}&start=2026-01-05%2000:00:00&end=2026-01-05%2000:29:00"
    assert len(served.client.get(base).json()["feeds"]) == 30
    sums = served.client.get(f"{base}&sum=10&round=1").json()["feeds"]
    assert sums == [
        {"created_at": "2026-01-05T00:00:00Z", "field1": "46.2"},
        {"created_at": "2026-01-05T00:10:00Z", "field1": "146.2"},
        {"created_at": "2026-01-05T00:20:00Z", "field1": "246.2"},
    ]
    first = served.client.get(f"{base}&timescale=15").json()["feeds"]
    assert [f["field1"] for f in first] == ["0.123", "15.123"]
    medians = served.client.get(f"{base}&median=30&round=0").json()["feeds"]
    assert medians == [{"created_at": "2026-01-05T00:00:00Z", "field1": "15"}]
    # `results` first, then the buckets: the newest 12 entries averaged per 10 minutes.
    averaged = served.client.get(f"{base}&results=12&average=10").json()["feeds"]
    assert [f["created_at"] for f in averaged] == ["2026-01-05T00:10:00Z", "2026-01-05T00:20:00Z"]
    assert served.client.get(f"{base}&average=7").status_code == 400


def test_reads_without_access_answer_minus_one(served: Served) -> None:
    served.client.post("/api/v1/ingest", json=CHANNEL_86945)
    served.key("someone", "reader")
    # Recorded: a private channel read with no key or a wrong key is HTTP 400, body -1, JSON content type.
    for url in (
        "/channels/86945/feeds.json",
        "/channels/86945/feeds.json?api_key=WRONG",
        "/channels/86945/feeds/last.json",
    ):
        answer = served.client.get(url)
        assert (answer.status_code, answer.text) == (400, "-1")
        assert answer.headers["content-type"].startswith("application/json")


def test_an_unknown_channel_is_404(served: Served) -> None:
    assert served.client.get("/channels/424242/feeds.json").status_code == 404


def test_thingspeak_writes_go_through_the_pipeline_to_the_dead_letter_queue(served: Served) -> None:
    key = served.key("k", "writer", ["thingspeak-3"])
    assert served.client.get(f"/update?api_key={key}&field1=warm").text == "0"
    (letter,) = served.client.get(
        "/api/v1/dead-letters", headers={"Authorization": f"Bearer {served.key('a', 'admin')}"}
    ).json()["items"]
    assert "field1" in letter["reason"] and orjson.loads(letter["payload"]) == {"field1": "warm"}


def test_an_update_refused_before_decoding_is_a_dead_letter_without_its_key(served: Served) -> None:
    key = served.key("k", "writer", ["thingspeak-3"])
    assert served.client.get(f"/update?api_key={key}&field9=1").text == "0"
    assert served.client.get(f"/update?api_key={key}").text == "0"
    assert (
        served.client.post("/update", data={"api_key": key, "field1": "1", "created_at": "someday"}).text
        == "0"
    )
    letters = served.client.get(
        "/api/v1/dead-letters", headers={"Authorization": f"Bearer {served.key('a', 'admin')}"}
    ).json()["items"]
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(reasons) == 3
    assert "an update needs at least one of field1..field8" in reasons
    assert "an update needs at least one of field1..field8; field9 is not a ThingSpeak field" in reasons
    assert any("created_at" in reason and "someday" in reason for reason in reasons)
    payloads = [orjson.loads(letter["payload"]) for letter in letters]
    assert {"field9": "1"} in payloads and {} in payloads
    assert all(key not in letter["payload"] for letter in letters)  # the write key is not kept
    stats = served.app.store.stats()
    assert (stats["readings"], stats["dead_letter_messages"]) == (0, 3)  # nothing lost, nothing stored
