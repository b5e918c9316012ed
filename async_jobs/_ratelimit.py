"""A client's shared request-rate limit: a leaky bucket that halves its rate when the server
keeps answering 429 and creeps back up while requests succeed.

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
#: An unlimited client starts limiting itself once this share of recent requests got a 429.
THROTTLE_SHARE = 0.1
#: At most one halving per this many seconds: one burst of 429s is one signal.
COOLDOWN = 1.0
_WINDOW = 100
#: Requests an unlimited client must have sent before its 429s count as congestion.
MIN_SAMPLE = 10


class RateLimiter:
    """Requests per second for one client.

    ``rate=None`` means no limit until the server pushes back: once at least a tenth of the
    recent requests were answered 429, the limiter starts at half the rate it had observed
    (an occasional 429 only delays its own request's retry, by its ``Retry-After``). A
    configured ``rate`` is a ceiling, and every 429 counts. Either way the rate halves at
    most once a second (never below ``min_rate``), and every second without a halving adds
    ``recovery`` (a fraction) back, up to the ceiling or, with none, until the limit is lifted.
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
        self._last_adjust: float | None = None
        self._last_decrease = -math.inf
        self._recent: deque[float] = deque(maxlen=_WINDOW)
        self._throttles: deque[float] = deque(maxlen=_WINDOW)

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
        span = max(now - self._recent[0], 1.0)  # a burst is not a sustained rate
        return len(self._recent) / span

    def _throttled_share(self) -> float:
        if len(self._recent) < MIN_SAMPLE:
            return 0.0  # too little traffic to call it congestion
        since = self._recent[0]
        return sum(1 for at in self._throttles if at >= since) / len(self._recent)

    def reserve(self, now: float) -> float:
        """Claim the next request slot; returns how many seconds to wait before sending."""
        self._recover(now)
        start = now
        if self.rate is not None:
            interval = 1.0 / self.rate
            slot = max(self._next_slot, now - (self.burst - 1) * interval)
            self._next_slot = slot + interval
            start = max(now, slot)
        self._recent.append(start)
        return start - now

    def throttled(self, now: float, retry_after: float | None = None) -> None:
        """The server answered 429 (``retry_after`` is its hint, which the request's own
        retry honours): slow the whole client down if 429s are no longer occasional."""
        self.throttle_count += 1
        self._throttles.append(now)
        if self.ceiling is None and self._throttled_share() < THROTTLE_SHARE:
            return
        if now - self._last_decrease < COOLDOWN:
            return
        current = self.rate if self.rate is not None else self._observed_rate(now)
        floor = self.min_rate if self.ceiling is None else min(self.min_rate, self.ceiling)
        self.rate = max(floor, current / 2.0)
        self._last_adjust = self._last_decrease = now

    async def acquire(self) -> None:
        """Wait for this request's slot."""
        delay = self.reserve(anyio.current_time())
        if delay > 0:
            await anyio.sleep(delay)
