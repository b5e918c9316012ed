"""wait_until_terminal and watch end to end against FakeApiServer."""

from __future__ import annotations

import base64
import gc
import json
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer

from .conftest import FAST_POLL, client_tasks

pytestmark = pytest.mark.anyio

#: Each step lasts an hour of fake time: a job moves on only when a test advances the clock,
#: so every step is seen however slowly the polls come.
HOUR = 3600.0
WALK = [("queued", HOUR), ("uploaded", HOUR), ("in_progress", HOUR), ("completed", None)]


def _advance(server: FakeApiServer) -> Callable[[Any], None]:
    """An on_update that moves the fake clock to the job's next step once it has been seen."""
    return lambda _job: server.clock.advance(HOUR)


async def test_wait_ends_completed_reporting_each_change(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation("file_volume", WALK)
    seen: list[str] = []

    def record(op: aj.AsyncOperation) -> None:
        seen.append(op.status)
        server.clock.advance(HOUR)

    final = await aj.wait_until_terminal(zoo.async_operation(fake.id), timeout=5, on_update=record)
    assert final.status == "completed"
    assert final.job_state is aj.JobState.SUCCEEDED
    assert final.volume == 42.5
    assert seen == ["queued", "uploaded", "in_progress", "completed"]


async def test_async_on_update(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation(timeline=[("queued", HOUR), ("completed", None)])
    seen: list[aj.JobState] = []

    async def record(op: aj.AsyncOperation) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(op.job_state)
        server.clock.advance(HOUR)

    await aj.wait_until_terminal(zoo.async_operation(fake.id), timeout=5, on_update=record)
    assert seen == [aj.JobState.PENDING, aj.JobState.SUCCEEDED]


async def test_failure_is_a_result(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation(
        timeline=[("in_progress", HOUR), ("failed", None)], error="mesh is not watertight"
    )
    final = await aj.wait_until_terminal(
        zoo.async_operation(fake.id), timeout=5, on_update=_advance(server)
    )
    assert final.job_state is aj.JobState.FAILED
    assert final.error == "mesh is not watertight"


async def test_failure_raises_when_asked(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation(timeline=[("failed", None)], error="boom")
    with pytest.raises(aj.JobFailed) as info:
        await aj.wait_until_terminal(zoo.async_operation(fake.id), raise_on_failure=True)
    assert info.value.job.id == fake.id
    assert "boom" in str(info.value)


async def test_timeout_carries_last_job(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    route = f"/async/operations/{fake.id}"

    def stall(_op: aj.AsyncOperation) -> None:
        server.inject("hold", times=None, route=route)  # every later poll hangs

    with pytest.raises(aj.WaitTimeout) as info:
        await aj.wait_until_terminal(zoo.async_operation(fake.id), timeout=0.5, on_update=stall)
    assert isinstance(info.value, TimeoutError)
    assert info.value.last is not None
    assert info.value.last.status == "in_progress"


async def test_timeout_before_first_look(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation()
    server.inject("latency", delay=1.0, route="/async/operations/*")
    with pytest.raises(aj.WaitTimeout) as info:
        await aj.wait_until_terminal(zoo.async_operation(fake.id), timeout=0.05)
    assert info.value.last is None


async def test_watch_yields_changes_and_ends_terminal(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=WALK)
    statuses = []
    async for op in aj.watch(zoo.async_operation(fake.id), poll=FAST_POLL):
        statuses.append(op.status)
        server.clock.advance(HOUR)
    assert statuses == ["queued", "uploaded", "in_progress", "completed"]


async def test_wait_survives_transient_trouble(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", HOUR), ("completed", None)])
    route = f"/async/operations/{fake.id}"
    # More failures in a row than one request's retries: the wait must absorb them.
    server.inject("status", status=503, times=6, route=route)
    server.inject("malformed", times=2, route=route)
    server.inject("drop", times=2, route=route)
    server.inject("status", status=429, retry_after="0.01", times=3, route=route)
    final = await aj.wait_until_terminal(
        zoo.async_operation(fake.id), timeout=10, on_update=_advance(server)
    )
    assert final.status == "completed"
    assert all(f.hits == f.times for f in server.faults.faults)


async def test_not_found_ends_the_wait(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    with pytest.raises(aj.NotFoundError):
        await aj.wait_until_terminal(zoo.async_operation(str(uuid.uuid4())), timeout=5)


async def test_expired_token_ends_the_wait(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    seen: list[str] = []

    def expire(op: aj.AsyncOperation) -> None:
        seen.append(op.status)
        server.token = "rotated"

    with pytest.raises(aj.AuthenticationError):
        await aj.wait_until_terminal(zoo.async_operation(fake.id), timeout=5, on_update=expire)
    assert seen == ["in_progress"]


async def test_unknown_status_keeps_waiting(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation(timeline=[("paused", HOUR), ("completed", None)])
    states: list[aj.JobState] = []

    def record(op: aj.AsyncOperation) -> None:
        states.append(op.job_state)
        server.clock.advance(HOUR)

    final = await aj.wait_until_terminal(zoo.async_operation(fake.id), timeout=5, on_update=record)
    assert states == [aj.JobState.UNKNOWN, aj.JobState.SUCCEEDED]
    assert final.status == "completed"


async def test_fake_clock_moves_jobs_without_sleeping(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation(timeline=[("queued", 3600.0), ("completed", None)])
    ref = zoo.async_operation(fake.id)
    assert (await ref.fetch()).status == "queued"
    server.clock.advance(3600)
    assert (await aj.wait_until_terminal(ref, timeout=5)).status == "completed"


async def test_cancellation_leaves_nothing_behind(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    before = client_tasks()
    async with anyio.create_task_group() as tg:
        tg.start_soon(aj.wait_until_terminal, zoo.async_operation(fake.id))
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    gc.collect()
    assert client_tasks() == before
    # The client still works after a cancelled wait.
    assert (await zoo.get_async_operation(fake.id)).status == "in_progress"


async def test_cancel_mid_request(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    server.inject("latency", delay=5.0, route="/async/operations/*")
    before = client_tasks()
    with anyio.move_on_after(0.05) as scope:
        await aj.wait_until_terminal(zoo.async_operation(fake.id))
    assert scope.cancelled_caught
    assert client_tasks() == before


async def test_negative_timeout_is_rejected(zoo: aj.ZooClient) -> None:
    with pytest.raises(ValueError):
        await aj.wait_until_terminal(zoo.async_operation("x"), timeout=-1)


def test_job_refs_compare_by_identity() -> None:
    client = aj.ZooClient(token="t", base_url="http://127.0.0.1:9")
    assert client.async_operation("a") == client.async_operation("a")
    assert len({client.async_operation("a"), client.async_operation("b")}) == 2
    assert repr(client.async_operation("a")) == "JobRef('zoo.async_operation:a')"


def test_job_refs_differ_by_kind_and_ids() -> None:
    client = aj.ZooClient(token="t", base_url="http://127.0.0.1:9")
    op = client.async_operation("a")
    assert op != client.async_operation("b")
    assert op != client.dataset_conversion("d", "a")
    assert op != "zoo.async_operation:a"
    assert op.key == "zoo.async_operation:a"


@pytest.mark.parametrize(
    "ids", [*[("a" * n,) for n in range(1, 13)], ("ds-1", "conv/2")], ids=lambda ids: str(ids)
)
def test_resume_tokens_keep_their_format(ids: tuple[str, ...]) -> None:
    """A token written by an earlier process (or version) still names the same job; the
    ids' lengths give tokens of every length the unpadded encoding can have."""
    client = aj.ZooClient(token="t", base_url="http://127.0.0.1:9")
    kind = "zoo.async_operation" if len(ids) == 1 else "zoo.dataset_conversion"
    payload = json.dumps([1, kind, list(ids)], separators=(",", ":")).encode()
    token = base64.urlsafe_b64encode(payload).decode().rstrip("=")  # unpadded base64url
    ref = aj.JobRef.from_token(token, client)
    assert (ref.kind, ref.ids) == (kind, ids)
    assert ref.to_token() == token
    newer = base64.urlsafe_b64encode(json.dumps([2, kind, list(ids)]).encode()).decode()
    with pytest.raises(ValueError, match="version 2"):
        aj.JobRef.from_token(newer, client)
