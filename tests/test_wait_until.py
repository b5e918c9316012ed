"""wait_until, per-state poll schedules, the last look at the deadline, cancel_on_timeout."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest

import async_jobs as aj
from async_jobs._poll import Poller
from async_jobs.testing import FakeApiServer

from ._schedule import SOON, arrivals, at_least, gaps, polls
from .conftest import FAST_POLL, TOKEN, eventually

pytestmark = pytest.mark.anyio

HOUR = 3600.0
#: A conversion that reaches ``salon`` and then either completes or fails, one hour a step.
PHASES = [("queued", HOUR), ("convert_raw_kcl", HOUR), ("salon", HOUR)]


def _advance(server: FakeApiServer) -> Any:
    """An on_update that moves the fake clock to the job's next step once it has been seen."""
    return lambda _job: server.clock.advance(HOUR)


async def test_wait_until_a_phase_returns_before_the_job_is_terminal(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(dataset, [*PHASES, ("completed", None)])
    ref = zoo.dataset_conversion(dataset, fake.id)
    seen: list[str | None] = []
    ended: list[str] = []

    def record(conversion: aj.DatasetConversion) -> None:
        seen.append(conversion.phase)
        server.clock.advance(HOUR)

    def listener(event: aj.events.Event) -> None:
        if isinstance(event, aj.events.WaitDone):
            ended.append(event.outcome)

    remove = aj.add_listener(listener)
    try:
        reached = await aj.wait_until(
            ref, lambda conversion: conversion.phase == "salon", timeout=SOON, on_update=record
        )
    finally:
        remove()
    assert reached.phase == "salon"
    assert not reached.is_terminal
    assert seen == ["queued", "convert_raw_kcl", "salon"]
    assert ended == ["met"]


async def test_wait_until_raises_condition_not_met_when_the_job_ends_elsewhere(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(
        dataset, [*PHASES, ("error_salon", None)], error="mesh broken"
    )
    ref = zoo.dataset_conversion(dataset, fake.id)
    with pytest.raises(aj.ConditionNotMet) as caught:
        await aj.wait_until(
            ref,
            lambda conversion: conversion.phase == "completed",
            timeout=SOON,
            on_update=_advance(server),
        )
    assert caught.value.job.is_terminal
    assert caught.value.job.job_state is aj.JobState.FAILED
    assert "without meeting the condition" in str(caught.value)
    assert isinstance(caught.value, aj.AsyncJobsError)


async def test_wait_until_a_terminal_job_that_meets_the_condition_returns_it(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    done = await aj.wait_until(
        zoo.async_operation(fake.id), lambda op: op.is_terminal, timeout=SOON
    )
    assert done.status == "completed"


async def test_wait_until_times_out_with_the_last_job(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    with pytest.raises(aj.WaitTimeout) as caught:
        await aj.wait_until(zoo.async_operation(fake.id), lambda op: False, timeout=0.05)
    assert caught.value.last is not None and caught.value.last.status == "in_progress"
    assert "did not meet the condition" in str(caught.value)


async def test_the_schedule_follows_the_jobs_state(server: FakeApiServer) -> None:
    """Slow while PENDING (every gap at least 0.2 s), fast while RUNNING: 40 polls of a running
    job well within the time the pending schedule would need for them (40 x 0.2 s)."""
    fake = server.zoo.add_operation(timeline=[("queued", HOUR), ("in_progress", None)])
    path = f"/async/operations/{fake.id}"
    slow = aj.PollPolicy(initial=0.2, multiplier=1.0, maximum=0.2, jitter=0.0)
    fast = aj.PollPolicy(initial=0.001, multiplier=1.0, maximum=0.001, jitter=0.0)
    schedule = {aj.JobState.PENDING: slow, aj.JobState.RUNNING: fast}
    async with aj.ZooClient(token=TOKEN, base_url=server.url) as zoo:
        ref = zoo.async_operation(fake.id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: aj.wait_until_terminal(ref, poll=schedule))
            pending = await polls(server, path, 3)
            at_least(gaps(pending[:3]), [0.2, 0.2])
            server.clock.advance(HOUR)
            await eventually(lambda: len(arrivals(server, path)) >= 3 + 40, timeout=4.0)
            tg.cancel_scope.cancel()


async def test_a_state_the_mapping_leaves_out_uses_the_clients_schedule(
    server: FakeApiServer,
) -> None:
    """RUNNING is not in the wait's mapping: the client's own (fast) policy paces it."""
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    path = f"/async/operations/{fake.id}"
    slow = aj.PollPolicy(initial=30.0, multiplier=1.0, maximum=30.0, jitter=0.0)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, poll=FAST_POLL) as zoo:
        ref = zoo.async_operation(fake.id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: aj.wait_until_terminal(ref, poll={aj.JobState.PENDING: slow}))
            await polls(server, path, 8)  # the default PollPolicy would take 20 s for these
            tg.cancel_scope.cancel()


def test_a_poll_mapping_of_the_wrong_types_is_refused_up_front() -> None:
    with pytest.raises(TypeError, match="JobState"):
        aj.Watcher(poll={"running": aj.PollPolicy()})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="PollPolicy"):
        aj.ZooClient(token="t", poll=[aj.PollPolicy()])  # type: ignore[arg-type]


async def test_the_last_poll_lands_just_before_the_deadline(server: FakeApiServer) -> None:
    """Polls every second and a 1.5 s timeout: without trimming, the last look would be at
    1 s and the wait would sleep past its deadline; with it, a third look lands in the last
    0.3 s before the deadline (arrival times are never earlier than the sleeps asked for)."""
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    path = f"/async/operations/{fake.id}"
    every_second = aj.PollPolicy(initial=1.0, multiplier=1.0, maximum=1.0, jitter=0.0)
    timeout = 1.5
    async with aj.ZooClient(token=TOKEN, base_url=server.url) as zoo:
        started = time.monotonic()
        with pytest.raises(aj.WaitTimeout):
            await aj.wait_until_terminal(
                zoo.async_operation(fake.id), timeout=timeout, poll=every_second
            )
    times = arrivals(server, path)
    assert len(times) == 3, [t - started for t in times]
    assert times[-1] >= started + timeout - 0.3, [t - started for t in times]


async def test_a_deadline_moved_during_the_wait_is_read_again_before_the_last_look() -> None:
    """The enclosing deadline is read at the first sleep and again once a sleep would end
    within a second of it: moved later, the last look goes with it; never before it."""
    poller: Poller[Any] = Poller("k", None)
    with anyio.move_on_after(100.0) as scope:  # noqa: ASYNC100 (only its deadline is read)
        assert poller.until_deadline(1.0) == 1.0  # read: 100 s away
        scope.deadline += 50.0
        assert poller.until_deadline(1.0) == 1.0
        # Would end within a second of the deadline read first: read again, 150 s away.
        assert poller.until_deadline(99.5) == 99.5
        trimmed = poller.until_deadline(1000.0)
        assert 100.0 < trimmed < scope.deadline - anyio.current_time()
        assert poller.until_deadline(1000.0) == 1000.0  # trimmed once only
    outside: Poller[Any] = Poller("k", None)
    assert outside.until_deadline(1000.0) == 1000.0  # no deadline at all


class _CancelLog:
    """A remote cancel that takes a while (so shielding shows) and records each call."""

    def __init__(self) -> None:
        self.calls = 0
        self.finished = 0

    async def __call__(self) -> None:
        self.calls += 1
        await anyio.sleep(0.05)
        self.finished += 1


def _cancellable(zoo: aj.ZooClient, op_id: str, cancel: Any) -> aj.JobRef[aj.AsyncOperation]:
    ref = zoo.async_operation(op_id)
    return aj.JobRef(ref.kind, ref.ids, ref.fetch, poll=ref.poll, cancel=cancel)


async def test_cancel_on_timeout_cancels_a_cancellable_job_once(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    cancel = _CancelLog()
    ref = _cancellable(zoo, fake.id, cancel)
    assert ref.can_cancel
    with pytest.raises(aj.WaitTimeout):
        await aj.wait_until_terminal(ref, timeout=0.05, cancel_on_timeout=True)
    assert (cancel.calls, cancel.finished) == (1, 1)
    with pytest.raises(aj.WaitTimeout):
        await aj.wait_until_terminal(ref, timeout=0.05)  # not asked: left alone
    assert cancel.calls == 1


async def test_cancel_on_timeout_also_runs_when_the_caller_is_cancelled(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    """The caller's cancellation does not cut the (shielded) remote cancel short."""
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    cancel = _CancelLog()
    ref = _cancellable(zoo, fake.id, cancel)
    path = f"/async/operations/{fake.id}"
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: aj.wait_until_terminal(ref, cancel_on_timeout=True))
        await polls(server, path, 2)
        tg.cancel_scope.cancel()
    assert (cancel.calls, cancel.finished) == (1, 1)


async def test_a_failed_remote_cancel_is_logged_not_raised(
    server: FakeApiServer, zoo: aj.ZooClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])

    async def refuse() -> None:
        raise aj.BadRequestError(400, "already finished")

    ref = _cancellable(zoo, fake.id, refuse)
    with (
        caplog.at_level(logging.WARNING, logger="async_jobs.poll"),
        pytest.raises(aj.WaitTimeout),
    ):
        await aj.wait_until_terminal(ref, timeout=0.05, cancel_on_timeout=True)
    assert "could not cancel" in caplog.text


async def test_a_job_the_api_cannot_cancel_is_left_running(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    ref = zoo.async_operation(fake.id)
    assert not ref.can_cancel
    with pytest.raises(NotImplementedError):
        await ref.cancel()
    with pytest.raises(aj.WaitTimeout):
        await aj.wait_until_terminal(ref, timeout=0.05, cancel_on_timeout=True)


async def test_a_watcher_lists_a_group_at_the_pace_of_its_most_urgent_job(
    server: FakeApiServer,
) -> None:
    """One job PENDING (slow), one RUNNING (fast): the group's listing goes at the fast pace."""
    queued = server.zoo.add_operation(timeline=[("queued", None)])
    running = server.zoo.add_operation(timeline=[("in_progress", None)])
    slow = aj.PollPolicy(initial=30.0, multiplier=1.0, maximum=30.0, jitter=0.0)
    fast = aj.PollPolicy(initial=0.001, multiplier=1.0, maximum=0.001, jitter=0.0)
    schedule = {aj.JobState.PENDING: slow, aj.JobState.RUNNING: fast}
    async with (
        aj.ZooClient(token=TOKEN, base_url=server.url) as zoo,
        aj.Watcher(zoo, poll=schedule) as watcher,
    ):
        watcher.add(zoo.async_operation(queued.id))
        watcher.add(zoo.async_operation(running.id))
        # The default PollPolicy would need minutes for these listings.
        await polls(server, "/async/operations", 45)  # 15 sweeps of its 3 status listings
