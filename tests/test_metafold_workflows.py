"""Metafold workflows dispatched and canceled through the API, end to end against
FakeApiServer: ``create_workflow`` (YAML definitions, jobs run in ``needs`` order on the fake
clock), ``cancel_workflow`` and workflow refs that cancel, the fake's ``/status`` route, the
definitions it refuses, and a POST that is sent again only when the server surely did not act.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer

from .conftest import FAST_POLL, FAST_RETRY, TOKEN, eventually

pytestmark = pytest.mark.anyio

PROJECT = "proj-wf"
#: b and c need a; listed before a, so dependency order differs from definition order.
DIAMOND = """---
jobs:
  b:
    type: mesh/compute-bvh
    needs: [a]
    assets:
      mesh: a
  c:
    type: implicit/from-mesh
    needs:
    - a
    parameters:
      resolution: 256
  a:
    type: mesh/preprocess
...
"""
#: a -> b -> d, and a -> c.
CHAIN = """
jobs:
  a: {type: mesh/preprocess}
  b: {type: mesh/compute-bvh, needs: [a]}
  c: {type: implicit/from-mesh, needs: [a]}
  d: {type: mesh/from-volume, needs: [b]}
"""
#: Each job of a created workflow: pending 1 s (and until its needs succeeded), started 10 s.
SLOW = [("pending", 1.0), ("started", 10.0), ("success", None)]


@pytest.fixture
async def mf(server: FakeApiServer) -> AsyncIterator[aj.MetafoldClient]:
    server.clock.speed = 0  # the fake's jobs move only when a test advances its clock
    server.metafold.add_project(PROJECT)
    server.metafold.workflow_job_timeline = SLOW
    async with aj.MetafoldClient(
        TOKEN, server.url, PROJECT, retry=FAST_RETRY, poll=FAST_POLL, timeout=5
    ) as client:
        yield client


@asynccontextmanager
async def clock_running(server: FakeApiServer, step: float = 1.0) -> AsyncIterator[None]:
    """Advance the fake clock by ``step`` every few milliseconds while the block runs."""

    async def tick() -> None:
        while True:
            await anyio.sleep(0.005)
            server.clock.advance(step)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


def posts(server: FakeApiServer, path: str) -> int:
    return sum(r.method == "POST" and r.path == path for r in server.requests)


def by_name(jobs: list[aj.MetafoldJob]) -> dict[str | None, aj.MetafoldJob]:
    return {job.name: job for job in jobs}


# -- create and wait --------------------------------------------------------------------------


async def test_created_workflow_runs_its_jobs_in_needs_order(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    wf = await mf.create_workflow(
        DIAMOND, assets={"a.mesh": "part.stl"}, parameters={"c.patch_size": "8"}
    )
    assert wf.state == "pending" and wf.job_state is aj.JobState.PENDING
    assert wf.definition == DIAMOND and wf.project_id == PROJECT and len(wf.jobs) == 3
    assert wf.link == f"{server.url}/projects/{PROJECT}/workflows/{wf.id}/status"
    assert server.metafold.created_workflows == [wf.id]
    assert posts(server, f"/projects/{PROJECT}/workflows") == 1
    first = by_name([await mf.get_job(job_id) for job_id in wf.jobs])
    assert [first[n].id for n in ("b", "c", "a")] == list(wf.jobs)  # definition order
    assert first["b"].needs == (first["a"].id,) == first["c"].needs
    assert first["a"].type == "mesh/preprocess" and first["a"].workflow_id == wf.id
    assert first["c"].parameters == {"resolution": "256", "patch_size": "8"}

    server.clock.advance(5.0)  # a runs; b and c wait for it
    states = {n: (await mf.get_job(first[n].id)).state for n in "abc"}
    assert states == {"a": "started", "b": "pending", "c": "pending"}
    assert (await mf.get_workflow(wf.id)).state == "started"

    async with clock_running(server):
        done = await aj.wait_until_terminal(mf.workflow(wf.id), timeout=20)
        jobs = await aj.wait_for_workflow_jobs(mf, wf.id, timeout=20)
    assert done.state == "success" and done.finished is not None
    assert [job.name for job in jobs] == ["a", "b", "c"]  # dependency order
    a, b, c = jobs
    assert all(job.state == "success" for job in jobs)
    assert a.finished is not None and b.started is not None and c.started is not None
    assert b.started >= a.finished and c.started >= a.finished
    assert b.finished is not None and c.finished is not None
    assert done.finished == max(b.finished, c.finished)


async def test_a_failing_job_cancels_what_needs_it_and_fails_the_workflow(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    server.metafold.failing_jobs = {"b": "mesh is not watertight"}
    server.metafold.workflow_job_timelines = {"c": [("pending", 0.0), ("success", None)]}
    wf = await mf.create_workflow(CHAIN)
    async with clock_running(server):
        done = await aj.wait_until_terminal(mf.workflow(wf.id), timeout=20)
        jobs = by_name(await aj.wait_for_workflow_jobs(mf, wf.id, timeout=20))
    assert done.state == "failure" and done.job_state is aj.JobState.FAILED
    assert {name: job.state for name, job in jobs.items()} == {
        "a": "success",
        "b": "failure",
        "c": "success",
        "d": "canceled",
    }
    assert jobs["b"].error == "mesh is not watertight"
    assert jobs["b"].started is not None and jobs["b"].finished is not None
    assert jobs["b"].finished > jobs["b"].started  # it ran its course, then failed
    assert jobs["d"].error is not None and jobs["b"].id in jobs["d"].error
    assert jobs["d"].started is None


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_a_running_workflow_cancels_its_unfinished_jobs(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    server.metafold.failing_jobs = {"c": "boom"}
    server.metafold.workflow_job_timelines = {"c": [("pending", 0.0), ("started", 0.5)]}
    wf = await mf.create_workflow(CHAIN)
    server.clock.advance(12.0)  # a succeeded at 11; b runs, c failed at 11.5, d waits for b
    assert (await mf.get_workflow(wf.id)).state == "started"
    canceled = await mf.cancel_workflow(wf.id)
    assert canceled.id == wf.id and canceled.state == "canceled"  # not failure: canceled
    assert canceled.finished is not None
    assert server.metafold.cancel_calls == {wf.id: 1}
    names = {job_id: server.metafold.projects[PROJECT].jobs[job_id].name for job_id in wf.jobs}
    truth = {names[j]: server.metafold.state(PROJECT, j) for j in wf.jobs}
    assert truth == {"a": "success", "b": "canceled", "c": "failure", "d": "canceled"}
    server.clock.advance(100.0)  # nothing resumes
    assert (await mf.get_workflow(wf.id)).state == "canceled"
    assert {names[j]: server.metafold.state(PROJECT, j) for j in wf.jobs} == truth

    with pytest.raises(aj.BadRequestError, match="already finished") as caught:
        await mf.cancel_workflow(wf.id)
    assert caught.value.status == 400 and caught.value.code == "Bad Request"
    assert server.metafold.cancel_calls[wf.id] == 2
    with pytest.raises(aj.NotFoundError):
        await mf.cancel_workflow("no-such-workflow")


async def test_a_finished_workflow_cannot_be_canceled(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    wf = await mf.create_workflow(CHAIN)
    server.clock.advance(100.0)
    assert (await mf.get_workflow(wf.id)).state == "success"
    with pytest.raises(aj.BadRequestError, match=r"already finished \(success\)"):
        await mf.cancel_workflow(wf.id)
    assert (await mf.get_workflow(wf.id)).state == "success"
    assert server.metafold.cancel_calls[wf.id] == 1


async def test_workflow_refs_cancel_and_job_refs_cannot(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    wf = await mf.create_workflow(DIAMOND)
    ref = mf.workflow(wf.id)
    assert ref.can_cancel
    result = await ref.cancel()
    assert isinstance(result, aj.MetafoldWorkflow) and result.state == "canceled"
    assert server.metafold.cancel_calls == {wf.id: 1}
    assert (await aj.wait_until_terminal(ref, timeout=5)).state == "canceled"
    job_ref = mf.job(wf.jobs[0])
    assert not job_ref.can_cancel
    with pytest.raises(NotImplementedError):
        await job_ref.cancel()
    assert [r.method for r in server.requests if r.path.endswith("/cancel")] == ["POST"]


async def test_a_timed_out_wait_cancels_the_workflow_on_the_server(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    wf = await mf.create_workflow(CHAIN)
    server.clock.advance(5.0)  # a runs, the others wait: the clock stands still from here
    with pytest.raises(aj.WaitTimeout) as caught:
        await aj.wait_until_terminal(mf.workflow(wf.id), timeout=0.2, cancel_on_timeout=True)
    last = caught.value.last
    assert isinstance(last, aj.MetafoldWorkflow) and last.state == "canceled"
    _canceled_once_on_the_server(server, wf)


def _canceled_once_on_the_server(server: FakeApiServer, wf: aj.MetafoldWorkflow) -> None:
    """One cancel reached the server, and the workflow and all its jobs are canceled there."""
    assert server.metafold.cancel_calls == {wf.id: 1}
    assert server.metafold.workflow_body(PROJECT, wf.id)["state"] == "canceled"
    assert {server.metafold.state(PROJECT, job) for job in wf.jobs} == {"canceled"}


async def test_a_cancelled_caller_leaves_the_workflow_canceled_on_the_server(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    wf = await mf.create_workflow(CHAIN)
    path = f"/projects/{PROJECT}/workflows/{wf.id}"
    ref = mf.workflow(wf.id)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: aj.wait_until_terminal(ref, cancel_on_timeout=True))
        await eventually(lambda: sum(r.path == path for r in server.requests) >= 2, timeout=10)
        tg.cancel_scope.cancel()
    _canceled_once_on_the_server(server, wf)


# -- the fake's wire --------------------------------------------------------------------------


async def test_status_is_202_while_running_then_201_with_the_workflow(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    wf = await mf.create_workflow(DIAMOND)
    assert wf.link is not None
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(wf.link) as response:
            assert response.status == 202
            assert await response.json() == {"state": "pending"}
        server.clock.advance(5.0)
        async with session.get(wf.link) as response:
            assert (response.status, await response.json()) == (202, {"state": "started"})
        server.clock.advance(100.0)
        async with session.get(wf.link) as response:
            assert response.status == 201
            body: dict[str, Any] = await response.json()
        async with session.get(wf.link.replace(wf.id, "nope")) as response:
            assert response.status == 404
            assert (await response.json())["description"] == "Resource does not exist"
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.get(wf.link) as response:
                assert response.status == 401 and "description" in await response.json()
            url = f"{server.url}/projects/{PROJECT}/workflows"
            async with anonymous.post(url, json={"definition": DIAMOND}) as response:
                assert response.status == 401
    assert body["state"] == "success" and body["link"] == wf.link and body["id"] == wf.id
    assert server.metafold.created_workflows == [wf.id]  # the anonymous POST made nothing


async def test_faults_apply_to_the_new_routes(server: FakeApiServer, mf: aj.MetafoldClient) -> None:
    wf = await mf.create_workflow(DIAMOND)
    server.inject("status", status=403, route="*/cancel")
    with pytest.raises(aj.AuthenticationError):
        await mf.cancel_workflow(wf.id)
    assert server.metafold.cancel_calls == {}  # refused before the handler


@pytest.mark.parametrize(
    ("definition", "description"),
    [
        ("", 'Expected parameter "definition"'),
        ("   \n", 'Expected parameter "definition"'),
        ("just text", "Invalid workflow definition: Expected `object`, got `str`"),
        ("jobs: [1", "Invalid workflow definition: while parsing a flow sequence"),
        ("steps: {a: {type: x}}", "Invalid workflow definition: Object missing required field"),
        ("jobs: {}", "Invalid workflow definition: it has no jobs"),
        ("jobs: {a: {needs: []}}", "Object missing required field `type`"),
        ("jobs: {a: {type: x, needs: [z]}}", "job 'a' needs an unknown job 'z'"),
        ("jobs: {a: {type: x, needs: [b]}, b: {type: y, needs: [a]}}", "form a cycle"),
        (
            "jobs: {a: {type: x}, b: {type: y, assets: {mesh: a}}}",
            'job "b" reads asset "mesh" from "a", which it does not need',
        ),
    ],
)
async def test_refused_definitions_are_bad_requests_with_the_servers_reason(
    server: FakeApiServer, mf: aj.MetafoldClient, definition: str, description: str
) -> None:
    with pytest.raises(aj.BadRequestError) as caught:
        await mf.create_workflow(definition)
    assert caught.value.status == 400 and caught.value.code == "Bad Request"
    assert caught.value.message is not None and description in caught.value.message
    assert server.metafold.created_workflows == []
    assert server.metafold.projects[PROJECT].workflows == {}


async def test_refused_request_bodies(server: FakeApiServer, mf: aj.MetafoldClient) -> None:
    with pytest.raises(aj.BadRequestError, match='no job "x" in the workflow'):
        await mf.create_workflow(CHAIN, parameters={"x.resolution": "1"})
    with pytest.raises(aj.BadRequestError, match=r'expected "job.asset"'):
        await mf.create_workflow(CHAIN, assets={"mesh": "part.stl"})
    url = f"{server.url}/projects/{PROJECT}/workflows"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for body, reason in (
            ({"assets": {"a.mesh": "x"}}, 'Expected parameter "definition"'),
            ({"definition": CHAIN, "parameters": {"a.n": 1}}, 'Parameter "parameters" must'),
            ([CHAIN], "must be a JSON object"),
        ):
            async with session.post(url, json=body) as response:
                assert response.status == 400
                error = await response.json()
            assert error["code"] == 400 and error["name"] == "Bad Request"
            assert reason in error["description"]
        async with session.post(url, data=b"definition: x") as response:
            assert response.status == 400
        async with session.post(f"{server.url}/projects/nope/workflows", json={}) as response:
            assert response.status == 404
    with pytest.raises(TypeError):
        await mf.create_workflow(CHAIN, parameters={"a.n": 1})  # type: ignore[dict-item]
    assert server.metafold.created_workflows == []


async def test_without_pyyaml_the_fake_says_which_extra_to_install(
    server: FakeApiServer, mf: aj.MetafoldClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml now fails
    with pytest.raises(aj.ServerError, match=r"PyYAML: pip install 'async-jobs\[testing\]'"):
        await mf.create_workflow(CHAIN)
    wf = server.metafold.add_workflow(PROJECT, [{"name": "a"}])  # the rest needs no YAML
    assert [w.id for w in await mf.list_workflows()] == [wf.id]


# -- a POST is sent again only when the server surely did not act ------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "error", "acted"),
    [
        ("status", {"status": 500}, aj.ServerError, False),
        ("status", {"status": 503}, aj.ServerError, False),
        ("status", {"status": 502, "retry_after": "0"}, aj.ServerError, False),
        ("drop", {}, aj.TransportError, False),
        ("truncated", {}, aj.TransportError, True),  # created, then the answer was cut
    ],
)
async def test_create_is_not_sent_again_when_the_server_may_have_acted(
    server: FakeApiServer,
    mf: aj.MetafoldClient,
    kind: Any,
    options: dict[str, Any],
    error: type[Exception],
    acted: bool,
) -> None:
    path = f"/projects/{PROJECT}/workflows"
    server.inject(kind, route=path, times=None, **options)
    with pytest.raises(error):
        await mf.create_workflow(CHAIN)
    assert posts(server, path) == 1
    assert len(server.metafold.created_workflows) == (1 if acted else 0)


@pytest.mark.parametrize(
    "options", [{"status": 429, "retry_after": "0"}, {"status": 503, "retry_after": "0"}]
)
async def test_create_is_sent_again_when_the_server_says_it_did_not_act(
    server: FakeApiServer, mf: aj.MetafoldClient, options: dict[str, Any]
) -> None:
    path = f"/projects/{PROJECT}/workflows"
    fault = server.inject("status", route=path, times=2, **options)
    wf = await mf.create_workflow(CHAIN)
    assert fault.hits == 2 and posts(server, path) == 3
    assert server.metafold.created_workflows == [wf.id]
    assert list(server.metafold.projects[PROJECT].workflows) == [wf.id]


async def test_cancel_is_not_sent_again_after_a_500(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    wf = await mf.create_workflow(CHAIN)
    server.inject("status", status=500, route="*/cancel", times=None)
    with pytest.raises(aj.ServerError):
        await mf.workflow(wf.id).cancel()
    assert posts(server, f"/projects/{PROJECT}/workflows/{wf.id}/cancel") == 1
