"""The API's threads: reads on `[api] threads` of them, ingest on a limiter of its own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import Served

LINE = "climate,device_id=d1 temperature=21.5 1700000000000000000"


def _hold(served: Served, monkeypatch: pytest.MonkeyPatch, name: str) -> tuple[threading.Event, list[int]]:
    """Make App.`name` wait for the returned event; the list counts the calls inside it."""
    release = threading.Event()
    inside = [0]
    lock = threading.Lock()
    original: Callable[..., Any] = getattr(served.app, name)

    def held(*args: Any, **kwargs: Any) -> Any:
        with lock:
            inside[0] += 1
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(served.app, name, held)
    return release, inside


def _wait_for(inside: list[int], count: int) -> None:
    for _ in range(200):
        if inside[0] >= count:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"{count} calls expected inside, {inside[0]} came")


def test_reads_run_on_at_most_the_configured_threads(
    served_with: Callable[..., Served], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = served_with(f"sqlite:///{tmp_path}/t.db", threads=2)
    assert served.post_lines(LINE).status_code == 200
    release, inside = _hold(served, monkeypatch, "latest")
    with ThreadPoolExecutor(4) as pool:
        reads = [
            pool.submit(httpx.get, f"{served.url}/api/v1/devices/d1/latest", timeout=60) for _ in range(4)
        ]
        _wait_for(inside, 2)
        threading.Event().wait(1.0)  # room for a third read to start, were it allowed to
        assert inside[0] == 2
        release.set()
        assert [r.result().status_code for r in reads] == [200] * 4
    assert inside[0] == 4


def test_reads_answer_while_more_ingest_requests_than_read_threads_wait_for_their_commit(
    served_with: Callable[..., Served], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = served_with(f"sqlite:///{tmp_path}/t.db", threads=1)
    release, inside = _hold(served, monkeypatch, "ingest_http")

    def write() -> httpx.Response:
        return httpx.post(
            f"{served.url}/api/v1/ingest",
            content=LINE.encode(),
            headers={"content-type": "text/plain"},
            timeout=60,
        )

    with ThreadPoolExecutor(3) as pool:
        writes = [pool.submit(write) for _ in range(3)]
        _wait_for(inside, 3)
        stats = served.client.get("/api/v1/stats")
        assert stats.status_code == 200, stats.text
        assert stats.json()["devices"]["total"] == 0  # nothing committed yet: the writes are held
        release.set()
        answers = [w.result() for w in writes]
    assert [a.status_code for a in answers] == [200] * 3
    assert sum(a.json()["stored"] for a in answers) == 1  # the same line thrice: stored once
    assert sum(a.json()["duplicates"] for a in answers) == 2
    assert served.app.latest("d1")["readings"][0]["value"] == 21.5
