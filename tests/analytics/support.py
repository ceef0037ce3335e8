"""Builders for analytics tests: readings written straight through the store."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from sqlalchemy import insert

from iotpipe.model import Micros, WriteBatch
from iotpipe.store import Store
from iotpipe.store.schema import anomalies


def write_readings(store: Store, readings: Iterable[tuple[str, str, Micros, float]]) -> None:
    """Commit (device_id, metric, time, value) readings as one batch, as the pipeline would."""
    batch = WriteBatch()
    for device_id, metric, t, v in readings:
        batch.groups.append((device_id, [(metric, t, v)]))
        batch.reading_count += 1
    store.write(batch)


def insert_anomaly(
    store: Store,
    series_id: int,
    time: Micros,
    value: float,
    method: str = "streaming",
    end_time: Micros | None = None,
    score: float = 9.0,
) -> int:
    """An anomaly row as the detectors store it."""
    with store.engine.begin() as conn:
        result = conn.execute(
            insert(anomalies).values(
                series_id=series_id,
                time=time,
                end_time=end_time,
                value=value,
                score=score,
                method=method,
                detected_at=time,
            )
        )
        return int(result.inserted_primary_key[0])


class WebhookReceiver:
    """A local HTTP server that records every JSON POST; it can refuse the first N."""

    def __init__(self, refuse_first: int = 0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self
        self.received: list[dict[str, object]] = []
        self.ids: list[str] = []
        self.refusals_left = refuse_first

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.refusals_left > 0:
                    receiver.refusals_left -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.received.append(orjson.loads(body))
                receiver.ids.append(self.headers["X-Iotpipe-Notification"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self) -> list[tuple[str, str]]:
        """(event, rule) of each notification received, in order."""
        return [(str(n["event"]), str(n["alert"]["rule"])) for n in self.received]  # type: ignore[index]

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
