"""Who is calling: the API key of a request, checked by the App, and its rate limit.

Keys are read from `Authorization: Bearer KEY` (also `Token KEY`, what InfluxDB v2
clients send, and the password of Basic auth, what InfluxDB v1 clients send),
`X-API-Key: KEY`, and on the routes of other APIs their own places: `api_key` (and
the THINGSPEAKAPIKEY header) on ThingSpeak's, `p` on InfluxDB v1's /write.
"""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request

from iotpipe.api.problems import ApiProblem
from iotpipe.app import App
from iotpipe.app.access import AccessDenied, Principal


def header_token(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme in ("bearer", "token") and value.strip():
            return value.strip()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            return decoded.partition(":")[2] or None
    return request.headers.get("x-api-key") or None


def authenticate(request: Request, action: str, token: str | None = None) -> Principal:
    """The caller's principal, allowed `action` and within its rate; else ApiProblem."""
    app: App = request.app.state.iotpipe
    try:
        principal = app.authenticate(token if token is not None else header_token(request))
        principal.require(action)
    except AccessDenied as exc:
        headers = {"WWW-Authenticate": 'Bearer realm="iotpipe"'} if exc.status == 401 else None
        raise ApiProblem(exc.status, str(exc), headers) from None
    check_rate(request, principal)
    return principal


def check_rate(request: Request, principal: Principal) -> None:
    caller = f"key:{principal.key_id}" if principal.key_id is not None else f"client:{_client(request)}"
    wait = request.app.state.rate_limiter.retry_after(caller)
    if wait:
        raise ApiProblem(
            429,
            f"too many requests for {principal.name!r}; retry in {wait} s (the limit is per key: "
            "[api] rate_limit and rate_burst)",
            {"Retry-After": str(wait)},
        )


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"
