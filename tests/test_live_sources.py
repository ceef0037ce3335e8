"""The live feed's event sources over a real store (both engines): device statuses that
change with time, judged as the fleet view judges them; a new device is news too."""

from __future__ import annotations

import orjson
import pytest

from iotpipe.app import App, live
from iotpipe.config import AnalyticsSettings, Settings
from iotpipe.model import MICROS_PER_SECOND, RawMessage, now_micros


def test_status_source_reports_new_devices_and_devices_going_offline(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    analytics = AnalyticsSettings(offline_min_seconds=60)  # type: ignore[call-arg]
    app = App(Settings(database_url=database_url, analytics=analytics))  # type: ignore[call-arg]
    try:
        now = now_micros()
        pipeline = app.pipeline()

        def report(device_id: str) -> None:
            body = {"device_id": device_id, "timestamp": now // 1000, "temperature": 20.0}
            pipeline.feed(RawMessage(orjson.dumps(body), "mqtt", f"telemetry/{device_id}", now))
            pipeline.flush()

        report("pump-1")
        source = live.StatusSource(app.store, app.settings, every=0)
        assert source.poll() == []  # the first poll only learns the fleet
        report("pump-2")
        (new,) = source.poll()
        assert (new.device_id, new.body["status"], new.body["previous"]) == ("pump-2", "online", None)
        assert source.poll() == []  # nothing changed
        monkeypatch.setattr(live, "now_micros", lambda: now + 61 * MICROS_PER_SECOND)
        changes = {event.device_id: (event.body["previous"], event.body["status"]) for event in source.poll()}
        assert changes == {"pump-1": ("online", "offline"), "pump-2": ("online", "offline")}
        pipeline.close()
    finally:
        app.close()
