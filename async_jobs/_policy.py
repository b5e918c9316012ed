"""Pure scheduling policy: how long to wait before the next poll or retry.

Nothing here awaits, sleeps or reads a clock; randomness and "now" are arguments, so every
function can be tested without an event loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

__all__ = ["PollPolicy", "RetryPolicy", "next_delay", "parse_retry_after"]


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class PollPolicy:
    """How often to look at a job: start at ``initial`` seconds, grow by ``multiplier`` up to
    ``maximum``; each delay is spread by +/- ``jitter`` (a fraction) so many waits don't poll
    in lockstep. The interval drops back to ``initial`` when the job visibly changes."""

    initial: float = 1.0
    multiplier: float = 1.5
    maximum: float = 15.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        _check_positive("initial", self.initial)
        _check_positive("maximum", self.maximum)
        _check_positive("multiplier", self.multiplier)
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        if self.maximum < self.initial:
            raise ValueError("maximum must be >= initial")


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How to retry an idempotent request after a transient failure: at most ``max_attempts``
    attempts in all, waiting a random time in [0, min(maximum, initial * multiplier**n)]
    ("full jitter") before retry n, unless the server says how long (``Retry-After``), which
    wins, capped at ``maximum``."""

    max_attempts: int = 4
    initial: float = 0.5
    multiplier: float = 2.0
    maximum: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError("max_attempts must be an int >= 1")
        _check_positive("initial", self.initial)
        _check_positive("maximum", self.maximum)
        _check_positive("multiplier", self.multiplier)
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")


def _backoff(initial: float, multiplier: float, maximum: float, attempt: int) -> float:
    try:
        base = initial * multiplier ** max(attempt, 0)
    except OverflowError:
        return maximum
    return min(base, maximum)


def next_delay(
    policy: PollPolicy | RetryPolicy,
    attempt: int,
    *,
    hint: float | None = None,
    rand: float | None = None,
) -> float:
    """Seconds to wait before the next poll or retry.

    ``attempt`` counts from 0 (the first delay). ``hint`` is the server's own hint in seconds
    (``Retry-After``); when given it wins over the schedule, clamped to ``[0, policy.maximum]``.
    ``rand`` in [0, 1] applies jitter (``None``: no jitter): full jitter for a RetryPolicy,
    +/- ``policy.jitter`` for a PollPolicy. The result always lies in ``[0, policy.maximum]``.
    """
    if hint is not None and not math.isnan(hint):
        return min(max(hint, 0.0), policy.maximum)
    base = _backoff(policy.initial, policy.multiplier, policy.maximum, attempt)
    if rand is None:
        return base
    rand = min(max(rand, 0.0), 1.0)
    if isinstance(policy, RetryPolicy):
        return base * rand
    spread = base * (1.0 + policy.jitter * (2.0 * rand - 1.0))
    return min(max(spread, 0.0), policy.maximum)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None when
    it is missing or unreadable. Negative values and dates in the past give 0."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - now).total_seconds(), 0.0)
