"""Request limits: a client's request rate (a leaky bucket that halves its rate when the
server answers 429 and creeps back up to the configured rate while requests succeed) and
:class:`Slots`, the library's one bound on work in flight.

The arithmetic (:meth:`RateLimiter.reserve`, :meth:`RateLimiter.throttled`) takes "now" as an
argument and never sleeps, so it is tested without an event loop; :meth:`acquire` is the thin
async wrapper the transport awaits.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from contextvars import ContextVar
from types import TracebackType

from anyio.lowlevel import checkpoint_if_cancelled

from . import _clock

__all__ = ["REQUEST_LIMITS", "RateLimiter", "RequestLimits", "Slots"]

#: At most one halving per this many seconds: one burst of 429s is one signal.
COOLDOWN = 1.0


class RateLimiter:
    """Requests per second for one client, shared by all its calls and waits.

    ``rate=None`` (the default) sends as fast as the caller asks: a 429 then only delays the
    retry of the request that got it, by its ``Retry-After`` (and a wait backs off its polls),
    so an occasional 429 never throttles every other request. A configured ``rate`` is a
    ceiling that adapts: a 429 halves the current rate (at most once a second, never below
    ``min_rate``) and every second after it adds ``recovery`` (a fraction) back, up to the
    ceiling.
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
        self.min_rate = min(min_rate, rate) if rate is not None else min_rate
        self.recovery = recovery
        self.throttle_count = 0
        self._next_slot = -math.inf
        self._last_adjust: float | None = None
        self._last_decrease = -math.inf

    def _recover(self, now: float) -> None:
        if self.rate is None or self.ceiling is None:
            return
        last = self._last_adjust if self._last_adjust is not None else now
        self._last_adjust = now
        if self.rate < self.ceiling:
            grown = self.rate * (1.0 + self.recovery) ** max(now - last, 0.0)
            self.rate = min(grown, self.ceiling)

    def reserve(self, now: float) -> float:
        """Claim the next request slot; returns how many seconds to wait before sending."""
        self._recover(now)
        if self.rate is None:
            return 0.0
        interval = 1.0 / self.rate
        slot = max(self._next_slot, now - (self.burst - 1) * interval)
        self._next_slot = slot + interval
        return max(slot - now, 0.0)

    def throttled(self, now: float) -> None:
        """The server answered 429: halve a configured rate (once per burst of 429s)."""
        self.throttle_count += 1
        if self.rate is None or now - self._last_decrease < COOLDOWN:
            return
        self.rate = max(self.min_rate, self.rate / 2.0)
        self._last_adjust = self._last_decrease = now

    async def acquire(self) -> None:
        """Wait for this request's slot."""
        if self.rate is None:
            return  # no rate to keep: not even a clock read
        delay = self.reserve(_clock.now())
        if delay > 0:
            await _clock.sleep(delay)


class Slots:
    """At most ``total`` holders at once: ``async with slots:`` around each piece of work.

    Taking a free slot does not yield to the event loop (anyio's ``CapacityLimiter`` yields
    twice per acquire, which costs a whole loop turn per request under a concurrency cap),
    but entering is a cancellation point: a caller whose scope is cancelled raises there
    instead of starting its work. Waiters are served first come, first served; one cancelled
    while queued leaves the queue, one cancelled just after being handed a slot passes it on.
    """

    __slots__ = ("_free", "_waiters", "total")

    def __init__(self, total: int) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"total must be an int >= 1, got {total!r}")
        self.total = total
        self._free = total
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_use(self) -> int:
        """How many slots are held now."""
        return self.total - self._free

    @property
    def waiting(self) -> int:
        """How many callers are queued for a slot."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def __aenter__(self) -> None:
        await checkpoint_if_cancelled()  # a cancelled caller starts no new work
        # A release hands its slot straight to the first waiter, so a free slot means
        # nobody is queued: taking it jumps no queue.
        if self._free > 0:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot, then cancelled: the next waiter gets it
            elif waiter in self._waiters:  # a release may have dropped it already
                self._waiters.remove(waiter)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes straight to the next waiter
                return
        self._free += 1

    def __repr__(self) -> str:
        return f"Slots(total={self.total}, in_use={self.in_use}, waiting={self.waiting})"


class RequestLimits:
    """Limits a caller puts on every request sent on its behalf, on top of the client's own:
    at most ``rate`` requests per second (adaptive, as :class:`RateLimiter`) and
    ``max_concurrency`` in flight. Set :data:`REQUEST_LIMITS` in a task and every request
    that task (or a task it starts) sends honours them; a Watcher bounds its own requests
    this way without changing its clients' limits."""

    __slots__ = ("concurrency", "rate")

    def __init__(self, rate: float | None = None, max_concurrency: int | None = None) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.rate = RateLimiter(rate)
        self.concurrency = Slots(max_concurrency) if max_concurrency is not None else None


#: The caller's :class:`RequestLimits` for requests sent from the current context, if any.
REQUEST_LIMITS: ContextVar[RequestLimits | None] = ContextVar(
    "async_jobs_request_limits", default=None
)
