"""A real Prometheus scrapes /metrics and finds the values the test caused."""

from __future__ import annotations

import time

from tests.api.conftest import Served
from tests.servers import PrometheusServer

T0 = 1_767_571_200


def wait_for(prometheus: PrometheusServer, expression: str, timeout: float = 30.0) -> float:
    """The value of a one-sample expression once Prometheus has scraped it."""
    deadline = time.monotonic() + timeout
    while True:
        result = prometheus.query(expression)
        if result:
            return float(result[0]["value"][1])  # type: ignore[index]
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus found no {expression} within {timeout} s")
        time.sleep(0.5)


def test_prometheus_scrapes_what_the_pipeline_and_the_api_did(served: Served) -> None:
    lines = "\n".join(f"telemetry,device_id=m{n % 3} v={n} {(T0 + n) * 10**9}" for n in range(30))
    assert served.post_lines(lines + "\nbroken line").status_code == 200
    assert served.client.get("/api/v1/devices/m9").status_code == 404
    target = served.url.removeprefix("http://")
    with PrometheusServer([target]) as prometheus:
        stored = wait_for(prometheus, 'iotpipe_ingest_readings_total{source="http",outcome="stored"}')
        dead = wait_for(prometheus, 'iotpipe_ingest_messages_total{source="http",outcome="dead_lettered"}')
        accepted = wait_for(prometheus, 'iotpipe_ingest_messages_total{source="http",outcome="accepted"}')
        not_found = wait_for(
            prometheus,
            'iotpipe_http_requests_total{route="/api/v1/devices/{device_id}",method="GET",code="404"}',
        )
        batches = wait_for(prometheus, "iotpipe_batch_write_seconds_count")
        offline = wait_for(prometheus, 'iotpipe_devices{status="offline"}')
        dirty = wait_for(prometheus, "iotpipe_rollup_dirty_buckets")
    assert (stored, accepted, dead, not_found) == (30.0, 30.0, 1.0, 1.0)
    assert batches >= 1 and offline == 3.0 and dirty == 3.0  # three devices, one hour each
