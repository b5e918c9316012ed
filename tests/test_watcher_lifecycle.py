"""The Watcher's bookkeeping: first polls, removals, lagging listings, snapshots, shutdown."""

from __future__ import annotations

import gc
import logging
import time

import anyio
import msgspec
import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer

from ._schedule import CLIFF, SOON, arrivals, at_least, gaps, single_try
from .conftest import FAST_RETRY, TOKEN, eventually

pytestmark = pytest.mark.anyio

POLL = aj.PollPolicy(initial=0.02, multiplier=1.5, maximum=0.1, jitter=0.2)
LISTING = "/async/operations"


def _zoo(server: FakeApiServer) -> aj.ZooClient:
    return aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY, timeout=5)


async def test_missed_first_polls_back_off_from_initial(server: FakeApiServer) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{fake.id}"
    server.inject("status", status=500, times=2, route=path)
    # CLIFF waits 0.002 s, then 0.2 s, then 20 s: the third poll must come from the second step.
    async with single_try(server) as zoo, aj.Watcher(zoo, poll=CLIFF, coalesce=False) as w:
        with anyio.fail_after(SOON):
            assert (await w.add(zoo.async_operation(fake.id))).status == "completed"
    at_least(gaps(arrivals(server, path)), [0.002, 0.2])


async def test_a_failed_first_listing_is_retried_soon(server: FakeApiServer) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    server.inject("status", status=500, times=1, route=LISTING)
    seen = anyio.Event()
    async with single_try(server) as zoo, aj.Watcher(zoo, poll=CLIFF) as watcher:
        watcher.add(zoo.async_operation(fake.id), on_update=lambda _op: seen.set())
        with anyio.fail_after(SOON):
            await seen.wait()


async def test_first_polls_are_spread_over_the_initial_interval(server: FakeApiServer) -> None:
    ops = [server.zoo.add_operation(timeline=[("in_progress", None)]) for _ in range(20)]
    spread = aj.PollPolicy(initial=0.4, multiplier=1.0, maximum=0.4, jitter=0.0)
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=spread, coalesce=False) as watcher:
        added_at = anyio.current_time()
        watcher.add_many(zoo.async_operation(op.id) for op in ops)
        paths = [f"/async/operations/{op.id}" for op in ops]
        await eventually(lambda: all(arrivals(server, p) for p in paths), timeout=SOON)
    firsts = [arrivals(server, p)[0] - added_at for p in paths]
    # Each first poll waits a random part of 0.4 s: all 20 below 0.2 s has odds 2**-20.
    assert min(firsts) >= 0
    assert max(firsts) >= 0.2


@pytest.mark.parametrize(("limit", "expected"), [(None, 16), (1, 1)])
async def test_max_concurrency_default_and_smallest(
    server: FakeApiServer, limit: int | None, expected: int
) -> None:
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(20)]
    gate = server.inject("hold", times=None, route="/async/operations/*")
    options = {} if limit is None else {"max_concurrency": limit}
    async with (
        _zoo(server) as zoo,
        aj.Watcher(zoo, poll=POLL, coalesce=False, **options) as watcher,  # type: ignore[arg-type]
    ):
        watcher.add_many(zoo.async_operation(op.id) for op in ops)
        await eventually(lambda: server.in_flight >= expected, timeout=SOON)
        await anyio.sleep(10 * POLL.initial)
        held = server.in_flight
        gate.release()
        await watcher.wait_all(timeout=SOON)
    assert held == server.max_in_flight == expected


@pytest.mark.parametrize("bad", [0, -1])
def test_max_concurrency_below_one_is_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        aj.Watcher(max_concurrency=bad)


async def test_a_removed_job_is_forgotten(server: FakeApiServer) -> None:
    kept, dropped = (server.zoo.add_operation(timeline=[("in_progress", None)]) for _ in range(2))
    seen: list[str] = []
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, on_update=seen.append) as watcher:
        watcher.add(zoo.async_operation(kept.id))
        gone = watcher.add(zoo.async_operation(dropped.id))
        await eventually(lambda: len(seen) == 2, timeout=SOON)  # both were seen once
        assert watcher.remove(zoo.async_operation(dropped.id))
        server.zoo.set_status(dropped.id, "queued")  # still listed, and changed: not reported
        server.zoo.set_status(kept.id, "completed")
        with anyio.fail_after(SOON):
            finished = [job.id async for job in watcher.as_completed()]
        assert watcher.done == 1 and watcher.pending == 0
    assert finished == [kept.id]
    assert gone.cancelled()
    assert [getattr(job, "id", None) for job in seen[2:]] == [kept.id]


async def test_wait_all_takes_the_finished_jobs(server: FakeApiServer) -> None:
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(3)]
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL) as watcher:
        watcher.add_many(zoo.async_operation(op.id) for op in ops)
        jobs = await watcher.wait_all(timeout=SOON)
        assert [job.id for job in jobs] == [op.id for op in ops]
        assert [job async for job in watcher.as_completed()] == []  # already taken


async def test_a_lagging_listing_is_confirmed_each_time_it_misses_a_job(
    server: FakeApiServer,
) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    path = f"/async/operations/{fake.id}"
    # The listing never shows the job although it is running.
    empty = b'{"items": [], "next_page": null}'
    server.inject("body", body=empty, times=None, route=LISTING)
    # One worker: a confirmation that hands the job back to its group must not end it.
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, max_concurrency=1) as watcher:
        future = watcher.add(zoo.async_operation(fake.id))
        await eventually(lambda: len(arrivals(server, path)) >= 3, timeout=SOON)
        assert not future.done()  # still running: back to its group after each confirmation
        server.zoo.set_status(fake.id, "completed")
        with anyio.fail_after(SOON):
            assert (await future).status == "completed"
    sweeps = len(arrivals(server, LISTING)) // len(aj.models.zoo.OPERATION_ACTIVE_STATUSES)
    # One confirmation per sweep that missed it at most: never polled on its own as well.
    assert len(arrivals(server, path)) <= sweeps


async def test_a_failed_job_nobody_awaits_is_not_reported_as_lost(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    missing = "00000000-0000-4000-8000-000000000000"
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, coalesce=False) as watcher:
        watcher.add(zoo.async_operation(missing))  # the future is dropped at once
        await eventually(lambda: watcher.done == 1, timeout=SOON)
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_snapshot_is_a_stable_format(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("queued", None)])
    async with _zoo(server) as zoo:
        ref = zoo.async_operation(op.id)
        async with aj.Watcher(zoo, poll=POLL) as watcher:
            watcher.add(ref)
            data = watcher.snapshot()
            assert watcher.pending == 1
        assert msgspec.json.decode(data) == {"version": 1, "jobs": [ref.to_token()]}
        assert watcher.pending == 0  # leaving the block ends every watch
        # Written by hand, as a process of an earlier version would have.
        handmade = b'{"version":1,"jobs":["' + ref.to_token().encode() + b'"]}'
        server.zoo.set_status(op.id, "completed")
        async with aj.Watcher.restore(handmade, zoo, poll=POLL) as again:
            assert [job.id for job in await again.wait_all(timeout=SOON)] == [op.id]
    with pytest.raises(ValueError):
        aj.Watcher.restore(b'{"jobs": []}', zoo)


@pytest.mark.parametrize("coalesce", [False, True])
async def test_remove_works_with_or_without_a_group(server: FakeApiServer, coalesce: bool) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, coalesce=coalesce) as watcher:
        listed = zoo.async_operation(op.id)
        unlisted = aj.JobRef("custom", ("x",), listed.fetch)  # a ref with no listing at all
        futures = [watcher.add(listed), watcher.add(unlisted)]
        assert watcher.remove(listed) and watcher.remove(unlisted)
        assert watcher.pending == 0
    assert all(future.cancelled() for future in futures)


async def test_add_outside_async_with_raises_at_once(server: FakeApiServer) -> None:
    """DESIGN.md: add() on a watcher that is not running raises RuntimeError at once (a
    future that could never resolve is worse); the same watcher works once entered."""
    op = server.zoo.add_operation(timeline=[("completed", None)])
    async with _zoo(server) as zoo:
        watcher = aj.Watcher(zoo, poll=POLL)
        with pytest.raises(RuntimeError, match="not running"):
            watcher.add(zoo.async_operation(op.id))
        async with watcher:
            with anyio.fail_after(SOON):
                assert (await watcher.add(zoo.async_operation(op.id))).id == op.id
        with pytest.raises(RuntimeError, match="not running"):
            watcher.add(zoo.async_operation(op.id))
        assert server.requests  # it did poll while running


async def test_removing_queued_jobs_loses_no_worker(server: FakeApiServer) -> None:
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(4)]
    gate = server.inject("hold", times=None, route="/async/operations/*")
    async with (
        _zoo(server) as zoo,
        aj.Watcher(zoo, poll=POLL, coalesce=False, max_concurrency=1) as watcher,
    ):
        refs = [zoo.async_operation(op.id) for op in ops[:3]]
        futures = watcher.add_many(refs)
        await eventually(lambda: server.in_flight == 1, timeout=SOON)
        busy = next(i for i, op in enumerate(ops[:3]) if arrivals(server, f"{LISTING}/{op.id}"))
        # The other two fall due while the only worker is busy: they wait in its queue.
        await anyio.sleep(10 * POLL.initial)
        for i, ref in enumerate(refs):
            if i != busy:
                assert watcher.remove(ref)
        gate.release()
        with anyio.fail_after(SOON):
            assert (await futures[busy]).status == "completed"
            # The worker skipped the two removed jobs and is still there for a new one.
            assert (await watcher.add(zoo.async_operation(ops[3].id))).status == "completed"


async def test_a_waiting_watcher_sleeps_instead_of_spinning(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    path = f"{LISTING}/{op.id}"
    # Polls 0.01 s apart (the first one spread over that), then 1 s.
    slow = aj.PollPolicy(initial=0.01, multiplier=100.0, maximum=1.0, jitter=0.0)
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=slow, coalesce=False) as watcher:
        watcher.add(zoo.async_operation(op.id))
        await eventually(lambda: len(arrivals(server, path)) >= 2, timeout=SOON)
        # Poll 2 saw no change: the next poll is 1 s away. Waiting for it costs this process
        # (nearly) no CPU time, however busy the machine is. A loop that spun until then
        # would burn it all.
        cpu = time.process_time()
        await anyio.sleep(0.45)
        used = time.process_time() - cpu
    assert used < 0.15, used


async def test_a_failed_job_loses_no_worker(server: FakeApiServer) -> None:
    missing = "00000000-0000-4000-8000-000000000001"
    op = server.zoo.add_operation(timeline=[("completed", None)])
    async with (
        _zoo(server) as zoo,
        aj.Watcher(zoo, poll=POLL, coalesce=False, max_concurrency=1) as watcher,
    ):
        with anyio.fail_after(SOON):
            with pytest.raises(aj.NotFoundError):
                await watcher.add(zoo.async_operation(missing))
            assert (await watcher.add(zoo.async_operation(op.id))).status == "completed"


async def test_a_group_that_emptied_serves_a_job_added_later(server: FakeApiServer) -> None:
    first, second = (server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(2))
    brisk = aj.PollPolicy(initial=0.002, multiplier=1.0, maximum=0.002, jitter=0.0)
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=brisk) as watcher:
        with anyio.fail_after(SOON):
            assert (await watcher.add(zoo.async_operation(first.id))).status == "completed"
        await anyio.sleep(0.1)  # the group, empty now, waits for a job after its 2 ms pause
        with anyio.fail_after(SOON):
            assert (await watcher.add(zoo.async_operation(second.id))).status == "completed"


async def test_a_job_whose_wait_ended_is_not_reported_by_its_listing(
    server: FakeApiServer,
) -> None:
    op, other = (server.zoo.add_operation(timeline=[("in_progress", None)]) for _ in range(2))
    sweep = len(aj.models.zoo.OPERATION_ACTIVE_STATUSES)
    # The first sweep lags (the job is missing), and the GET that confirms it is refused.
    server.inject("body", body=b'{"items": [], "next_page": null}', times=sweep, route=LISTING)
    server.inject("status", status=403, times=1, route=f"{LISTING}/{op.id}")
    seen: list[aj.AsyncOperation] = []
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, on_update=seen.append) as watcher:
        failing = watcher.add(zoo.async_operation(op.id))
        watcher.add(zoo.async_operation(other.id))  # keeps the group sweeping
        with anyio.fail_after(SOON), pytest.raises(aj.AuthenticationError):
            await failing
        # Later sweeps list the job again; its wait has ended, so nothing reports it.
        await eventually(lambda: len(arrivals(server, LISTING)) >= 3 * sweep, timeout=SOON)
    assert other.id in {job.id for job in seen}
    assert op.id not in {job.id for job in seen}
