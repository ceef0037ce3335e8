"""/health/live, /health/ready and /metrics (Prometheus text format); no key needed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from iotpipe.api import models
from iotpipe.api.problems import Json
from iotpipe.app import App

router = APIRouter(tags=["health"])
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/health/live")
def live() -> Any:
    """The process answers."""
    return Json({"live": True})


@router.get("/health/ready", response_model=models.Ready, responses={503: {"model": models.Ready}})
def ready(request: Request) -> Any:
    """The database answers, its schema is current, a configured MQTT broker is connected."""
    app: App = request.app.state.iotpipe
    state = app.readiness()
    return Json(state, status_code=200 if state["ready"] else 503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """This process's metrics in Prometheus' text format."""
    app: App = request.app.state.iotpipe
    return Response(app.metrics_exposition(), media_type=PROMETHEUS)
