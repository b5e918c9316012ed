"""Helpers for tests that read a poll schedule from the fake's request log.

A poll is sent only after the delay before it has passed, so the gap between two requests
arriving at the fake is at least the delay asked for (by the policy or a Retry-After), however
busy the machine is: tests check that lower bound, never an elapsed time. That a long delay was
*not* taken is shown with :data:`CLIFF`, whose third step is far longer than :data:`SOON`.
"""

from __future__ import annotations

import itertools

import async_jobs as aj
from async_jobs.testing import FakeApiServer

from .conftest import TOKEN, eventually

#: Slack for float rounding between the fake's time.monotonic() stamps and the loop's timers.
EPSILON = 1e-3
#: A policy whose third step is far longer than any test waits: 0.002 s, 0.2 s, then 20 s.
CLIFF = aj.PollPolicy(initial=0.002, multiplier=100.0, maximum=30.0, jitter=0.0)
#: Long enough for anything that should happen soon, far shorter than the cliff.
SOON = 10.0


def single_try(server: FakeApiServer, **options: object) -> aj.ZooClient:
    """A client whose every failed request is a missed poll (no retries inside a request)."""
    return aj.ZooClient(
        token=TOKEN,
        base_url=server.url,
        retry=aj.RetryPolicy(max_attempts=1),
        timeout=5,
        **options,  # type: ignore[arg-type]
    )


def arrivals(server: FakeApiServer, path: str) -> list[float]:
    """Arrival times of the requests for exactly ``path``."""
    return [r.at for r in server.requests if r.path == path]


async def polls(server: FakeApiServer, path: str, count: int) -> list[float]:
    """Wait (at most :data:`SOON`) until ``count`` requests for ``path`` arrived; their times."""
    await eventually(lambda: len(arrivals(server, path)) >= count, timeout=SOON)
    return arrivals(server, path)


def gaps(times: list[float]) -> list[float]:
    """Seconds between consecutive times."""
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def at_least(observed: list[float], delays: list[float]) -> None:
    """Each observed gap is at least the delay the schedule asked for."""
    assert len(observed) >= len(delays), (observed, delays)
    for index, (gap, delay) in enumerate(zip(observed, delays, strict=False)):
        assert gap >= delay - EPSILON, f"gap {index}: {gap:.4f} s, the schedule says {delay} s"
