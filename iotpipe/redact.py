"""Secrets out of everything we print, log or store about a message: one place for it.

Three kinds of secret reach text in practice: credentials in a URL
(`postgresql://user:password@host`, `mqtt://user:password@broker`), keys and tokens in
a query string or header (`api_key=...`, `?token=...`, `Authorization: Bearer ...`),
and the values the settings hold as secrets (a ThingSpeak read key, an MQTT password),
which the App registers at start so they are masked wherever they appear. `redact()`
is applied to every log line (logs.py), every error the CLI prints and every reason a
dead letter records.
"""

from __future__ import annotations

import re
import threading

MASK = "***"

# scheme://user:password@host — keep the user, hide the password: up to the last @ before
# the host, since users paste passwords with an unencoded @ in them (p@ss@host).
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)(?P<secret>[^\s/]+?)(?P<tail>@)(?![^\s/]*@)"
)
# key=value pairs whose name says it is a secret (query strings, forms, config echoes).
_SECRET_PARAMETER = re.compile(
    r"(?P<head>\b(?:api[_-]?key|apikey|key|token|access[_-]?token|auth|password|passwd|pwd|secret|"
    r"write[_-]?key|read[_-]?key|signature|sig)=)(?P<secret>[^&\s\"',;]+)",
    re.IGNORECASE,
)
# Authorization headers and bearer tokens.
_BEARER = re.compile(
    r"(?P<head>\b(?:Bearer|Basic|Token)\s+)(?P<secret>[A-Za-z0-9._~+/=-]{6,})", re.IGNORECASE
)
_API_KEY_HEADER = re.compile(r"(?P<head>\bX-API-Key:\s*)(?P<secret>\S+)", re.IGNORECASE)

_known: set[str] = set()
_known_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask this exact value wherever it appears from now on (values under 4 characters
    are not registered: masking them would garble ordinary text)."""
    if value and len(value) >= 4:
        with _known_lock:
            _known.add(value)


def redact(text: str) -> str:
    """The text with every secret we can recognise replaced by ***."""
    if not text:
        return text
    for pattern in (_URL_PASSWORD, _SECRET_PARAMETER, _BEARER, _API_KEY_HEADER):
        text = pattern.sub(lambda m: m.group("head") + MASK + (m.groupdict().get("tail") or ""), text)
    if _known:
        with _known_lock:
            known = sorted(_known, key=len, reverse=True)
        for value in known:
            if value in text:
                text = text.replace(value, MASK)
    return text


def redact_url(url: str) -> str:
    """A URL as logs may show it: scheme, host and port only (paths can hold tokens too,
    as in most webhook URLs)."""
    match = re.match(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?:[^@/\s]*@)?(?P<host>[^/?#\s]+)", url)
    if match is None:
        return MASK
    rest = url[match.end() :]
    return f"{match['scheme']}://{match['host']}" + ("/…" if rest.strip("/") else "")
