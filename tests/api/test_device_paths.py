"""Device ids and metric names are the devices' own text: one holding "/" (or named like a
route, "latest") still reaches its device, its latest readings and each series."""

from __future__ import annotations

from urllib.parse import quote

from tests.api.conftest import Served

DEVICE = "<script>window.pwned=1</script>"


def path(*parts: str) -> str:
    return "/api/v1/devices/" + "/".join(quote(p, safe="") for p in parts)


def test_ids_and_metrics_with_slashes_reach_every_device_route(served: Served) -> None:
    body = {"device_id": DEVICE, "a/b": 1.0, "latest": 2.0}
    assert served.client.post("/api/v1/ingest", json=body).status_code == 200
    assert served.client.get(path(DEVICE)).json()["device_id"] == DEVICE
    latest = served.client.get(path(DEVICE, "latest")).json()
    assert {r["metric"]: r["value"] for r in latest["readings"]} == {"a/b": 1.0, "latest": 2.0}
    for metric, value in (("a/b", 1.0), ("latest", 2.0)):
        answer = served.client.get(path(DEVICE, "series", metric), params={"bucket": "raw"}).json()
        assert (answer["device_id"], answer["metric"], answer["values"]) == (DEVICE, metric, [value])
    trends = served.client.get(path(DEVICE, "trends"), params={"metric": "a/b"})
    assert trends.status_code == 200
