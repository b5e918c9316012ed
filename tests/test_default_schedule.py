"""The default schedule (no ``poll=`` anywhere): a delay that follows how long the job has
looked the same, a slower pace for queued jobs, and a Watcher's listing that keeps its pace
while its jobs are finishing. Pure steps without an event loop, then the waits end to end."""

from __future__ import annotations

import math
from functools import partial

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import async_jobs as aj
from async_jobs._policy import (
    DEFAULT_PENDING_POLL,
    DEFAULT_RUNNING_POLL,
    Outcome,
    PollStep,
    next_delay,
    policy_for,
)
from async_jobs._watcher import DEFAULT_LISTING_POLL
from async_jobs.testing import FakeApiServer

from ._schedule import at_least, gaps, polls
from .conftest import TOKEN


def test_age_fraction_sets_a_floor_that_grows_with_the_age() -> None:
    policy = aj.PollPolicy(initial=1.0, multiplier=1.0, maximum=15.0, age_fraction=0.15)
    assert next_delay(policy, 0, age=0.0) == 1.0
    assert next_delay(policy, 5, age=5.0) == 1.0  # young: the initial interval
    assert next_delay(policy, 9, age=20.0) == pytest.approx(3.0)
    assert next_delay(policy, 40, age=1000.0) == 15.0  # capped
    assert next_delay(aj.PollPolicy(), 0, age=1000.0) == 1.0  # no age_fraction: per attempt


@given(
    age=st.floats(0, 1e6),
    attempt=st.integers(0, 100),
    fraction=st.floats(0, 10),
    rand=st.floats(0, 1) | st.none(),
)
def test_an_aged_delay_stays_within_zero_and_the_cap(
    age: float, attempt: int, fraction: float, rand: float | None
) -> None:
    policy = aj.PollPolicy(initial=0.5, multiplier=1.2, maximum=15.0, age_fraction=fraction)
    delay = next_delay(policy, attempt, age=age, rand=rand)
    assert 0.0 <= delay <= 15.0
    if rand is None:
        assert delay >= min(0.5 * 1.2**attempt, 15.0) or math.isclose(delay, 15.0)


def test_age_fraction_is_checked() -> None:
    with pytest.raises(ValueError, match="age_fraction"):
        aj.PollPolicy(age_fraction=-0.1)


def test_the_age_counts_from_the_last_change() -> None:
    step = PollStep(aj.PollPolicy(initial=1.0, multiplier=1.0, age_fraction=0.5), ok_at=0.0)
    assert step.record(Outcome.CHANGED, 0.0).delay == 1.0
    assert step.record(Outcome.UNCHANGED, 10.0).delay == 5.0  # quiet for 10 s
    assert step.record(Outcome.CHANGED, 12.0).delay == 1.0  # a change: young again
    assert step.record(Outcome.UNCHANGED, 16.0).delay == 2.0


def test_the_default_schedule_by_state() -> None:
    assert policy_for(aj.JobState.PENDING) is DEFAULT_PENDING_POLL
    assert policy_for(aj.JobState.RUNNING) is DEFAULT_RUNNING_POLL
    assert policy_for(aj.JobState.UNKNOWN) is DEFAULT_RUNNING_POLL
    assert policy_for(None) is DEFAULT_RUNNING_POLL
    assert dict(aj.DEFAULT_POLL) == {
        aj.JobState.PENDING: DEFAULT_PENDING_POLL,
        aj.JobState.RUNNING: DEFAULT_RUNNING_POLL,
        aj.JobState.UNKNOWN: DEFAULT_RUNNING_POLL,
    }
    # Any schedule given wins, for every state.
    fixed = aj.PollPolicy(initial=3.0)
    assert policy_for(aj.JobState.PENDING, None, fixed) is fixed
    # About a second while young, 15 s at most; a queued job more slowly.
    assert 0.8 <= DEFAULT_RUNNING_POLL.initial <= 1.0 < DEFAULT_PENDING_POLL.initial
    assert DEFAULT_RUNNING_POLL.maximum == DEFAULT_PENDING_POLL.maximum == 15.0
    assert next_delay(DEFAULT_RUNNING_POLL, 50, age=3600.0) == 15.0
    assert DEFAULT_LISTING_POLL.initial < DEFAULT_RUNNING_POLL.initial


@pytest.mark.anyio
async def test_a_client_without_poll_uses_the_default_schedule(server: FakeApiServer) -> None:
    assert aj.ZooClient(token="t", base_url=server.url).poll is aj.DEFAULT_POLL
    fixed = aj.PollPolicy(initial=2.0)
    assert aj.ZooClient(token="t", base_url=server.url, poll=fixed).poll is fixed


@pytest.mark.anyio
async def test_a_queued_job_is_polled_more_slowly_than_a_running_one(
    server: FakeApiServer,
) -> None:
    queued = server.zoo.add_operation(timeline=[("queued", None)])
    running = server.zoo.add_operation(timeline=[("in_progress", None)])
    zoo = aj.ZooClient(token=TOKEN, base_url=server.url)  # no poll=: the default schedule
    async with zoo, anyio.create_task_group() as tg:
        for op in (queued, running):
            tg.start_soon(partial(aj.wait_until_terminal, zoo.async_operation(op.id)))
        queued_times = await polls(server, f"/async/operations/{queued.id}", 2)
        running_times = await polls(server, f"/async/operations/{running.id}", 3)
        tg.cancel_scope.cancel()
    spread = 1 - DEFAULT_PENDING_POLL.jitter
    at_least(gaps(queued_times), [DEFAULT_PENDING_POLL.initial * spread])
    at_least(gaps(running_times), [DEFAULT_RUNNING_POLL.initial * spread] * 2)
