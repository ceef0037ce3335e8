"""The web dashboard at `/`: static files built by `make install` into iotpipe/api/static
(our HTML, CSS and ES modules from web/, uPlot from node_modules), no CDN.

Every response of the app carries a Content-Security-Policy that allows scripts, styles
and connections from this origin only — no inline script, no eval, no plugin, no
framing — so even text a device managed to smuggle into a page could not run. The
dashboard renders device text with textContent, never as HTML; the policy is the second
line of defence.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iotpipe.api.problems import problem

STATIC = Path(str(files("iotpipe.api") / "static"))

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",  # the API and the live feed's WebSocket (same origin)
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> Response:
    page = STATIC / "index.html"
    if not page.is_file():
        return problem(
            503,
            f"the dashboard's files are not built ({STATIC} is missing): run `make install`, "
            "which runs `npm ci` and copies them there; the API works without them",
            "/",
        )
    return FileResponse(page, headers={"Cache-Control": "no-cache"})


def mount(api: FastAPI) -> None:
    """`/` and `/static/...` (the latter only when the files were built)."""
    api.include_router(router)
    if STATIC.is_dir():
        api.mount("/static", StaticFiles(directory=STATIC), name="static")


class SecurityHeaders:
    """Adds the Content-Security-Policy and its companions to every HTTP response but
    FastAPI's OpenAPI page (/docs), whose inline script the policy would stop."""

    def __init__(self, asgi: ASGIApp, exempt: tuple[str, ...] = ()) -> None:
        self.asgi = asgi
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.asgi(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() not in _OURS]
                message["headers"] = [*headers, *SECURITY_HEADERS]
            await send(message)

        await self.asgi(scope, receive, sending)


_OURS = {name for name, _ in SECURITY_HEADERS}
