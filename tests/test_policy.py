"""Pure scheduling policy: no event loop, no clock."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_jobs import PollPolicy, RetryPolicy, next_delay
from async_jobs._policy import parse_retry_after

positive = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
multipliers = st.floats(min_value=1.0, max_value=10.0, allow_nan=False)
attempts = st.integers(min_value=0, max_value=10_000)
rands = st.none() | st.floats(min_value=0.0, max_value=1.0)


@st.composite
def poll_policies(draw: st.DrawFn) -> PollPolicy:
    initial = draw(positive)
    maximum = draw(st.floats(min_value=initial, max_value=initial + 100.0))
    jitter = draw(st.floats(min_value=0.0, max_value=1.0))
    return PollPolicy(initial=initial, multiplier=draw(multipliers), maximum=maximum, jitter=jitter)


@st.composite
def retry_policies(draw: st.DrawFn) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=draw(st.integers(1, 20)),
        initial=draw(positive),
        multiplier=draw(multipliers),
        maximum=draw(positive),
    )


any_policy = poll_policies() | retry_policies()


@given(any_policy, attempts, rands, st.none() | st.floats(allow_nan=True, allow_infinity=True))
def test_delay_is_always_within_zero_and_cap(
    policy: PollPolicy | RetryPolicy, attempt: int, rand: float | None, hint: float | None
) -> None:
    delay = next_delay(policy, attempt, hint=hint, rand=rand)
    assert 0.0 <= delay <= policy.maximum
    assert math.isfinite(delay)


@given(any_policy, st.integers(0, 500))
def test_delays_grow_monotonically_without_jitter(
    policy: PollPolicy | RetryPolicy, attempt: int
) -> None:
    assert next_delay(policy, attempt) <= next_delay(policy, attempt + 1)


@given(any_policy, attempts, rands, st.floats(min_value=-1e6, max_value=1e6))
def test_server_hint_wins_capped(
    policy: PollPolicy | RetryPolicy, attempt: int, rand: float | None, hint: float
) -> None:
    delay = next_delay(policy, attempt, hint=hint, rand=rand)
    assert delay == min(max(hint, 0.0), policy.maximum)


@given(retry_policies(), attempts, st.floats(min_value=0.0, max_value=1.0))
def test_retry_uses_full_jitter(policy: RetryPolicy, attempt: int, rand: float) -> None:
    base = next_delay(policy, attempt)
    assert next_delay(policy, attempt, rand=rand) == pytest.approx(base * rand)


@given(poll_policies(), attempts, st.floats(min_value=0.0, max_value=1.0))
def test_poll_jitter_stays_within_its_fraction(
    policy: PollPolicy, attempt: int, rand: float
) -> None:
    base = next_delay(policy, attempt)
    delay = next_delay(policy, attempt, rand=rand)
    assert (
        base * (1 - policy.jitter) - 1e-9
        <= delay
        <= min(base * (1 + policy.jitter), policy.maximum) + 1e-9
    )


def test_defaults_match_the_design() -> None:
    poll = PollPolicy()
    assert (poll.initial, poll.multiplier, poll.maximum) == (1.0, 1.5, 15.0)
    assert RetryPolicy().max_attempts >= 4
    # The defaults as the README documents them, every field.
    assert PollPolicy() == PollPolicy(initial=1.0, multiplier=1.5, maximum=15.0, jitter=0.1)
    assert RetryPolicy() == RetryPolicy(max_attempts=4, initial=0.5, multiplier=2.0, maximum=30.0)
    assert next_delay(poll, 0) == 1.0
    assert next_delay(poll, 1) == 1.5
    assert next_delay(poll, 100) == 15.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -1.0},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"initial": 10.0, "maximum": 1.0},
        {"initial": math.nan},
        {"maximum": math.nan},
        {"maximum": math.inf},
        {"multiplier": math.nan},
        {"multiplier": math.inf},
    ],
)
def test_poll_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PollPolicy(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": 2.0},
        {"initial": math.inf},
        {"initial": -1.0},
        {"maximum": -1.0},
        {"maximum": math.nan},
        {"multiplier": math.nan},
        {"multiplier": 0.5},
    ],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("cls", [PollPolicy, RetryPolicy])
def test_policies_are_frozen_and_keyword_only(cls: type[PollPolicy | RetryPolicy]) -> None:
    with pytest.raises(TypeError):
        cls(1.0)  # type: ignore[misc]
    policy = cls()
    with pytest.raises(AttributeError):
        policy.initial = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("policy", [PollPolicy(), RetryPolicy()])
def test_rand_outside_zero_one_is_clamped(policy: PollPolicy | RetryPolicy) -> None:
    assert next_delay(policy, 0, rand=1.7) == next_delay(policy, 0, rand=1.0)
    assert next_delay(policy, 0, rand=-3.0) == next_delay(policy, 0, rand=0.0)


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("2", 2.0),
        (" 0.5 ", 0.5),
        ("-3", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Thu, 01 Jan 2026 12:00:30 GMT", 30.0),
        ("Thu, 01 Jan 2026 12:00:30 -0000", 30.0),  # no zone given: read as UTC
        ("Thu, 01 Jan 2026 13:00:30 +0100", 30.0),  # an offset is respected
        ("Wed, 31 Dec 2025 12:00:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)))
def test_parse_retry_after_http_dates(moment: datetime) -> None:
    moment = moment.replace(microsecond=0, tzinfo=timezone.utc)
    header = moment.strftime("%a, %d %b %Y %H:%M:%S GMT")
    expected = max((moment - NOW) / timedelta(seconds=1), 0.0)
    assert parse_retry_after(header, NOW) == pytest.approx(expected)


@given(st.text(max_size=60))
def test_parse_retry_after_never_raises(header: str) -> None:
    result = parse_retry_after(header, NOW)
    assert result is None or (result >= 0 and math.isfinite(result))
