"""wait_all(): many waits at once (what Metafold's workflow wait builds on), end to end."""

from __future__ import annotations

import math
import uuid
from typing import Any

import anyio
import pytest

import async_jobs as aj
from async_jobs._poll import wait_all
from async_jobs.testing import FakeApiServer

from ._schedule import SOON, arrivals
from .conftest import FAST_POLL, client_tasks, eventually

pytestmark = pytest.mark.anyio

HOUR = 3600.0


def _ops(server: FakeApiServer, *statuses: str) -> list[Any]:
    return [
        server.zoo.add_operation(timeline=[(status, None)], error="boom") for status in statuses
    ]


async def test_terminal_jobs_come_back_in_the_order_of_the_refs(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    ops = [
        server.zoo.add_operation(timeline=[("in_progress", HOUR), ("completed", None)])
        for _ in range(3)
    ] + _ops(server, "failed", "completed")
    seen: list[tuple[str, str]] = []

    def record(op: aj.AsyncOperation) -> None:
        seen.append((op.id, op.status))
        if sum(status == "in_progress" for _, status in seen) == 3:
            server.clock.advance(HOUR)  # all three were seen running: let them finish

    with anyio.fail_after(SOON):
        jobs = await wait_all(
            [zoo.async_operation(op.id) for op in ops], poll=FAST_POLL, on_update=record
        )
    assert [job.id for job in jobs] == [op.id for op in ops]
    assert [job.status for job in jobs] == ["completed"] * 3 + ["failed", "completed"]
    # A failed job is a result, and every change reached on_update.
    assert {(op.id, "in_progress") for op in ops[:3]} <= set(seen)
    assert {(job.id, job.status) for job in jobs} <= set(seen)


async def test_no_refs_is_no_work(zoo: aj.ZooClient) -> None:
    assert await wait_all([]) == []


async def test_fail_fast_raises_the_first_failure_and_stops_the_rest(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    stuck, failed = _ops(server, "in_progress", "failed")
    before = client_tasks()
    with anyio.fail_after(SOON), pytest.raises(aj.JobFailed) as info:
        await wait_all(
            [zoo.async_operation(stuck.id), zoo.async_operation(failed.id)],
            poll=FAST_POLL,
            fail_fast=True,
        )
    assert info.value.job.id == failed.id
    assert client_tasks() == before


async def test_a_canceled_job_also_fails_fast(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    (stuck,) = _ops(server, "in_progress")
    dataset = server.conversions.add_dataset()
    canceled = server.conversions.add_conversion(dataset, [("canceled", None)])
    with anyio.fail_after(SOON), pytest.raises(aj.JobFailed) as info:
        await wait_all(
            [zoo.async_operation(stuck.id), zoo.dataset_conversion(dataset, canceled.id)],
            poll=FAST_POLL,
            fail_fast=True,
        )
    assert info.value.job.id == canceled.id


async def test_fail_fast_does_not_mind_successes(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    ops = _ops(server, "completed", "completed")
    jobs = await wait_all([zoo.async_operation(op.id) for op in ops], fail_fast=True)
    assert [job.status for job in jobs] == ["completed", "completed"]


async def test_a_fatal_error_of_one_wait_is_raised_as_is_and_ends_the_rest(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    (stuck,) = _ops(server, "in_progress")
    before = client_tasks()
    with anyio.fail_after(SOON), pytest.raises(aj.NotFoundError):
        await wait_all(
            [zoo.async_operation(stuck.id), zoo.async_operation(str(uuid.uuid4()))],
            poll=FAST_POLL,
        )
    assert client_tasks() == before


async def test_the_timeout_lists_the_last_job_seen_per_ref(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    stuck, done = _ops(server, "in_progress", "completed")
    never = server.zoo.add_operation(timeline=[("queued", None)])
    # Each ref's first answer comes back; after it, every poll of `stuck` hangs and `never`
    # is never answered at all.
    server.inject("hold", times=None, route=f"/async/operations/{never.id}")

    def stall(op: aj.AsyncOperation) -> None:
        if op.id == stuck.id:
            server.inject("hold", times=None, route=f"/async/operations/{stuck.id}")

    refs = [zoo.async_operation(op.id) for op in (stuck, done, never)]
    with pytest.raises(aj.WaitTimeout) as info:
        await wait_all(refs, timeout=0.5, poll=FAST_POLL, on_update=stall)
    last = info.value.last
    assert [job.status if job else None for job in last] == ["in_progress", "completed", None]
    assert "2 of 3 jobs" in str(info.value)


async def test_a_zero_timeout_times_out_at_once(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    (done,) = _ops(server, "completed")
    with pytest.raises(aj.WaitTimeout) as info:
        await wait_all([zoo.async_operation(done.id)], timeout=0)
    assert info.value.last == [None]
    with pytest.raises(aj.WaitTimeout):
        await aj.wait_until_terminal(zoo.async_operation(done.id), timeout=0)


@pytest.mark.parametrize("limit", [None, 3])
async def test_requests_in_flight_stay_within_max_concurrency(
    server: FakeApiServer, zoo: aj.ZooClient, limit: int | None
) -> None:
    expected = 8 if limit is None else limit  # the documented default
    ops = _ops(server, *["completed"] * 20)
    gate = server.inject("hold", times=None, route="/async/operations/*")
    options: dict[str, Any] = {} if limit is None else {"max_concurrency": limit}
    async with anyio.create_task_group() as tg:
        results: list[Any] = []

        async def run() -> None:
            refs = [zoo.async_operation(op.id) for op in ops]
            results.extend(await wait_all(refs, poll=FAST_POLL, **options))

        tg.start_soon(run)
        await eventually(lambda: server.in_flight >= expected, timeout=SOON)
        await anyio.sleep(0.1)  # every wait is due at once: an unbounded one sends all 20
        held = server.in_flight
        gate.release()
    assert held == expected
    assert server.max_in_flight == expected
    assert [job.id for job in results] == [op.id for op in ops]
    assert all(len(arrivals(server, f"/async/operations/{op.id}")) == 1 for op in ops)


@pytest.mark.parametrize("timeout", [-1, -0.001, math.nan])
async def test_a_bad_timeout_is_rejected(zoo: aj.ZooClient, timeout: float) -> None:
    ref = zoo.async_operation(str(uuid.uuid4()))
    with pytest.raises(ValueError):
        await wait_all([ref], timeout=timeout)
    with pytest.raises(ValueError):
        await aj.wait_until_terminal(ref, timeout=timeout)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
async def test_a_bad_max_concurrency_is_rejected(zoo: aj.ZooClient, bad: Any) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        await wait_all([zoo.async_operation(str(uuid.uuid4()))], max_concurrency=bad)


async def test_one_request_at_a_time_is_allowed(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    ops = _ops(server, "completed", "failed")
    jobs = await wait_all([zoo.async_operation(op.id) for op in ops], max_concurrency=1)
    assert [job.status for job in jobs] == ["completed", "failed"]
    assert server.max_in_flight == 1
