"""API keys and roles: who may read, ingest, operate and administer, and who is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from iotpipe.app.access import token_hash
from tests.api.conftest import Served

LINE = "telemetry,device_id={} t=1 1767571200000000000"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_api_is_open_on_loopback_while_no_key_exists(served: Served) -> None:
    assert served.client.get("/api/v1/devices").status_code == 200
    assert served.post_lines(LINE.format("a")).status_code == 200


def test_without_a_key_nothing_is_answered_once_a_key_exists(served: Served) -> None:
    served.key("grafana", "reader")
    refused = served.client.get("/api/v1/devices")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer KEY" in refused.json()["detail"]
    assert served.client.get("/api/v1/devices", headers=auth("iotp_made_up")).status_code == 401
    assert served.client.get("/health/live").status_code == 200  # probes need no key


def test_a_reader_reads_but_cannot_ingest_or_acknowledge(served: Served) -> None:
    reader = served.key("dashboard", "reader")
    assert served.client.get("/api/v1/devices", headers={"X-API-Key": reader}).status_code == 200
    refused = served.post_lines(LINE.format("a"), **auth(reader))
    assert refused.status_code == 403 and "may not ingest readings" in refused.json()["detail"]
    assert served.app.stats()["readings"] == 0
    assert served.client.post("/api/v1/alerts/1/ack", headers=auth(reader)).status_code == 403
    assert served.client.get("/api/v1/keys", headers=auth(reader)).status_code == 403


def test_a_writer_ingests_and_reads_but_does_not_operate(served: Served) -> None:
    writer = served.key("gateway", "writer")
    assert served.post_lines(LINE.format("a"), **auth(writer)).json()["stored"] == 1
    assert served.client.get("/api/v1/devices", headers=auth(writer)).status_code == 200
    rule = {"name": "hot", "metric": "t", "max": 5}
    assert served.client.post("/api/v1/alert-rules", json=rule, headers=auth(writer)).status_code == 403


def test_an_operator_edits_rules_and_an_admin_lists_keys(served: Served) -> None:
    operator, admin = served.key("ops", "operator"), served.key("root", "admin")
    rule = {"name": "hot", "metric": "t", "max": 5}
    assert served.client.post("/api/v1/alert-rules", json=rule, headers=auth(operator)).status_code == 201
    assert served.client.get("/api/v1/keys", headers=auth(operator)).status_code == 403
    replay = served.client.post("/api/v1/dead-letters/replay", headers=auth(operator))
    assert replay.status_code == 403
    assert (
        "may not manage API keys or replay dead letters; this needs an admin key" in replay.json()["detail"]
    )
    keys = served.client.get("/api/v1/keys", headers=auth(admin)).json()["items"]
    assert {k["name"] for k in keys} == {"ops", "root"}
    assert all("token" not in k for k in keys)


def test_a_device_scoped_key_writes_only_for_its_devices(served: Served) -> None:
    device_key = served.key("pump-7 firmware", "writer", ["pump-7"])
    assert served.post_lines(LINE.format("pump-7"), **auth(device_key)).json()["stored"] == 1
    other = served.post_lines(f"{LINE.format('pump-7')}\n{LINE.format('pump-8')}", **auth(device_key))
    assert other.status_code == 403 and "'pump-8'" in other.json()["detail"]
    assert served.app.store.raw_readings("pump-8", "t") == []
    # With one device, readings that name none are that device's.
    assert served.post_lines("telemetry u=2 1767571200000000000", **auth(device_key)).json()["stored"] == 1
    assert served.client.get("/api/v1/devices", headers=auth(device_key)).status_code == 403


def test_a_revoked_key_is_refused(served: Served) -> None:
    token = served.key("old", "reader")
    assert served.client.get("/api/v1/stats", headers=auth(token)).status_code == 200
    served.app.revoke_key("old")
    refused = served.client.get("/api/v1/stats", headers=auth(token))
    assert refused.status_code == 401 and "'old' was revoked" in refused.json()["detail"]
    from iotpipe.errors import IotpipeError

    with pytest.raises(IotpipeError, match="'old' was revoked, and names are not reused; choose another"):
        served.app.create_key("old", "reader")


def test_an_expired_key_is_refused(served: Served) -> None:
    token = served.key("brief", "reader", expires="1s")
    time.sleep(1.1)
    refused = served.client.get("/api/v1/stats", headers=auth(token))
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]


def test_keys_are_stored_hashed_and_record_their_last_use(served: Served) -> None:
    created = served.app.create_key("probe", "reader")
    token = created["token"]
    assert token.startswith("iotp_") and created["prefix"] == token[:11]
    assert served.client.get("/api/v1/stats", headers=auth(token)).status_code == 200
    (listed,) = served.app.list_keys()
    assert listed["last_used_at"] is not None and "token" not in listed
    from iotpipe.store import keys

    (row,) = keys.key_rows(served.app.store)
    assert row["token_hash"] == token_hash(token) and token not in json.dumps(row, default=str)


def test_each_key_has_its_rate_limit_with_retry_after(database_url: str, served_with) -> None:
    served = served_with(database_url, rate_limit=1.0, rate_burst=3)
    token = served.key("busy", "reader")
    codes = [served.client.get("/api/v1/stats", headers=auth(token)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = served.client.get("/api/v1/stats", headers=auth(token))
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    other = served.key("calm", "reader")
    assert served.client.get("/api/v1/stats", headers=auth(other)).status_code == 200


def test_key_management_refuses_bad_input(served: Served) -> None:
    from iotpipe.errors import IotpipeError

    with pytest.raises(IotpipeError, match="unknown role"):
        served.app.create_key("x", "superuser")
    with pytest.raises(IotpipeError, match="scopes a writer key"):
        served.app.create_key("x", "reader", ["pump-1"])
    with pytest.raises(IotpipeError, match="in the past"):
        served.app.create_key("x", "reader", expires="2001-01-01T00:00:00Z")
    served.app.create_key("x", "reader")
    with pytest.raises(IotpipeError, match="exists"):
        served.app.create_key("x", "admin")
    with pytest.raises(IotpipeError, match="no API key named"):
        served.app.revoke_key("nobody")


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotpipe", "--database-url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_cli_creates_lists_and_revokes(database_url: str) -> None:
    created = run_cli(
        database_url,
        "keys",
        "create",
        "channel-9",
        "--role",
        "writer",
        "--device",
        "thingspeak-9",
        "--expires",
        "90d",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["devices"] == ["thingspeak-9"] and key["token"].startswith("iotp_")
    listed = run_cli(database_url, "keys", "list", "--json")
    assert key["token"] not in listed.stdout
    assert json.loads(listed.stdout)[0]["status"] == "active"
    assert run_cli(database_url, "keys", "revoke", "channel-9").returncode == 0
    assert json.loads(run_cli(database_url, "keys", "list", "--json").stdout)[0]["status"] == "revoked"
    wrong = run_cli(database_url, "keys", "create", "k", "--role", "king")
    assert wrong.returncode == 2 and "unknown role 'king'" in wrong.stderr and "Traceback" not in wrong.stderr


def test_serving_beyond_loopback_without_keys_is_refused_unless_insecure(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    refused = run_cli(url, "serve", "--host", "0.0.0.0", "--port", "0", "--duration", "1")
    assert refused.returncode == 2
    assert (
        "refusing to serve the API on 0.0.0.0 without API keys" in refused.stderr
        and "--insecure" in refused.stderr
    )
    allowed = run_cli(url, "serve", "--host", "0.0.0.0", "--port", "0", "--duration", "1", "--insecure")
    assert allowed.returncode == 0, allowed.stderr
    assert "dashboard and API at http://0.0.0.0:" in allowed.stdout
    run_cli(url, "keys", "create", "admin", "--role", "admin")
    with_keys = run_cli(url, "serve", "--host", "0.0.0.0", "--port", "0", "--duration", "1")
    assert with_keys.returncode == 0, with_keys.stderr
