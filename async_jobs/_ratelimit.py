"""A client's shared request-rate limit: a leaky bucket that halves its rate on a 429 and
creeps back up while requests succeed.

The arithmetic (:meth:`RateLimiter.reserve`, :meth:`RateLimiter.throttled`) takes "now" as an
argument and never sleeps, so it is tested without an event loop; :meth:`acquire` is the thin
async wrapper the transport awaits.
"""

from __future__ import annotations

import math
from collections import deque

import anyio

__all__ = ["RateLimiter"]

#: What an unlimited client is assumed to send when it has sent too little to measure.
UNKNOWN_RATE = 10.0


class RateLimiter:
    """Requests per second for one client.

    ``rate=None`` means no limit until the server pushes back: after a 429 the limiter starts
    at half the rate it had just observed. A configured ``rate`` is a ceiling: a 429 halves
    the current rate (never below ``min_rate``), and every second without one adds
    ``recovery`` (a fraction) back, up to the ceiling (or, with no ceiling, until the limit is
    lifted again). A ``Retry-After`` pauses every request of the client until it has passed.
    """

    def __init__(
        self,
        rate: float | None = None,
        *,
        burst: int = 1,
        min_rate: float = 1.0,
        recovery: float = 0.1,
    ) -> None:
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError("rate must be a positive number of requests per second, or None")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.ceiling = rate
        self.rate = rate
        self.burst = burst
        self.min_rate = min_rate
        self.recovery = recovery
        self.throttle_count = 0
        self._next_slot = -math.inf
        self._paused_until = -math.inf
        self._last_adjust: float | None = None
        self._recent: deque[float] = deque(maxlen=64)

    def _recover(self, now: float) -> None:
        if self.rate is None:
            return
        last = self._last_adjust if self._last_adjust is not None else now
        elapsed = max(now - last, 0.0)
        self._last_adjust = now
        if self.ceiling is not None and self.rate >= self.ceiling:
            return
        grown = self.rate * (1.0 + self.recovery) ** elapsed
        if self.ceiling is not None:
            self.rate = min(grown, self.ceiling)
        elif grown > 2 * self._observed_rate(now) + 100:
            self.rate = None  # recovered well past what we actually send: lift the limit
        else:
            self.rate = grown

    def _observed_rate(self, now: float) -> float:
        if len(self._recent) < 2:
            return UNKNOWN_RATE
        span = max(now - self._recent[0], 1e-3)
        return len(self._recent) / span

    def reserve(self, now: float) -> float:
        """Claim the next request slot; returns how many seconds to wait before sending."""
        self._recover(now)
        start = max(now, self._paused_until)
        if self.rate is not None:
            interval = 1.0 / self.rate
            slot = max(self._next_slot, start - (self.burst - 1) * interval)
            self._next_slot = slot + interval
            start = max(start, slot)
        self._recent.append(start)
        return max(start - now, 0.0)

    def throttled(self, now: float, retry_after: float | None = None) -> None:
        """The server answered 429: slow down (and pause for ``retry_after`` seconds)."""
        self.throttle_count += 1
        current = self.rate if self.rate is not None else self._observed_rate(now)
        floor = self.min_rate if self.ceiling is None else min(self.min_rate, self.ceiling)
        self.rate = max(floor, current / 2.0)
        self._last_adjust = now
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + retry_after)

    async def acquire(self) -> None:
        """Wait for this request's slot."""
        delay = self.reserve(anyio.current_time())
        if delay > 0:
            await anyio.sleep(delay)
