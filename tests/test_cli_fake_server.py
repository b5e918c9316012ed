"""``async-jobs fake-server``'s parts, in process: the control route (``POST /_control/jobs``)
driven by a second HTTP client while the CLI or the library waits on the job it added; the
seeded jobs spread over an hour of fake time; the start-up text naming the seeded ids. (The
command itself, in a subprocess, is in test_cli.py.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import async_jobs as aj
from async_jobs import cli
from async_jobs.testing import FakeApiServer
from async_jobs.testing._control import CONTROL_JOBS_PATH, ControlApi
from async_jobs.testing._scenarios import DEMO_DATASET, DEMO_PROJECT, populate

from .conftest import FAST_POLL, TOKEN
from .test_cli import _cli, _lines, _set_env

pytestmark = pytest.mark.anyio


@pytest.fixture
async def controlled() -> AsyncIterator[FakeApiServer]:
    """A fake server with the control route, as ``fake-server`` runs it."""
    async with FakeApiServer(token=TOKEN, apis=[ControlApi()]) as fake:
        yield fake


async def _post(
    server: FakeApiServer, body: Any, token: str | None = TOKEN
) -> tuple[int, dict[str, Any]]:
    """The control request of another process: a plain HTTP client of its own."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, str) else json.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.url + CONTROL_JOBS_PATH, data=data, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_control_route_adds_jobs_that_the_cli_and_the_library_wait_on(
    controlled: FakeApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = controlled
    _set_env(
        monkeypatch,
        ZOO_API_TOKEN=TOKEN,
        ZOO_HOST=server.url,
        METAFOLD_ACCESS_TOKEN=TOKEN,
        METAFOLD_BASE_URL=server.url,
    )
    status, op = await _post(
        server,
        {
            "kind": "zoo.async_operation",
            "type": "file_volume",
            "timeline": [["in_progress", 0.05], ["completed", None]],
        },
    )
    assert status == 201, op
    assert op["kind"] == "zoo.async_operation" and op["ids"] == [op["id"]]
    assert op["wait"] == f"async-jobs zoo ops wait {op['id']}"
    assert server.zoo.operations[op["id"]].type == "file_volume"
    assert await _cli(*op["wait"].split()[1:], "--json") == 0
    final = _lines(capsys.readouterr().out)[-1]
    assert final["event"] == "final" and final["id"] == op["id"] and final["state"] == "succeeded"

    status, job = await _post(
        server,
        {
            "kind": "metafold.job",
            "name": "slow-one",
            "project": "p9",
            "timeline": [["started", 0.05], ["failure", None]],
            "error": "no mesh",
        },
    )
    assert status == 201, job
    assert job["ids"] == ["p9", job["id"]]
    assert await _cli(*job["wait"].split()[1:], "--json") == 1
    final = _lines(capsys.readouterr().out)[-1]
    assert (final["state"], final["error"], final["job"]["name"]) == (
        "failed",
        "no mesh",
        "slow-one",
    )

    # A conversion in the demo dataset (the default), with a phase walk; the library waits.
    status, conversion = await _post(
        server,
        {
            "kind": "zoo.dataset_conversion",
            "timeline": [["queued", 0.02], ["convert_raw_kcl", 0.02], ["completed", None]],
        },
    )
    assert status == 201, conversion
    assert conversion["ids"] == [DEMO_DATASET, conversion["id"]]
    async with aj.ZooClient(token=TOKEN, base_url=server.url) as zoo:
        done = await aj.wait_until_terminal(
            zoo.dataset_conversion(DEMO_DATASET, conversion["id"]), timeout=20, poll=FAST_POLL
        )
    assert done.job_state is aj.JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("body", "token", "status", "message"),
    [
        ({"kind": "zoo.async_operation"}, None, 401, "token"),
        ({"kind": "zoo.async_operation"}, "wrong-token", 401, "token"),
        ("not json", "right", 400, "not JSON"),
        ([1, 2], "right", 400, "JSON object"),
        ({"kind": "zoo.thing"}, "right", 400, "kind must be one of"),
        ({"kind": "metafold.job", "colour": "red"}, "right", 400, "unknown fields: colour"),
        ({"kind": "metafold.job", "timeline": []}, "right", 400, "non-empty list"),
        ({"kind": "metafold.job", "timeline": [["started", -1]]}, "right", 400, "seconds >= 0"),
        ({"kind": "metafold.job", "timeline": [["started", 1]]}, "right", 400, "must be null"),
        ({"kind": "zoo.async_operation", "type": ""}, "right", 400, "type must be"),
        ({"kind": "zoo.dataset_conversion", "dataset": "nope"}, "right", 400, "nope"),
    ],
)
async def test_control_route_refuses_what_it_cannot_use(
    controlled: FakeApiServer, body: Any, token: str | None, status: int, message: str
) -> None:
    got, answer = await _post(controlled, body, TOKEN if token == "right" else token)
    assert (got, message in json.dumps(answer)) == (status, True), answer
    assert not controlled.zoo.operations and not controlled.metafold.projects
    assert not controlled.conversions.datasets


async def test_seeded_jobs_end_over_an_hour_not_all_within_seconds() -> None:
    """On the fake's clock (frozen, then moved by hand): the demo's quick jobs are over by
    10 s, when others still run; one still runs at 10 minutes; all end as expected by 2 h."""
    async with FakeApiServer(token=TOKEN) as server:
        server.clock.set_speed(0)
        seeded = populate(server, "demo")
        quick = {job.ids[-1] for job in populate(FakeApiServer(), "demo", long_running=False)}
        assert len(seeded) > len(quick) == 31
        expected = {job.ids[-1]: job.expected_state for job in seeded}
        async with (
            aj.ZooClient(token=TOKEN, base_url=server.url) as zoo,
            aj.MetafoldClient(token=TOKEN, base_url=server.url, project_id=DEMO_PROJECT) as mf,
        ):

            async def states() -> dict[str, aj.JobState]:
                found: list[Any] = [op async for op in zoo.iter_async_operations()]
                found += [c async for c in zoo.iter_dataset_conversions(DEMO_DATASET)]
                found += await mf.list_jobs()
                return {job.id: job.job_state for job in found}

            running = {aj.JobState.PENDING, aj.JobState.RUNNING}
            server.clock.advance(10)
            at_10s = await states()
            assert set(at_10s) == set(expected)
            still = [job_id for job_id, state in at_10s.items() if state in running]
            assert len(still) >= 6 and len(still) == len(seeded) - len(quick)
            server.clock.advance(600)
            assert sum(state in running for state in (await states()).values()) >= 1
            server.clock.advance(7200)
            final = await states()
            assert {job_id: state.value for job_id, state in final.items()} == expected


async def test_start_up_text_names_the_seeded_ids_and_the_control_route() -> None:
    async with FakeApiServer() as server:
        seeded = cli._seeded(populate(server, "demo"))
        text = cli._fake_server_text(
            server.url, "test-token", None, DEMO_DATASET, DEMO_PROJECT, seeded, "URL/_control/jobs"
        )
    assert f"Zoo dataset:      {DEMO_DATASET}" in text
    assert f"Metafold project: {DEMO_PROJECT}" in text
    assert f"async-jobs zoo conversions list {DEMO_DATASET}" in text
    assert f"METAFOLD_PROJECT_ID={DEMO_PROJECT}" in text
    assert "curl -X POST URL/_control/jobs" in text
    assert seeded["zoo.async_operation"][-1] in text  # the hour-long one, to wait on
