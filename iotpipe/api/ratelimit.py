"""Per-key request rate limits: a token bucket per key (per client address when open)."""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    """`rate` requests per second sustained, `burst` back to back, per caller."""

    def __init__(self, rate: float, burst: int, max_callers: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_callers = max_callers
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last refill)
        self._lock = threading.Lock()

    def retry_after(self, caller: str) -> int:
        """0 if the caller may go on (one token taken), else whole seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(caller, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._remember(caller, tokens - 1.0, now)
                return 0
            self._remember(caller, tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _remember(self, caller: str, tokens: float, now: float) -> None:
        if caller not in self._buckets and len(self._buckets) >= self.max_callers:
            self._buckets.clear()  # bounded memory: forgetting callers only gives them a full bucket
        self._buckets[caller] = (tokens, now)
