"""The adaptive rate limiter's arithmetic, with "now" passed in: no event loop."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_jobs._ratelimit import RateLimiter


def test_unlimited_never_waits() -> None:
    limiter = RateLimiter()
    assert all(limiter.reserve(0.0) == 0.0 for _ in range(1000))


def test_configured_rate_spaces_requests() -> None:
    limiter = RateLimiter(10.0)
    waits = [limiter.reserve(0.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_burst_lets_the_first_requests_through() -> None:
    limiter = RateLimiter(10.0, burst=3)
    limiter.reserve(-100.0)  # an old request: the bucket has refilled since
    waits = [limiter.reserve(0.0) for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] > 0


def test_429_halves_a_configured_rate_once_per_cooldown() -> None:
    limiter = RateLimiter(10.0)
    limiter.throttled(0.0, retry_after=2.0)
    assert limiter.rate == 5.0
    limiter.throttled(0.5)  # the same burst: no second halving
    assert limiter.rate == 5.0
    assert limiter.reserve(0.0) == 0.0
    assert limiter.reserve(0.0) == pytest.approx(0.2)  # 1/5 s later
    limiter.throttled(1.5)
    assert limiter.rate == pytest.approx(2.5, rel=0.1)


def test_occasional_429_leaves_an_unlimited_client_alone() -> None:
    limiter = RateLimiter()
    for i in range(100):
        limiter.reserve(i * 0.01)
        if i % 40 == 0:
            limiter.throttled(i * 0.01)
    assert limiter.rate is None
    assert limiter.throttle_count == 3


def test_unlimited_client_slows_down_under_many_429s_and_recovers() -> None:
    limiter = RateLimiter()
    for i in range(64):
        limiter.reserve(i * 0.01)  # about 100 requests per second
        if i % 4 == 0:
            limiter.throttled(i * 0.01)  # a quarter of them answered 429
    # Well below the ~100/s it offered (its rate is measured over at least a second).
    assert limiter.rate is not None and limiter.rate <= 50
    slow = limiter.rate
    limiter.reserve(1.64)
    assert limiter.rate is not None and limiter.rate > slow  # creeping back up
    for second in range(2, 200):
        limiter.reserve(float(second))
    assert limiter.rate is None  # the limit is lifted again


def test_recovery_stops_at_the_ceiling() -> None:
    limiter = RateLimiter(8.0)
    limiter.throttled(0.0)
    limiter.throttled(1.0)
    assert limiter.rate == pytest.approx(2.0, rel=0.1)
    limiter.reserve(1000.0)
    assert limiter.rate == 8.0


@given(
    st.floats(min_value=0.1, max_value=1000.0),
    st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=1, max_size=50),
    st.lists(st.booleans(), min_size=1, max_size=50),
)
def test_rate_stays_between_floor_and_ceiling(
    rate: float, gaps: list[float], throttles: list[bool]
) -> None:
    limiter = RateLimiter(rate, min_rate=0.5)
    now = 0.0
    for gap, throttle in zip(gaps, throttles, strict=False):
        now += gap
        if throttle:
            limiter.throttled(now)
        assert limiter.reserve(now) >= 0.0
        assert limiter.rate is not None
        assert min(0.5, rate) <= limiter.rate <= rate + 1e-9


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0.0)
    with pytest.raises(ValueError):
        RateLimiter(5.0, burst=0)
