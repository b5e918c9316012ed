"""The poll step of watch() and wait_until_terminal(), read from the fake's request log.

No test here measures elapsed time against a deadline. A poll is sent only after the delay
before it has passed, so the gap between two polls arriving at the fake is at least the delay
the policy (or the server's Retry-After) asked for, however busy the machine is: that is the
lower bound checked. That a delay was *not* taken is shown with a policy whose next step
would be tens of seconds: the poll then has to arrive within a generous deadline at all.
"""

from __future__ import annotations

import itertools
from functools import partial

import anyio
import pytest

import async_jobs as aj
from async_jobs._policy import next_delay
from async_jobs.testing import FakeApiServer

from .conftest import FAST_POLL, TOKEN, eventually

pytestmark = pytest.mark.anyio

#: Slack for float rounding between the fake's time.monotonic() stamps and the loop's timers.
EPSILON = 1e-3
#: A policy whose third step is far longer than any test waits: 0.002 s, 0.2 s, then 20 s.
CLIFF = aj.PollPolicy(initial=0.002, multiplier=100.0, maximum=30.0, jitter=0.0)
#: Long enough for anything that should happen soon, far shorter than the cliff.
SOON = 10.0


def _single_try(server: FakeApiServer) -> aj.ZooClient:
    """A client whose every failed request is a missed poll (no retries inside the request)."""
    return aj.ZooClient(
        token=TOKEN, base_url=server.url, retry=aj.RetryPolicy(max_attempts=1), timeout=5
    )


def _arrivals(server: FakeApiServer, path: str) -> list[float]:
    return [r.at for r in server.requests if r.path == path]


async def _polls(server: FakeApiServer, path: str, count: int) -> list[float]:
    """Wait until ``count`` requests for ``path`` arrived; their arrival times."""
    await eventually(lambda: len(_arrivals(server, path)) >= count, timeout=SOON)
    return _arrivals(server, path)


def _gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def _at_least(gaps: list[float], delays: list[float]) -> None:
    assert len(gaps) >= len(delays)
    for index, (gap, delay) in enumerate(zip(gaps, delays, strict=False)):
        assert gap >= delay - EPSILON, f"poll {index + 2}: {gap:.4f} s after the last, not {delay}"


async def test_polls_back_off_along_the_policy_schedule(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    policy = aj.PollPolicy(initial=0.01, multiplier=2.0, maximum=0.08, jitter=0.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(aj.wait_until_terminal, zoo.async_operation(fake.id), poll=policy))
        times = await _polls(server, f"/async/operations/{fake.id}", 7)
        tg.cancel_scope.cancel()
    _at_least(_gaps(times), [0.01, 0.02, 0.04, 0.08, 0.08, 0.08])


async def test_jittered_polls_stay_within_the_jitter(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    policy = aj.PollPolicy(initial=0.02, multiplier=2.0, maximum=0.08, jitter=0.5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(aj.wait_until_terminal, zoo.async_operation(fake.id), poll=policy))
        times = await _polls(server, f"/async/operations/{fake.id}", 5)
        tg.cancel_scope.cancel()
    # +/- 50 %: never sooner than half of each step.
    _at_least(_gaps(times), [0.01, 0.02, 0.04, 0.04])


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
        await _polls(server, path, 2)
        server.zoo.set_status(fake.id, "in_progress")
        # Poll 3 sees the change. Without the reset the next delay would be 20 s; with it the
        # schedule starts again: 0.002 s, then 0.2 s, and only then 20 s.
        times = await _polls(server, path, 5)
        tg.cancel_scope.cancel()
    assert seen == ["queued", "in_progress"]
    _at_least(_gaps(times), [0.002, 0.2, 0.002, 0.2])


async def test_retry_after_longer_than_the_schedule_delays_the_next_poll(
    server: FakeApiServer,
) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{fake.id}"
    steady = aj.PollPolicy(initial=0.002, multiplier=1.0, maximum=1.0, jitter=0.0)
    server.inject("status", status=429, retry_after="0.3", times=2, route=path)
    async with _single_try(server) as zoo:
        final = await aj.wait_until_terminal(
            zoo.async_operation(fake.id), timeout=SOON, poll=steady
        )
    assert final.status == "completed"
    times = _arrivals(server, path)
    assert len(times) == 3
    _at_least(_gaps(times), [0.3, 0.3])


async def test_retry_after_shorter_than_the_schedule_brings_the_next_poll_forward(
    server: FakeApiServer,
) -> None:
    fake = server.zoo.add_operation(timeline=[("queued", None)])
    path = f"/async/operations/{fake.id}"
    async with _single_try(server) as zoo:
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
    times = _arrivals(server, path)
    assert len(times) == 4
    _at_least(_gaps(times), [0.002, 0.05, 0.05])


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
    assert len(_arrivals(server, path)) == 1


@pytest.mark.parametrize("status", [405, 408, 409, 410, 422, 429, 500, 501, 502, 503, 504])
async def test_any_other_error_status_is_a_missed_poll(server: FakeApiServer, status: int) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{fake.id}"
    server.inject("status", status=status, times=2, route=path)
    async with _single_try(server) as zoo:
        final = await aj.wait_until_terminal(
            zoo.async_operation(fake.id), timeout=SOON, poll=FAST_POLL
        )
    assert final.status == "completed"
    assert len(_arrivals(server, path)) == 3


@pytest.mark.parametrize("kind", ["malformed", "drop", "truncated", "html"])
async def test_a_broken_answer_is_a_missed_poll(server: FakeApiServer, kind: str) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{fake.id}"
    server.inject(kind, times=1, route=path)  # type: ignore[arg-type]
    async with _single_try(server) as zoo:
        final = await aj.wait_until_terminal(
            zoo.async_operation(fake.id), timeout=SOON, poll=FAST_POLL
        )
    assert final.status == "completed"
    assert len(_arrivals(server, path)) == 2


async def test_a_terminal_first_look_is_the_only_poll(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("failed", None)], error="boom")
    updates = [op async for op in aj.watch(zoo.async_operation(fake.id), poll=FAST_POLL)]
    assert [op.status for op in updates] == ["failed"]
    assert len(_arrivals(server, f"/async/operations/{fake.id}")) == 1


def test_the_cliff_policy_is_what_the_tests_assume() -> None:
    assert [next_delay(CLIFF, step) for step in range(4)] == pytest.approx([0.002, 0.2, 20, 30])
