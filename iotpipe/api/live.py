"""/api/v1/live: the live feed over a WebSocket (docs/api.md, "Live feed").

The client's first message subscribes (and carries its key when no header could: a
browser cannot set one on a WebSocket); the server answers `subscribed`, then the
`backfill` if one was asked for, then `update` frames, at most one per
`[api] live_coalesce_seconds`. The hub (sinks/live.py, through the App) decides when a
client is too slow; this module only sends, and closes with the code the hub chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from iotpipe.api.auth import authenticate, header_token
from iotpipe.api.problems import ApiProblem, outage_detail
from iotpipe.app import App, database_outages
from iotpipe.app.live import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_OVERLOAD,
    CLOSE_UNAUTHORIZED,
    LiveClient,
    SubscriptionError,
)

log = logging.getLogger(__name__)

router = APIRouter()

SUBSCRIBE_WAIT = 30.0  # seconds a client has to send its subscription
CLOSE_WAIT = 60.0  # seconds a closed client has to read what was sent before its close frame
MAX_REASON = 120  # bytes a close frame's reason may hold (the protocol's limit is 123)
CLOSE_TRY_LATER = CLOSE_OVERLOAD  # 1013, "try again later": also while the database is down
_OUTAGES = database_outages()


def _refusal_code(status: int) -> int:
    """The close code of a subscription refused with this HTTP status: a spent rate limit
    is "try again later" (1013), not a key that may never read (4403), after which a
    client would stop trying."""
    if status == 401:
        return CLOSE_UNAUTHORIZED
    return CLOSE_TRY_LATER if status == 429 else CLOSE_FORBIDDEN


@router.websocket("/api/v1/live")
async def live(websocket: WebSocket) -> None:
    app: App = websocket.app.state.iotpipe
    await websocket.accept()
    message = await _subscription_message(websocket)
    if message is None:
        return
    token = header_token(websocket) or message.get("key")  # type: ignore[arg-type]
    try:
        authenticate(websocket, "read", token if isinstance(token, str) else None)  # type: ignore[arg-type]
    except ApiProblem as problem:
        await _close(websocket, _refusal_code(problem.status), problem.detail)
        return
    except _OUTAGES as exc:  # the keys could not be read: as a 503, try again later
        await _close(websocket, CLOSE_TRY_LATER, outage_detail(websocket, exc))
        return
    loop = asyncio.get_running_loop()
    news = asyncio.Event()
    closed = asyncio.Event()
    holder: list[LiveClient] = []

    def woken() -> None:
        news.set()
        if holder and holder[0].closed is not None:
            closed.set()

    def wake() -> None:  # called from the hub's thread
        loop.call_soon_threadsafe(woken)

    try:
        client = await run_in_threadpool(app.live_subscribe, message, wake)
    except SubscriptionError as exc:
        await _close(websocket, CLOSE_BAD_REQUEST, str(exc))
        return
    except _OUTAGES as exc:
        await _close(websocket, CLOSE_TRY_LATER, outage_detail(websocket, exc))
        return
    holder.append(client)
    try:
        await _serve(app, websocket, client, news, closed)
    finally:
        app.live_unsubscribe(client)


async def _subscription_message(websocket: WebSocket) -> dict[str, Any] | None:
    """The client's first message, a JSON object of type `subscribe`; else close it."""
    try:
        text = await asyncio.wait_for(websocket.receive_text(), SUBSCRIBE_WAIT)
    except TimeoutError:
        await _close(websocket, CLOSE_BAD_REQUEST, f"no subscription within {SUBSCRIBE_WAIT:g} s")
        return None
    except (WebSocketDisconnect, KeyError, RuntimeError):
        return None  # gone, or sent bytes: nothing to answer
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        await _close(
            websocket, CLOSE_BAD_REQUEST, 'the first message must be JSON: {"type": "subscribe", ...}'
        )
        return None
    if not isinstance(message, dict) or message.get("type") != "subscribe":
        await _close(websocket, CLOSE_BAD_REQUEST, 'the first message must be {"type": "subscribe", ...}')
        return None
    return message


async def _serve(
    app: App, websocket: WebSocket, client: LiveClient, news: asyncio.Event, closed: asyncio.Event
) -> None:
    config = app.settings.api
    await websocket.send_text(
        orjson.dumps(
            {
                "type": "subscribed",
                "subscription": client.subscription.describe(),
                "coalesce_ms": round(config.live_coalesce_seconds * 1000),
                "max_pending": config.live_max_pending,
            }
        ).decode()
    )
    if client.holding:
        frame = await run_in_threadpool(app.live_backfill, client)
        await websocket.send_text(orjson.dumps(frame).decode())
    sender = asyncio.create_task(_send_updates(websocket, client, news, config.live_coalesce_seconds))
    receiver = asyncio.create_task(_receive_until_gone(websocket))
    watcher = asyncio.create_task(closed.wait())
    done, _ = await asyncio.wait({sender, receiver, watcher}, return_when=asyncio.FIRST_COMPLETED)
    for task in (sender, receiver, watcher):
        task.cancel()
    for task in (sender, receiver, watcher):
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await task
    if client.closed is not None:
        await _close(websocket, client.closed.code, client.closed.reason, CLOSE_WAIT)
    elif receiver in done:
        return  # the client left
    else:
        exc = sender.exception() if sender.done() and not sender.cancelled() else None
        if exc is not None:
            log.warning("live feed: sending failed: %s", exc)


async def _send_updates(
    websocket: WebSocket, client: LiveClient, news: asyncio.Event, coalesce: float
) -> None:
    while True:
        await news.wait()
        news.clear()
        frame = client.take()
        if frame is None:
            continue
        # Serialised here, in the event loop: a frame is at most max_pending updates.
        await websocket.send_text(orjson.dumps(frame).decode())
        if coalesce:
            await asyncio.sleep(coalesce)  # what arrives meanwhile goes into the next frame


async def _receive_until_gone(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends until it disconnects."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _close(websocket: WebSocket, code: int, reason: str, wait: float = 5.0) -> None:
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    encoded = reason.encode()[:MAX_REASON].decode(errors="ignore")
    # The close frame waits behind what was sent and not yet read: give the client `wait`
    # seconds to read it all, then let the connection go.
    with contextlib.suppress(TimeoutError, WebSocketDisconnect, RuntimeError):
        await asyncio.wait_for(websocket.close(code, encoded), wait)
