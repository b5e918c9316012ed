"""The Watcher's poll step, bounds and group pauses, read from the fake's request log (see
tests/_schedule.py for why lower bounds on gaps, and arrivals before a cliff, are checked)."""

from __future__ import annotations

import itertools
import logging

import anyio
import pytest

import async_jobs as aj
from async_jobs.models.zoo import OPERATION_ACTIVE_STATUSES
from async_jobs.testing import FakeApiServer

from ._schedule import CLIFF, SOON, arrivals, at_least, gaps, polls, single_try
from .conftest import FAST_RETRY, TOKEN, eventually

pytestmark = pytest.mark.anyio

POLL = aj.PollPolicy(initial=0.02, multiplier=1.5, maximum=0.1, jitter=0.2)
#: One listing sweep of the Zoo's async operations: a request per active status.
SWEEP = len(OPERATION_ACTIVE_STATUSES)
LISTING = "/async/operations"


def _zoo(server: FakeApiServer) -> aj.ZooClient:
    return aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY, timeout=5)


def _sweeps(server: FakeApiServer) -> list[list[float]]:
    """The operation listing's requests, grouped into sweeps (each sweep a request per active
    status; the next sweep starts only after the last one was handled)."""
    times = arrivals(server, LISTING)
    return [times[i : i + SWEEP] for i in range(0, len(times) - SWEEP + 1, SWEEP)]


async def _sweep_count(server: FakeApiServer, count: int) -> list[list[float]]:
    await eventually(lambda: len(_sweeps(server)) >= count, timeout=SOON)
    return _sweeps(server)


# -- per-job polling ------------------------------------------------------------------------


async def test_per_job_polls_reset_when_the_job_changes(server: FakeApiServer) -> None:
    fake = server.zoo.add_operation(timeline=[("queued", None)])
    path = f"/async/operations/{fake.id}"
    seen: list[str] = []
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=CLIFF, coalesce=False) as watcher:
        watcher.add(zoo.async_operation(fake.id), on_update=lambda op: seen.append(op.status))
        # Poll 2 saw no change: the next delay is 0.2 s, and the one after that 20 s.
        await polls(server, path, 2)
        server.zoo.set_status(fake.id, "in_progress")
        times = await polls(server, path, 5)
    assert seen == ["queued", "in_progress"]
    at_least(gaps(times), [0.002, 0.2, 0.002, 0.2])


async def test_per_job_retry_after_longer_than_the_schedule_is_waited(
    server: FakeApiServer,
) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{fake.id}"
    steady = aj.PollPolicy(initial=0.002, multiplier=1.0, maximum=1.0, jitter=0.0)
    server.inject("status", status=429, retry_after="0.15", times=2, route=path)
    async with single_try(server) as zoo, aj.Watcher(zoo, poll=steady, coalesce=False) as w:
        with anyio.fail_after(SOON):
            assert (await w.add(zoo.async_operation(fake.id))).status == "completed"
    times = arrivals(server, path)
    assert len(times) == 3
    at_least(gaps(times), [0.15, 0.15])


async def test_per_job_retry_after_shorter_than_the_schedule_brings_the_poll_forward(
    server: FakeApiServer,
) -> None:
    fake = server.zoo.add_operation(timeline=[("queued", None)])
    path = f"/async/operations/{fake.id}"

    def first_look(op: aj.AsyncOperation) -> None:
        if op.status == "queued":
            # Polls 2 and 3 get a 429 asking for 0.05 s; the schedule says 0.2 s, then 20 s.
            server.inject("status", status=429, retry_after="0.05", times=2, route=path)
            server.zoo.set_status(fake.id, "completed")

    async with single_try(server) as zoo, aj.Watcher(zoo, poll=CLIFF, coalesce=False) as w:
        with anyio.fail_after(SOON):
            final = await w.add(zoo.async_operation(fake.id), on_update=first_look)
    assert final.status == "completed"
    times = arrivals(server, path)
    assert len(times) == 4
    at_least(gaps(times), [0.002, 0.05, 0.05])


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, aj.BadRequestError),
        (401, aj.AuthenticationError),
        (403, aj.AuthenticationError),
        (404, aj.NotFoundError),
    ],
)
@pytest.mark.parametrize("coalesce", [False, True])
async def test_a_client_error_on_a_jobs_get_fails_that_job_alone(
    server: FakeApiServer, status: int, error: type[aj.ApiError], coalesce: bool
) -> None:
    doomed = server.zoo.add_operation(timeline=[("completed", None)])
    fine = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{doomed.id}"
    # One error only: a watcher that polled again would find the job completed.
    server.inject("status", status=status, times=1, route=path)
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, coalesce=coalesce) as watcher:
        failing = watcher.add(zoo.async_operation(doomed.id))
        other = watcher.add(zoo.async_operation(fine.id))
        with anyio.fail_after(SOON), pytest.raises(error):
            await failing
        with anyio.fail_after(SOON):
            assert (await other).status == "completed"
        assert watcher.pending == 0 and watcher.done == 2
    assert len(arrivals(server, path)) == 1


@pytest.mark.parametrize("status", [409, 422, 429, 500, 503])
async def test_any_other_error_on_a_jobs_get_is_a_missed_poll(
    server: FakeApiServer, status: int
) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{fake.id}"
    server.inject("status", status=status, times=2, route=path)
    async with single_try(server) as zoo, aj.Watcher(zoo, poll=POLL, coalesce=False) as w:
        with anyio.fail_after(SOON):
            assert (await w.add(zoo.async_operation(fake.id))).status == "completed"
    assert len(arrivals(server, path)) == 3


# -- bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("coalesce", [False, True])
async def test_no_more_than_max_concurrency_requests_are_in_flight(
    server: FakeApiServer, coalesce: bool
) -> None:
    limit = 3
    if coalesce:
        # Six groups listing at once, each sweep a request per active status.
        datasets = [server.conversions.add_dataset() for _ in range(6)]
        jobs = [(d, server.conversions.add_conversion(d, [("success", None)])) for d in datasets]
        gate = server.inject("hold", times=None, route="/org/datasets/*/conversions")
    else:
        ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(12)]
        gate = server.inject("hold", times=None, route="/async/operations/*")
    async with (
        _zoo(server) as zoo,
        aj.Watcher(zoo, poll=POLL, coalesce=coalesce, max_concurrency=limit) as watcher,
    ):
        if coalesce:
            watcher.add_many(zoo.dataset_conversion(d, c.id) for d, c in jobs)
        else:
            watcher.add_many(zoo.async_operation(op.id) for op in ops)
        await eventually(lambda: server.in_flight >= limit, timeout=SOON)
        # Every job is due by now; a watcher without its bound would have sent more.
        await anyio.sleep(10 * POLL.initial)
        held = server.in_flight
        gate.release()
        done = await watcher.wait_all(timeout=SOON)
    assert held == limit
    assert server.max_in_flight == limit
    assert len(done) == (len(jobs) if coalesce else len(ops))


async def test_rate_limit_bounds_the_requests_sent(server: FakeApiServer) -> None:
    ops = [server.zoo.add_operation(timeline=[("in_progress", None)]) for _ in range(10)]
    fast = aj.PollPolicy(initial=0.01, multiplier=1.0, maximum=0.01, jitter=0.0)
    rate = 50.0
    start = anyio.current_time()  # the loop's clock is the fake's time.monotonic()
    async with (
        _zoo(server) as zoo,
        aj.Watcher(zoo, poll=fast, coalesce=False, rate_limit=rate) as watcher,
    ):
        watcher.add_many(zoo.async_operation(op.id) for op in ops)
        # Unlimited, the watcher would ask for 10 / 0.01 s = 1000 requests a second.
        await eventually(lambda: len(server.requests) >= 20, timeout=SOON)
        end = anyio.current_time()
    sent = sum(1 for r in server.requests if r.at <= end)
    # A leaky bucket started after `start`: the k-th request's slot is k / rate after it.
    assert sent <= rate * (end - start) + 1, (sent, end - start)


# -- group listings -------------------------------------------------------------------------


async def test_a_group_sweep_resets_its_pause_when_a_job_changes(server: FakeApiServer) -> None:
    fake = server.zoo.add_operation(timeline=[("queued", None)])
    seen: list[str] = []
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=CLIFF) as watcher:
        watcher.add(zoo.async_operation(fake.id), on_update=lambda op: seen.append(op.status))
        # Sweep 1 saw the job (a change: 0.002 s), sweep 2 no change (0.2 s, then 20 s).
        await _sweep_count(server, 2)
        server.zoo.set_status(fake.id, "in_progress")
        sweeps = await _sweep_count(server, 5)
    assert seen == ["queued", "in_progress"]
    pauses = [later[0] - earlier[-1] for earlier, later in itertools.pairwise(sweeps)]
    at_least(pauses, [0.002, 0.2, 0.002, 0.2])
    assert not arrivals(server, f"/async/operations/{fake.id}")  # the listing did it all


async def test_a_listing_retry_after_brings_the_next_sweep_forward(server: FakeApiServer) -> None:
    fake = server.zoo.add_operation(timeline=[("queued", None)])
    changed = anyio.Event()
    async with single_try(server) as zoo, aj.Watcher(zoo, poll=CLIFF) as watcher:
        watcher.add(
            zoo.async_operation(fake.id),
            on_update=lambda op: changed.set() if op.status == "in_progress" else None,
        )
        await _sweep_count(server, 2)
        # Sweep 3 (in 0.2 s) gets a 429 asking for 0.05 s; the schedule's next pause is 30 s.
        server.inject("status", status=429, retry_after="0.05", times=1, route=LISTING)
        server.zoo.set_status(fake.id, "in_progress")
        with anyio.fail_after(SOON):
            await changed.wait()
    assert server.faults.faults[0].hits == 1


async def test_a_new_job_cuts_its_groups_long_pause(server: FakeApiServer) -> None:
    # 0.02 s after a sweep that saw a change, then 20 s.
    policy = aj.PollPolicy(initial=0.02, multiplier=1000.0, maximum=100.0, jitter=0.0)
    steady = server.zoo.add_operation(timeline=[("in_progress", None)])
    late = server.zoo.add_operation(timeline=[("in_progress", None)])
    pausing = anyio.Event()

    def on_event(event: aj.events.Event) -> None:
        # Sweep 2 sees `steady` unchanged: its PollDone comes last in the sweep, and the
        # group's 20 s pause begins before this test's task runs again.
        if not isinstance(event, aj.events.PollDone):
            return
        if not event.changed and event.key.endswith(steady.id):
            pausing.set()

    seen = anyio.Event()
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=policy, listeners=[on_event]) as w:
        w.add(zoo.async_operation(steady.id))
        with anyio.fail_after(SOON):
            await pausing.wait()
        added_at = anyio.current_time()
        w.add(zoo.async_operation(late.id), on_update=lambda _op: seen.set())
        with anyio.fail_after(SOON):
            await seen.wait()
    assert len(_sweeps(server)) == 3
    assert _sweeps(server)[2][0] >= added_at + policy.initial - 1e-3  # cut to initial, not 0
    assert not arrivals(server, f"/async/operations/{late.id}")  # seen through the listing


async def test_a_listing_bad_request_falls_back_to_per_job_polling(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="async_jobs")
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(3)]
    server.inject("status", status=400, times=None, route=LISTING)
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL) as watcher:
        watcher.add_many(zoo.async_operation(op.id) for op in ops)
        with anyio.fail_after(SOON):
            jobs = await watcher.wait_all()
    assert [job.status for job in jobs] == ["completed"] * 3
    assert 1 <= len(arrivals(server, LISTING)) <= SWEEP  # one sweep, never again
    assert len([r for r in caplog.records if "one by one" in r.getMessage()]) == 1
