"""Pure scheduling policy: how long to wait before the next poll or retry.

Nothing here awaits, sleeps or reads a clock; randomness and "now" are arguments, so every
function can be tested without an event loop.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import NamedTuple, TypeAlias

from .models._state import JobState

__all__ = [
    "DEFAULT_PENDING_POLL",
    "DEFAULT_POLL",
    "DEFAULT_RUNNING_POLL",
    "Decision",
    "Outcome",
    "PollPolicy",
    "PollSchedule",
    "PollStep",
    "RetryPolicy",
    "Stop",
    "check_schedule",
    "next_delay",
    "parse_retry_after",
    "policy_for",
]


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class PollPolicy:
    """How often to look at a job: start at ``initial`` seconds, grow by ``multiplier`` up to
    ``maximum``; each delay is spread by +/- ``jitter`` (a fraction) so many waits don't poll
    in lockstep. The interval drops back to ``initial`` when the job visibly changes.

    ``age_fraction`` makes the interval follow the job instead of the count of polls: each
    delay is at least that fraction of the time since the job last visibly changed (so with
    ``multiplier=1`` a job is looked at every ``initial`` seconds while it is young in its
    state, and a job quiet for 100 s every ``0.15 * 100`` s at 0.15), capped at ``maximum``.
    The default schedule (:data:`~async_jobs.DEFAULT_POLL`) is built on it."""

    initial: float = 1.0
    multiplier: float = 1.5
    maximum: float = 15.0
    jitter: float = 0.1
    age_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check_positive("initial", self.initial)
        _check_positive("maximum", self.maximum)
        _check_positive("multiplier", self.multiplier)
        _check_positive("age_fraction", self.age_fraction)
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")
        if self.maximum < self.initial:
            raise ValueError("maximum must be >= initial")


#: A poll schedule: one :class:`PollPolicy`, or one per :class:`~async_jobs.JobState`
#: (``{JobState.PENDING: slow, JobState.RUNNING: fast}``); a state the mapping leaves out
#: uses the next schedule down (the client's, then the default PollPolicy).
PollSchedule: TypeAlias = PollPolicy | Mapping[JobState, PollPolicy]


def check_schedule(schedule: PollSchedule | None) -> PollSchedule | None:
    """``schedule`` itself, or TypeError if it is neither a PollPolicy nor a mapping of
    JobState to PollPolicy (checked when a wait starts, not at its first poll)."""
    if schedule is None or isinstance(schedule, PollPolicy):
        return schedule
    if not isinstance(schedule, Mapping):
        raise TypeError(
            f"poll must be a PollPolicy or a {{JobState: PollPolicy}} mapping, got {schedule!r}"
        )
    for state, policy in schedule.items():
        if not isinstance(state, JobState) or not isinstance(policy, PollPolicy):
            raise TypeError(f"poll maps JobState to PollPolicy, got {state!r}: {policy!r}")
    return schedule


#: How a job in a state other than PENDING is polled by default: every 0.9 s while it is
#: young in its state (with the +/-10% spread, a finished job is seen within a second), then
#: every 15% of the time it has looked the same, at most every 15 s.
DEFAULT_RUNNING_POLL = PollPolicy(initial=0.9, multiplier=1.0, maximum=15.0, age_fraction=0.15)
#: How a queued job is polled by default: every 1.75 s, then every 30% of the time it has
#: been queued, at most every 15 s.
DEFAULT_PENDING_POLL = PollPolicy(initial=1.75, multiplier=1.0, maximum=15.0, age_fraction=0.3)

#: The schedule of a wait, a watch or a Watcher given no ``poll=`` (nor its client).
#:
#: A running job is looked at every 0.9 s while it is young in its state, then at 15% of the
#: time it has looked the same (at most every 15 s): the delay follows how long the job has
#: taken so far, the cheapest guess at how long it will still take, so a short job is seen
#: finished within about a second and a long one costs few requests (a job running for an
#: hour is looked at every 15 s). A queued job (PENDING) is looked at every 1.75 s, then at
#: 30% of its time queued: it has to start before it can succeed, and its start is a visible
#: change that brings the running pace in. Every delay is spread by +/-10%. A state the
#: mapping leaves out polls as RUNNING.
DEFAULT_POLL: Mapping[JobState, PollPolicy] = MappingProxyType(
    {
        JobState.PENDING: DEFAULT_PENDING_POLL,
        JobState.RUNNING: DEFAULT_RUNNING_POLL,
        JobState.UNKNOWN: DEFAULT_RUNNING_POLL,
    }
)


def policy_for(state: JobState | None, *schedules: PollSchedule | None) -> PollPolicy:
    """The policy of a job in ``state`` (None: not seen yet): the first of ``schedules``
    that is a PollPolicy or maps ``state``; :data:`DEFAULT_POLL`'s if none does."""
    for schedule in schedules:
        if schedule is None:
            continue
        if isinstance(schedule, PollPolicy):
            return schedule
        policy = schedule.get(state) if state is not None else None
        if policy is not None:
            return policy
    if state is None:
        return DEFAULT_RUNNING_POLL
    return DEFAULT_POLL.get(state, DEFAULT_RUNNING_POLL)


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
    age: float = 0.0,
) -> float:
    """Seconds to wait before the next poll or retry.

    ``attempt`` counts from 0 (the first delay). ``hint`` is the server's own hint in seconds
    (``Retry-After``); when given it wins over the schedule, clamped to ``[0, policy.maximum]``.
    ``age`` is how long the job has looked the same: a PollPolicy's delay is at least its
    ``age_fraction`` of it. ``rand`` in [0, 1] applies jitter (``None``: no jitter): full
    jitter for a RetryPolicy, +/- ``policy.jitter`` for a PollPolicy. The result always lies
    in ``[0, policy.maximum]``.
    """
    if hint is not None and not math.isnan(hint):
        return min(max(hint, 0.0), policy.maximum)
    base = _backoff(policy.initial, policy.multiplier, policy.maximum, attempt)
    if isinstance(policy, PollPolicy) and policy.age_fraction and age > 0:
        base = min(max(base, policy.age_fraction * age), policy.maximum)
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


class Outcome(enum.Enum):
    """What one poll (or one attempt of a request) came to."""

    CHANGED = "changed"  #: the job was seen and differs from the last look (or is the first)
    UNCHANGED = "unchanged"  #: the job was seen and looks as before
    MISSED = "missed"  #: transient trouble: the loop backs off and asks again
    FATAL = "fatal"  #: asking again cannot help: the loop ends with the error


class Stop(enum.Enum):
    """Why a poll or retry loop must end instead of sleeping again."""

    FATAL = "fatal"  #: the outcome was FATAL
    EXHAUSTED = "exhausted"  #: a RetryPolicy's ``max_attempts`` are spent
    STALLED = "stalled"  #: no success for ``stall_timeout`` seconds


class Decision(NamedTuple):
    """What a loop does after an outcome: sleep ``delay`` seconds, or end because of ``stop``."""

    delay: float
    stop: Stop | None


@dataclass(slots=True)
class PollStep:
    """The bookkeeping of one poll or retry loop, the one step every loop of the library
    drives (a wait, the Watcher's jobs and listings, the transport's retries, the durable
    worker's Redis backoff).

    Pure: ``now`` (a monotonic clock reading) and ``rand`` (in [0, 1], for jitter) are
    arguments. ``attempt`` is the position in the policy's schedule: a change resets it, so
    polling speeds up again; ``misses`` counts consecutive missed polls; ``ok_at`` is when the
    loop last succeeded (or started); ``changed_at`` when it last saw a change (or started),
    the start of the age a PollPolicy's ``age_fraction`` reads.
    """

    policy: PollPolicy | RetryPolicy
    stall_timeout: float | None = None
    ok_at: float = 0.0
    attempt: int = 0
    misses: int = 0
    changed_at: float | None = None

    def __post_init__(self) -> None:
        if self.stall_timeout is not None and not (
            isinstance(self.stall_timeout, (int, float)) and self.stall_timeout > 0
        ):
            raise ValueError(f"stall_timeout must be > 0 or None, got {self.stall_timeout!r}")
        if self.changed_at is None:
            self.changed_at = self.ok_at

    @property
    def stall_deadline(self) -> float:
        """When the loop stalls unless a poll succeeds first (``inf`` without a stall_timeout)."""
        if self.stall_timeout is None:
            return math.inf
        return self.ok_at + self.stall_timeout

    def succeeded(self, now: float) -> None:
        """A success at ``now``: the misses are cleared and the stall clock restarts."""
        self.misses = 0
        self.ok_at = now

    def record(
        self,
        outcome: Outcome,
        now: float,
        *,
        hint: float | None = None,
        rand: float | None = None,
    ) -> Decision:
        """Take ``outcome`` into account and say what comes next.

        A change resets the schedule; a success clears the misses and the stall clock; a miss
        backs off (the server's ``hint`` wins, see :func:`next_delay`), and ends the loop once
        a RetryPolicy's attempts are spent or nothing succeeded for ``stall_timeout`` seconds.
        The delay never runs past the stall deadline, so a stall is noticed when it happens.
        """
        if outcome is Outcome.FATAL:
            return Decision(0.0, Stop.FATAL)
        if outcome is Outcome.MISSED:
            self.misses += 1
            if isinstance(self.policy, RetryPolicy) and self.misses >= self.policy.max_attempts:
                return Decision(0.0, Stop.EXHAUSTED)
            stall_deadline = self.stall_deadline
            if now >= stall_deadline:
                return Decision(0.0, Stop.STALLED)
        else:
            self.succeeded(now)
            stall_deadline = self.stall_deadline  # restarted by the success
            if outcome is Outcome.CHANGED:
                self.attempt = 0
                self.changed_at = now
        age = now - self.changed_at if self.changed_at is not None else 0.0
        delay = next_delay(self.policy, self.attempt, hint=hint, rand=rand, age=age)
        self.attempt += 1
        if delay > stall_deadline - now:
            delay = max(stall_deadline - now, 0.0)
        return Decision(delay, None)
