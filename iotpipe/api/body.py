"""Request bodies read as they stream in, within the size limits, gzip inflated.

Memory stays bounded whatever a client sends: a body is refused (413) as soon as it
passes `max_body_bytes`, and a gzip body as soon as it inflates past
`max_decompressed_bytes` — before the rest is read or inflated.
"""

from __future__ import annotations

import zlib

from starlette.requests import Request

from iotpipe.api.problems import ApiProblem


async def read_body(request: Request, max_bytes: int, max_inflated: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(f"the body is {int(declared):,} bytes, over the limit of {max_bytes:,}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise ApiProblem(415, f"content encoding {encoding!r} is not accepted; send gzip or none")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    received = 0
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(f"the body passed the limit of {max_bytes:,} bytes")
        if inflater is None:
            parts.append(chunk)
            continue
        size = _inflate(inflater, chunk, parts, size, max_inflated)
    if inflater is not None:
        if not inflater.eof:
            raise ApiProblem(400, "the gzip body is truncated; send the whole stream")
        try:
            tail = inflater.flush()
        except zlib.error as exc:
            raise ApiProblem(400, f"the body is not valid gzip ({exc})") from None
        if size + len(tail) > max_inflated:
            raise _too_large(f"the gzip body inflates past the limit of {max_inflated:,} bytes", INFLATED)
        parts.append(tail)
    return b"".join(parts)


def _inflate(inflater: zlib._Decompress, chunk: bytes, parts: list[bytes], size: int, limit: int) -> int:
    data = chunk
    while data:
        try:
            out = inflater.decompress(data, limit - size + 1)
        except zlib.error as exc:
            raise ApiProblem(400, f"the body is not valid gzip ({exc})") from None
        size += len(out)
        if size > limit:
            raise _too_large(f"the gzip body inflates past the limit of {limit:,} bytes", INFLATED)
        parts.append(out)
        data = inflater.unconsumed_tail
        if inflater.eof:
            break
    return size


INFLATED = "max_decompressed_bytes"


def _too_large(detail: str, setting: str = "max_body_bytes") -> ApiProblem:
    return ApiProblem(413, f"{detail}; send smaller requests (or raise [api] {setting})")
