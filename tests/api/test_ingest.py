"""HTTP ingest: every core format by content type, gzip, limits, InfluxDB's write APIs."""

from __future__ import annotations

import gzip
import threading

import httpx
import orjson

from iotpipe.model import MICROS_PER_SECOND
from tests.api.conftest import Served

T0 = 1_767_571_200  # 2026-01-05T00:00:00Z


def stored(served: Served, device: str, metric: str) -> list[tuple[int, float]]:
    return served.app.store.raw_readings(device, metric)


def test_a_v1_object_is_stored_and_answered_after_commit(served: Served) -> None:
    answer = served.client.post(
        "/api/v1/ingest",
        json={"device_id": "pump-7", "timestamp": "2026-01-05T00:00:00Z", "temperature": 21.5},
    )
    assert answer.status_code == 200
    assert answer.json() == {
        "messages": 1,
        "accepted": 1,
        "rejected": 0,
        "stored": 1,
        "duplicates": 0,
        "invalid": 0,
        "rejections": [],
    }
    assert stored(served, "pump-7", "temperature") == [(T0 * MICROS_PER_SECOND, 21.5)]


def test_an_array_of_v1_and_v2_objects_reports_each_rejection(served: Served) -> None:
    body = [
        {"device_id": "a", "ts": T0, "t": 1.0},
        {
            "schema_version": 2,
            "device": {"id": "b", "type": "pump"},
            "ts": T0 * 1000,
            "readings": {"p": {"value": 3.2}},
        },
        {"temperature": 4.0},
        {"device_id": "a", "ts": T0, "t": 1.0},
    ]
    answer = served.client.post("/api/v1/ingest", json=body).json()
    assert (answer["accepted"], answer["rejected"], answer["stored"], answer["duplicates"]) == (3, 1, 2, 1)
    (rejection,) = answer["rejections"]
    assert rejection["origin"] == "POST /api/v1/ingest[2]" and "device" in rejection["reason"]
    assert served.client.get("/api/v1/dead-letters").json()["items"][0]["origin"] == "POST /api/v1/ingest[2]"


def test_sending_the_same_body_twice_stores_it_once(served: Served) -> None:
    body = {"device_id": "a", "ts": T0, "t": 1.0, "u": 2.0}
    assert served.client.post("/api/v1/ingest", json=body).json()["stored"] == 2
    again = served.client.post("/api/v1/ingest", json=body).json()
    assert (again["stored"], again["duplicates"]) == (0, 2)


def test_senml_csv_and_ndjson_by_content_type(served: Served) -> None:
    senml = [{"bn": "urn:dev:ow:10e2073a01080063:", "bt": T0, "n": "voltage", "u": "V", "v": 120.1}]
    answer = served.client.post(
        "/api/v1/ingest", content=orjson.dumps(senml), headers={"content-type": "application/senml+json"}
    )
    assert answer.json()["stored"] == 1
    csv_body = b"timestamp,device_id,temperature,humidity\n2026-01-05T00:00:00Z,c1,20.5,40\n2026-01-05T00:01:00Z,c1,20.7,41\n"
    assert (
        served.client.post("/api/v1/ingest", content=csv_body, headers={"content-type": "text/csv"}).json()[
            "stored"
        ]
        == 4
    )
    ndjson = b'{"device_id": "n1", "ts": 1767571200, "x": 1}\n{"device_id": "n1", "ts": 1767571260, "x": 2}\n'
    assert (
        served.client.post(
            "/api/v1/ingest", content=ndjson, headers={"content-type": "application/x-ndjson"}
        ).json()["stored"]
        == 2
    )
    assert [v for _, v in stored(served, "c1", "humidity")] == [40.0, 41.0]


def test_a_csv_of_one_device_takes_the_device_from_the_query(served: Served) -> None:
    body = b"time,level\n2026-01-05T00:00:00Z,3.5\n"
    answer = served.client.post(
        "/api/v1/ingest?device_id=tank-1", content=body, headers={"content-type": "text/csv"}
    )
    assert answer.json()["stored"] == 1 and stored(served, "tank-1", "level") == [
        (T0 * MICROS_PER_SECOND, 3.5)
    ]


def test_gzip_bodies_are_inflated(served: Served) -> None:
    lines = "\n".join(f"weather,device_id=w1 temperature={i} {(T0 + i) * 10**9}" for i in range(100))
    answer = served.client.post(
        "/api/v1/ingest",
        content=gzip.compress(lines.encode()),
        headers={"content-type": "text/plain", "content-encoding": "gzip"},
    )
    assert answer.json()["stored"] == 100
    broken = served.client.post(
        "/api/v1/ingest",
        content=b"not gzip",
        headers={"content-type": "text/plain", "content-encoding": "gzip"},
    )
    assert broken.status_code == 400 and "gzip" in broken.json()["detail"]


def test_an_unsupported_content_type_is_415_naming_the_accepted_ones(served: Served) -> None:
    answer = served.client.post(
        "/api/v1/ingest", content=b"<xml/>", headers={"content-type": "application/xml"}
    )
    assert answer.status_code == 415 and "text/csv" in answer.json()["detail"]


def test_a_request_whose_every_message_is_rejected_is_422_with_the_reasons(served: Served) -> None:
    answer = served.client.post("/api/v1/ingest", json={"device_id": "a"})
    assert answer.status_code == 422
    assert answer.json()["rejected"] == 1 and "no metric" in answer.json()["rejections"][0]["reason"]


def test_a_rejected_line_of_a_body_is_named_by_its_origin_alone(served: Served) -> None:
    # Each line of a body is its own message: its origin names the body's line, and its
    # reason must not contradict it with a "line 1" of its own.
    body = b"m,host=a x=1\nm x=2\nm x=3\n"
    answer = served.client.post("/api/v1/ingest", content=body, headers={"content-type": "text/plain"})
    assert answer.status_code == 200
    result = answer.json()
    assert result["messages"] == 3 and result["stored"] == 1 and result["rejected"] == 2
    reason = "no device_id or host tag, and the message names no device"
    assert result["rejections"] == [
        {"origin": "POST /api/v1/ingest:2", "reason": reason},
        {"origin": "POST /api/v1/ingest:3", "reason": reason},
    ]
    assert served.app.store.dead_letter_count() == 2
    every = served.client.post(
        "/api/v1/ingest", content=b"m x=4\nm x=5", headers={"content-type": "text/plain"}
    )
    assert every.status_code == 422
    detail = every.json()["detail"]
    assert detail.startswith("no message of the request could be stored (2 rejected; the first: ")
    assert f"POST /api/v1/ingest:1: {reason})" in detail
    assert served.app.store.dead_letter_count() == 4


def test_oversize_bodies_are_refused_while_streaming(database_url: str, served_with) -> None:
    served = served_with(database_url, max_body_bytes=4096, max_decompressed_bytes=8192)

    def chunks():  # no Content-Length: the limit must hold as the body streams in
        for _ in range(100):
            yield b"x" * 1024

    answer = served.client.post("/api/v1/ingest", content=chunks(), headers={"content-type": "text/plain"})
    assert answer.status_code == 413 and "4,096" in answer.json()["detail"]
    bomb = gzip.compress(b"a" * 1_000_000)
    inflated = served.client.post(
        "/api/v1/ingest", content=bomb, headers={"content-type": "text/plain", "content-encoding": "gzip"}
    )
    assert inflated.status_code == 413 and "inflates past" in inflated.json()["detail"]
    assert "raise [api] max_decompressed_bytes" in inflated.json()["detail"]
    assert served.app.store.dead_letter_count() == 0


def test_telegraf_line_protocol_to_api_v2_write_is_stored(served: Served) -> None:
    # What Telegraf's outputs.influxdb_v2 sends: gzip, a token, org and bucket, ns times.
    lines = (
        "cpu,cpu=cpu0,host=BER-0803 usage_guest=0,usage_idle=96.875,usage_system=3.125 1727601679000000000\n"
        "mem,host=BER-0803 used_percent=41.5,available=8589934592i 1727601679000000000\n"
    )
    answer = served.client.post(
        "/api/v2/write?org=home&bucket=telegraf&precision=ns",
        content=gzip.compress(lines.encode()),
        headers={
            "Authorization": "Token anything",
            "Content-Encoding": "gzip",
            "Content-Type": "text/plain; charset=utf-8",
        },
    )
    assert answer.status_code == 204 and answer.content == b""
    at = 1727601679 * MICROS_PER_SECOND
    assert stored(served, "BER-0803", "cpu_usage_idle{cpu=cpu0}") == [(at, 96.875)]
    assert stored(served, "BER-0803", "mem_available") == [(at, 8589934592.0)]


def test_influx_v1_write_takes_precision_and_reports_a_partial_write(served: Served) -> None:
    answer = served.client.post(
        "/write?db=telegraf&precision=s", content=b"weather,host=h1 temperature=82 1465839830"
    )
    assert answer.status_code == 204
    assert stored(served, "h1", "weather_temperature") == [(1465839830 * MICROS_PER_SECOND, 82.0)]
    partial = served.client.post("/write?db=telegraf", content=b"weather,host=h1 temperature=83\nbroken")
    assert partial.status_code == 400
    body = partial.json()
    assert body["error"].startswith("partial write: 1 of 2 lines rejected (POST /write:2: no fields")
    assert body["code"] == "invalid"
    bad = served.client.post("/write?precision=fortnights", content=b"w,host=h t=1")
    assert bad.status_code == 400 and "precision 'fortnights' is not supported" in bad.json()["detail"]
    assert served.app.store.stats()["readings"] == 2  # the two above; this request stored nothing
    assert served.client.get("/ping").headers["x-influxdb-version"]


def test_http_ingest_is_counted_in_the_metrics_by_source(served: Served) -> None:
    served.client.post("/api/v1/ingest", json=[{"device_id": "a", "ts": T0, "t": 1.0}, {"temperature": 2}])
    text = served.client.get("/metrics").text
    assert 'iotpipe_ingest_messages_total{outcome="accepted",source="http"} 1.0' in text
    assert 'iotpipe_ingest_messages_total{outcome="dead_lettered",source="http"} 1.0' in text
    assert 'iotpipe_ingest_readings_total{outcome="stored",source="http"} 1.0' in text
    assert 'iotpipe_http_requests_total{code="200",method="POST",route="/api/v1/ingest"} 1.0' in text


def test_the_server_answers_requests_that_raced_it(served: Served) -> None:
    # Several clients at once: every request is committed and answered with its own counts.
    import concurrent.futures

    def send(n: int) -> int:
        with httpx.Client(base_url=served.url) as client:
            lines = "\n".join(f"t,device_id=d{n} v={i} {(T0 + i) * 10**9}" for i in range(200))
            result: int = client.post(
                "/api/v1/ingest", content=lines, headers={"content-type": "text/plain"}
            ).json()["stored"]
            return result

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(send, range(8))) == [200] * 8
    assert served.app.stats()["readings"] == 1600


def test_concurrent_requests_each_get_their_own_counts(served: Served) -> None:
    # Requests decode while others commit; each answer must count its own readings only.
    sizes = [1, 50, 7, 300, 20, 2, 120, 9]
    answers: dict[int, dict[str, int]] = {}

    def post(n: int) -> None:
        lines = "\n".join(f"load,device_id=c{n} v={i} {(T0 + i) * 10**9}" for i in range(sizes[n]))
        with httpx.Client(base_url=served.url, timeout=30) as client:
            answers[n] = client.post(
                "/api/v1/ingest", content=lines.encode(), headers={"content-type": "text/plain"}
            ).json()

    threads = [threading.Thread(target=post, args=(n,)) for n in range(len(sizes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, size in enumerate(sizes):
        assert (answers[n]["messages"], answers[n]["stored"]) == (size, size), (n, answers[n])
        assert len(stored(served, f"c{n}", "load_v")) == size
