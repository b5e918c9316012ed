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
    limiter.throttled(0.0)
    assert limiter.rate == 5.0
    limiter.throttled(0.5)  # the same burst: no second halving
    assert limiter.rate == 5.0
    assert limiter.reserve(0.5) == 0.0
    assert 0.15 < limiter.reserve(0.5) <= 0.2  # about 1/5 s later (it recovers a little)
    limiter.throttled(1.5)
    assert limiter.rate == pytest.approx(2.5, rel=0.1)


def test_429s_never_throttle_an_unlimited_client() -> None:
    limiter = RateLimiter()
    for i in range(1000):
        assert limiter.reserve(i * 0.001) == 0.0
        limiter.throttled(i * 0.001)
    assert limiter.rate is None
    assert limiter.throttle_count == 1000


def test_recovery_climbs_back_to_the_ceiling() -> None:
    limiter = RateLimiter(8.0)
    limiter.throttled(0.0)
    limiter.throttled(1.0)
    assert limiter.rate == pytest.approx(2.0, rel=0.1)
    limiter.reserve(5.0)
    assert limiter.rate is not None and 2.0 < limiter.rate < 8.0
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
