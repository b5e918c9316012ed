"""The poll step of watch() and wait_until_terminal(), read from the fake's request log
(see tests/_schedule.py for why lower bounds on the gaps between polls are what is checked)."""

from __future__ import annotations

from functools import partial

import anyio
import pytest

import async_jobs as aj
from async_jobs._policy import next_delay
from async_jobs.testing import FakeApiServer

from ._schedule import CLIFF, SOON, arrivals, at_least, gaps, polls, single_try
from .conftest import FAST_POLL

pytestmark = pytest.mark.anyio


async def test_polls_back_off_along_the_policy_schedule(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    policy = aj.PollPolicy(initial=0.01, multiplier=2.0, maximum=0.08, jitter=0.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(aj.wait_until_terminal, zoo.async_operation(fake.id), poll=policy))
        times = await polls(server, f"/async/operations/{fake.id}", 7)
        tg.cancel_scope.cancel()
    at_least(gaps(times), [0.01, 0.02, 0.04, 0.08, 0.08, 0.08])


async def test_jittered_polls_stay_within_the_jitter(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    policy = aj.PollPolicy(initial=0.02, multiplier=2.0, maximum=0.08, jitter=0.5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(aj.wait_until_terminal, zoo.async_operation(fake.id), poll=policy))
        times = await polls(server, f"/async/operations/{fake.id}", 5)
        tg.cancel_scope.cancel()
    # +/- 50 %: never sooner than half of each step.
    at_least(gaps(times), [0.01, 0.02, 0.04, 0.04])


async def test_a_change_drops_the_interval_back_to_initial(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("queued", None)])
    path = f"/async/operations/{fake.id}"
    seen: list[str] = []

    async def follow() -> None:
        async for op in aj.watch(zoo.async_operation(fake.id), poll=CLIFF):
            seen.append(op.status)

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        # Poll 2 saw no change, so the watch now sleeps 0.2 s: change the job meanwhile.
        await polls(server, path, 2)
        server.zoo.set_status(fake.id, "in_progress")
        # Poll 3 sees the change. Without the reset the next delay would be 20 s; with it the
        # schedule starts again: 0.002 s, then 0.2 s, and only then 20 s.
        times = await polls(server, path, 5)
        tg.cancel_scope.cancel()
    assert seen == ["queued", "in_progress"]
    at_least(gaps(times), [0.002, 0.2, 0.002, 0.2])


async def test_retry_after_longer_than_the_schedule_delays_the_next_poll(
    server: FakeApiServer,
) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{fake.id}"
    steady = aj.PollPolicy(initial=0.002, multiplier=1.0, maximum=1.0, jitter=0.0)
    server.inject("status", status=429, retry_after="0.15", times=2, route=path)
    async with single_try(server) as zoo:
        final = await aj.wait_until_terminal(
            zoo.async_operation(fake.id), timeout=SOON, poll=steady
        )
    assert final.status == "completed"
    times = arrivals(server, path)
    assert len(times) == 3
    at_least(gaps(times), [0.15, 0.15])


async def test_retry_after_shorter_than_the_schedule_brings_the_next_poll_forward(
    server: FakeApiServer,
) -> None:
    fake = server.zoo.add_operation(timeline=[("queued", None)])
    path = f"/async/operations/{fake.id}"
    async with single_try(server) as zoo:
        updates = aj.watch(zoo.async_operation(fake.id), poll=CLIFF)
        try:
            assert (await anext(updates)).status == "queued"
            # Poll 2 gets a 429 asking for 0.05 s; the schedule's next step would be 0.2 s,
            # and the one after 20 s.
            server.inject("status", status=429, retry_after="0.05", times=2, route=path)
            server.zoo.set_status(fake.id, "in_progress")
            with anyio.fail_after(SOON):
                assert (await anext(updates)).status == "in_progress"
        finally:
            await updates.aclose()
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
async def test_a_client_error_ends_the_wait_with_its_type(
    server: FakeApiServer, zoo: aj.ZooClient, status: int, error: type[aj.ApiError]
) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{fake.id}"
    # Only the first answer is an error: a wait that polled again would find the job done.
    server.inject("status", status=status, times=1, route=path)
    with pytest.raises(error) as info:
        await aj.wait_until_terminal(zoo.async_operation(fake.id), timeout=SOON, poll=FAST_POLL)
    assert info.value.status == status
    assert len(arrivals(server, path)) == 1


@pytest.mark.parametrize("status", [405, 408, 409, 410, 422, 429, 500, 501, 502, 503, 504])
async def test_any_other_error_status_is_a_missed_poll(server: FakeApiServer, status: int) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{fake.id}"
    server.inject("status", status=status, times=2, route=path)
    async with single_try(server) as zoo:
        final = await aj.wait_until_terminal(
            zoo.async_operation(fake.id), timeout=SOON, poll=FAST_POLL
        )
    assert final.status == "completed"
    assert len(arrivals(server, path)) == 3


@pytest.mark.parametrize("kind", ["malformed", "drop", "truncated", "html"])
async def test_a_broken_answer_is_a_missed_poll(server: FakeApiServer, kind: str) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{fake.id}"
    server.inject(kind, times=1, route=path)  # type: ignore[arg-type]
    async with single_try(server) as zoo:
        final = await aj.wait_until_terminal(
            zoo.async_operation(fake.id), timeout=SOON, poll=FAST_POLL
        )
    assert final.status == "completed"
    assert len(arrivals(server, path)) == 2


async def test_a_terminal_first_look_is_the_only_poll(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("failed", None)], error="boom")
    updates = [op async for op in aj.watch(zoo.async_operation(fake.id), poll=FAST_POLL)]
    assert [op.status for op in updates] == ["failed"]
    assert len(arrivals(server, f"/async/operations/{fake.id}")) == 1


def test_the_cliff_policy_is_what_the_tests_assume() -> None:
    assert [next_delay(CLIFF, step) for step in range(4)] == pytest.approx([0.002, 0.2, 20, 30])
