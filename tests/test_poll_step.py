"""The one poll step (``PollStep``): pure, no event loop, no clock; ``now`` is an argument.

Every loop of the library drives this step, so these properties hold for a wait, the Watcher's
jobs and listings, the transport's retries and the durable worker's Redis backoff alike.
"""

from __future__ import annotations

import math
import pathlib
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_jobs import PollPolicy, RetryPolicy, next_delay
from async_jobs._policy import Decision, Outcome, PollStep, Stop

POLL = PollPolicy(initial=1.0, multiplier=2.0, maximum=60.0, jitter=0.0)
outcomes = st.sampled_from([Outcome.CHANGED, Outcome.UNCHANGED, Outcome.MISSED])
hints = st.none() | st.floats(min_value=0.0, max_value=1000.0)
gaps = st.floats(min_value=0.0, max_value=100.0)


def test_unchanged_polls_back_off_and_a_change_resets() -> None:
    step = PollStep(POLL)
    delays = [step.record(Outcome.UNCHANGED, float(t)).delay for t in range(4)]
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert step.record(Outcome.CHANGED, 5.0) == Decision(1.0, None)
    assert step.record(Outcome.UNCHANGED, 6.0).delay == 2.0


def test_misses_back_off_count_and_clear_on_success() -> None:
    step = PollStep(POLL)
    assert [step.record(Outcome.MISSED, 0.0).delay for _ in range(3)] == [1.0, 2.0, 4.0]
    assert step.misses == 3
    step.record(Outcome.UNCHANGED, 1.0)
    assert step.misses == 0


def test_the_server_hint_wins_over_the_schedule() -> None:
    step = PollStep(POLL)
    assert step.record(Outcome.MISSED, 0.0, hint=30.0).delay == 30.0
    assert step.record(Outcome.MISSED, 0.0, hint=1e9).delay == POLL.maximum


def test_fatal_stops_at_once() -> None:
    assert PollStep(POLL).record(Outcome.FATAL, 0.0) == Decision(0.0, Stop.FATAL)


def test_a_retry_policy_is_exhausted_after_max_attempts() -> None:
    """As the transport uses it: max_attempts=4 means three retries, then give up; the
    delays are the policy's 0, 1, 2 (full jitter off: rand None)."""
    step = PollStep(RetryPolicy(max_attempts=4, initial=0.5, multiplier=2.0, maximum=30.0))
    decisions = [step.record(Outcome.MISSED, 0.0) for _ in range(4)]
    assert [d.delay for d in decisions[:3]] == [0.5, 1.0, 2.0]
    assert [d.stop for d in decisions] == [None, None, None, Stop.EXHAUSTED]


def test_a_single_attempt_policy_never_retries() -> None:
    assert PollStep(RetryPolicy(max_attempts=1)).record(Outcome.MISSED, 0.0).stop is (
        Stop.EXHAUSTED
    )


def test_stall_after_stall_timeout_without_success() -> None:
    step = PollStep(POLL, stall_timeout=10.0, ok_at=100.0)
    assert step.record(Outcome.MISSED, 105.0).stop is None
    assert step.record(Outcome.MISSED, 110.0).stop is Stop.STALLED


def test_a_success_restarts_the_stall_clock() -> None:
    step = PollStep(POLL, stall_timeout=10.0, ok_at=0.0)
    step.record(Outcome.MISSED, 9.0)
    step.record(Outcome.UNCHANGED, 9.5)
    assert step.stall_deadline == 19.5
    assert step.record(Outcome.MISSED, 18.0).stop is None


def test_the_delay_is_cut_at_the_stall_deadline() -> None:
    """So a stall is noticed when it happens, not a long backoff later."""
    step = PollStep(POLL, stall_timeout=10.0, ok_at=0.0)
    step.attempt = 5  # the schedule says 32 s
    assert step.record(Outcome.MISSED, 7.0).delay == pytest.approx(3.0)


def test_no_stall_timeout_means_no_stall() -> None:
    step = PollStep(POLL)
    assert math.isinf(step.stall_deadline)
    assert all(step.record(Outcome.MISSED, 1e9).stop is None for _ in range(100))


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, "10"])
def test_stall_timeout_must_be_positive(bad: object) -> None:
    with pytest.raises(ValueError, match="stall_timeout"):
        PollStep(POLL, stall_timeout=bad)  # type: ignore[arg-type]


@given(st.lists(st.tuples(outcomes, hints, gaps), max_size=60), st.floats(0.1, 1000.0))
def test_any_run_of_outcomes_obeys_the_step_rules(
    run: list[tuple[Outcome, float | None, float]], stall_timeout: float
) -> None:
    """Whatever happens: delays lie in [0, maximum] and never past the stall deadline; a stop
    is a stall only once the deadline has passed; misses count the trailing misses; the
    schedule position after a change is 1; delays follow next_delay at the pre-record
    position, unless a hint or the stall deadline cut them."""
    step = PollStep(POLL, stall_timeout=stall_timeout, ok_at=0.0)
    now = 0.0
    trailing = 0
    for outcome, hint, gap in run:
        now += gap
        position = 0 if outcome is Outcome.CHANGED else step.attempt
        deadline = step.stall_deadline
        hint = hint if outcome is Outcome.MISSED else None  # only a failure carries one
        decision = step.record(outcome, now, hint=hint)
        if decision.stop is not None:
            assert decision.stop is Stop.STALLED and outcome is Outcome.MISSED
            assert now >= deadline
            return
        trailing = trailing + 1 if outcome is Outcome.MISSED else 0
        assert step.misses == trailing
        assert 0.0 <= decision.delay <= POLL.maximum
        assert now + decision.delay <= step.stall_deadline + 1e-9
        expected = next_delay(POLL, position, hint=hint)
        assert decision.delay == pytest.approx(min(expected, step.stall_deadline - now))
        if outcome is not Outcome.MISSED:
            assert step.ok_at == now
        if outcome is Outcome.CHANGED:
            assert step.attempt == 1


def test_the_missed_poll_line_is_written_once() -> None:
    """One poll step: its log line exists in one place of the library."""
    root = pathlib.Path(__file__).resolve().parent.parent / "async_jobs"
    found = subprocess.run(
        ["grep", "-rn", "missed a poll", str(root), "--include=*.py"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    assert len(found) == 1, found
