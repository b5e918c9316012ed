"""The fake speaks the real wire format: the official metafold SDK (synchronous, on requests)
lists and gets jobs and workflows from it, and exchanges client credentials at its token
endpoint. The SDK runs in a worker thread while the fake serves from the test's event loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timezone
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import metafold
import pytest
import requests

from async_jobs.testing import FakeApiServer

from .conftest import TOKEN

pytestmark = pytest.mark.anyio

PROJECT = "proj-sdk"
T = TypeVar("T")

ALL_STATES = [
    ("pending", [("pending", None)], None),
    ("started", [("started", None)], None),
    ("success", [("success", None)], None),
    ("failure", [("started", 0.0), ("failure", None)], "mesh is not watertight"),
    ("canceled", [("canceled", None)], None),
]


@contextmanager
def sdk_client(server: FakeApiServer, **options: Any) -> Iterator[Any]:
    kwargs: dict[str, Any] = {"project_id": PROJECT, "base_url": server.url + "/"}
    kwargs.update(options)
    if "client_id" not in kwargs:
        kwargs.setdefault("access_token", TOKEN)
    client = metafold.MetafoldClient(**kwargs)
    try:
        yield client
    finally:
        client._session.close()


async def in_thread(call: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(call)


def populate(server: FakeApiServer) -> dict[str, str]:
    ids = {}
    for state, timeline, error in ALL_STATES:
        ids[state] = server.metafold.add_job(PROJECT, timeline=timeline, error=error, name=state).id
    server.clock.advance(0.001)
    return ids


async def test_sdk_lists_and_gets_jobs_from_the_fake(server: FakeApiServer) -> None:
    ids = populate(server)
    with sdk_client(server) as client:
        jobs = await in_thread(lambda: client.jobs.list(sort="id:1"))
        assert [job.id for job in jobs] == sorted(ids.values())
        by_state = {job.state: job for job in jobs}
        assert set(by_state) == set(ids)
        for job in jobs:
            assert job.created.tzinfo is timezone.utc
            assert job.project_id == PROJECT
        done = by_state["success"]
        assert done.finished is not None and done.started is not None
        assert done.outputs.assets["volume"].job_id == done.id
        assert done.outputs.params == {"face_count": "1000", "vertex_count": "3000"}
        assert done.parameters == {"resolution": "256"}
        assert by_state["failure"].error == "mesh is not watertight"
        assert by_state["pending"].started is None
        started = await in_thread(lambda: client.jobs.list(q="state:started AND !name:pend*"))
        assert [job.id for job in started] == [ids["started"]]
        quoted = await in_thread(lambda: client.jobs.list(q='name:"succ*"'))
        assert [job.id for job in quoted] == [ids["success"]]
        one = await in_thread(lambda: client.jobs.get(ids["failure"]))
        assert one.id == ids["failure"] and one.state == "failure"


async def test_sdk_lists_and_gets_workflows_from_the_fake(server: FakeApiServer) -> None:
    wf = server.metafold.add_workflow(
        PROJECT,
        [
            {"name": "preprocess-mesh", "type": "mesh/preprocess", "timeline": [("success", None)]},
            {"name": "sample-mesh", "needs": ["preprocess-mesh"], "timeline": [("success", None)]},
        ],
    )
    with sdk_client(server) as client:
        (listed,) = await in_thread(lambda: client.workflows.list(sort="created:-1"))
        assert listed.id == wf.id and listed.state == "success"
        assert listed.jobs == wf.jobs and listed.project_id == PROJECT
        got = await in_thread(lambda: client.workflows.get(wf.id))
        assert got.finished is not None and "sample-mesh" in got.definition
        # The SDK's own helper walks the workflow's jobs (job names, then outputs).
        volume = await in_thread(lambda: got.get_asset("sample-mesh.volume"))
        assert volume is not None and volume.job_id == wf.jobs[1]


async def test_sdk_reads_the_fakes_error_bodies(server: FakeApiServer) -> None:
    server.metafold.add_project(PROJECT)
    with sdk_client(server) as client:
        with pytest.raises(requests.HTTPError, match="Resource does not exist"):
            await in_thread(lambda: client.jobs.get("missing"))
        with pytest.raises(requests.HTTPError, match="OR is not supported"):
            await in_thread(lambda: client.jobs.list(q="name:a OR name:b"))
        server.metafold.error_style = "msg"
        with pytest.raises(requests.HTTPError, match="Invalid sort string"):
            await in_thread(lambda: client.jobs.list(sort="size:1"))


async def test_sdk_client_credentials_against_the_fake_token_endpoint(
    server: FakeApiServer,
) -> None:
    server.metafold.add_client("sdk-client", "sdk-secret")
    job = server.metafold.add_job(PROJECT, timeline=[("success", None)])
    with sdk_client(
        server,
        client_id="sdk-client",
        client_secret="sdk-secret",
        auth_domain=f"{server.host}:{server.port}",
    ) as client:
        client._auth._get_token.protocol = "http"  # auth0's documented test switch
        jobs = await in_thread(lambda: client.jobs.list())
        assert [j.id for j in jobs] == [job.id]
    assert server.metafold.exchanges == 1
    (issued,) = server.metafold.tokens
    assert server.requests[-1].authorization == f"Bearer {issued}"


def test_fake_bodies_have_exactly_the_sdks_fields() -> None:
    import attrs
    from metafold.jobs import Job
    from metafold.workflows import Workflow

    fake = FakeApiServer()
    job = fake.metafold.add_job(PROJECT)
    wf = fake.metafold.add_workflow(PROJECT, [{"name": "a"}])
    job_fields = {f.name for f in attrs.fields(Job)}
    assert set(fake.metafold.job_body(PROJECT, job.id)) == job_fields
    workflow_fields = {f.name for f in attrs.fields(Workflow) if not f.name.startswith("_")}
    assert set(fake.metafold.workflow_body(PROJECT, wf.id)) <= workflow_fields


SAMPLE_MESH = """---
jobs:
  preprocess-mesh:
    type: mesh/preprocess
  sample-mesh:
    type: implicit/from-mesh
    needs:
    - preprocess-mesh
    assets:
      mesh: preprocess-mesh
...
"""


async def test_sdk_runs_and_cancels_workflows_on_the_fake(server: FakeApiServer) -> None:
    """``workflows.run`` posts the definition (202 + link) and polls the link while it answers
    202, until the 201 with the finished workflow; ``workflows.cancel`` parses the canceled
    one, and the 400 for a finished one is an error."""
    from .conftest import eventually

    server.clock.speed = 0  # the workflow runs only when the test moves the clock
    server.metafold.add_project(PROJECT)
    parameters = {"sample-mesh.resolution": "128"}
    assets = {"preprocess-mesh.mesh": "part.stl"}
    with sdk_client(server) as client:
        pending = await in_thread(
            lambda: client.workflows.run_async(SAMPLE_MESH, parameters, assets)
        )
        assert pending.state == "pending" and pending.definition == SAMPLE_MESH
        assert pending.link == f"{server.url}/projects/{PROJECT}/workflows/{pending.id}/status"
        assert len(pending.jobs) == 2 and pending.project_id == PROJECT

        def status_polls() -> int:
            return sum(r.path.endswith("/status") for r in server.requests)

        async with anyio.create_task_group() as tg:
            finished: list[Any] = []

            async def run() -> None:
                finished.append(
                    await in_thread(lambda: client.workflows.run(SAMPLE_MESH, timeout=60))
                )

            tg.start_soon(run)
            await eventually(lambda: status_polls() >= 1)  # answered 202: the SDK sleeps 1 s
            server.clock.advance(1000.0)
        (done,) = finished
        assert status_polls() >= 2
        assert done.state == "success" and done.finished is not None and done.link is not None
        assert done.id in done.link and done.id != pending.id
        sampled = await in_thread(lambda: done.get_parameter("sample-mesh.face_count"))
        assert sampled == "1000"  # the SDK found the job by name among the workflow's jobs

        assert server.metafold.state(PROJECT, pending.jobs[0]) == "success"
        fresh = await in_thread(lambda: client.workflows.run_async(SAMPLE_MESH))
        canceled = await in_thread(lambda: client.workflows.cancel(fresh.id))
        assert canceled.id == fresh.id and canceled.state == "canceled"
        assert {server.metafold.state(PROJECT, job) for job in fresh.jobs} == {"canceled"}
        with pytest.raises(requests.HTTPError, match="already finished"):
            await in_thread(lambda: client.workflows.cancel(fresh.id))
        with pytest.raises(requests.HTTPError, match='Expected parameter "definition"'):
            await in_thread(lambda: client.workflows.run_async(None))  # type: ignore[arg-type]
    assert server.metafold.cancel_calls == {fresh.id: 2}
