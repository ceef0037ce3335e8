"""Where the API's blocking work runs: reads on `[api] threads` threads, writes on their own.

A read (routing, the key check, SQLAlchemy, JSON) holds the GIL for most of its time, so
more threads than the database serves at once only queue on the GIL and stretch every
answer's tail: with anyio's default of 40, 50 clients asking for a year of history saw
p99 0.5 s; with 4, 0.2 s (docs/performance.md, "API threads"). An ingest request spends
most of its time waiting for the pipeline's commit instead, so writes get a limiter of
their own: a burst of ingest never takes the threads the reads need.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar
from fastapi import FastAPI

from iotpipe import limits

T = TypeVar("T")

_write_limiter: RunVar[anyio.CapacityLimiter] = RunVar("iotpipe_write_limiter")


def lifespan(threads: int) -> Callable[[FastAPI], Any]:
    """A FastAPI lifespan that sizes the read threads of the serving event loop.

    FastAPI runs every plain `def` route on anyio's default limiter: that is the reads'."""

    @asynccontextmanager
    async def sized(_api: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    return sized


async def run_write(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` on a thread of the writes' limiter (one per event loop)."""
    try:
        limiter = _write_limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(limits.API_WRITE_THREADS)
        _write_limiter.set(limiter)
    return await anyio.to_thread.run_sync(functools.partial(func, *args), limiter=limiter)
