"""MetafoldClient end to end against FakeApiServer: jobs, workflows, sort/q, errors, client
credentials, and waiting on jobs and whole workflows."""

from __future__ import annotations

import gc
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import timezone
from typing import Any
from urllib.parse import quote

import anyio
import pytest

import async_jobs as aj
from async_jobs.metafold import Not, q
from async_jobs.testing import FakeApiServer

from .conftest import FAST_POLL, FAST_RETRY, TOKEN, client_tasks

pytestmark = pytest.mark.anyio

PROJECT = "proj-1"
CLIENT_ID = "client-abc"
#: Unlikely to appear anywhere by accident: finding it in a log or message is a leak.
SECRET = "sec-" + secrets.token_hex(16)
QUICK = [("pending", 0.02), ("started", 0.04), ("success", None)]


@pytest.fixture
async def mf(server: FakeApiServer) -> AsyncIterator[aj.MetafoldClient]:
    server.metafold.add_project(PROJECT)
    async with aj.MetafoldClient(
        TOKEN, server.url, PROJECT, retry=FAST_RETRY, poll=FAST_POLL, timeout=5
    ) as client:
        yield client


def oauth_client(server: FakeApiServer, **options: Any) -> aj.MetafoldClient:
    server.metafold.add_project(PROJECT)
    server.metafold.add_client(CLIENT_ID, SECRET)
    kwargs: dict[str, Any] = {
        "base_url": server.url,
        "project_id": PROJECT,
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "token_url": server.url + "/oauth/token",
        "retry": FAST_RETRY,
        "poll": FAST_POLL,
        "timeout": 5,
    }
    kwargs.update(options)
    return aj.MetafoldClient(**kwargs)


def project_requests(server: FakeApiServer) -> list[str]:
    return [r.path for r in server.requests if r.path.startswith("/projects/")]


# -- jobs and workflows -----------------------------------------------------------------------


async def test_list_and_get_jobs(server: FakeApiServer, mf: aj.MetafoldClient) -> None:
    a = server.metafold.add_job(PROJECT, name="a", timeline=[("success", None)])
    b = server.metafold.add_job(PROJECT, "mesh/preprocess", [("started", None)], name="b")
    server.metafold.add_job("other-project", name="elsewhere")
    jobs = await mf.list_jobs()
    assert {j.id for j in jobs} == {a.id, b.id}
    assert [j.id for j in jobs] == sorted((a.id, b.id), reverse=True)  # default: id desc
    job = await mf.get_job(a.id)
    assert job.state == "success" and job.job_state is aj.JobState.SUCCEEDED
    assert job.project_id == PROJECT and job.name == "a" and job.type == "implicit/from-mesh"
    assert job.created is not None and job.created.tzinfo is timezone.utc
    assert job.outputs is not None and job.outputs.assets is not None
    assert job.outputs.assets["volume"].job_id == a.id
    running = await mf.get_job(b.id, project_id=PROJECT)
    assert running.job_state is aj.JobState.RUNNING and running.started is not None
    assert running.finished is None and running.type == "mesh/preprocess"
    assert server.requests[-1].authorization == f"Bearer {TOKEN}"
    other = await mf.list_jobs("other-project")
    assert [j.name for j in other] == ["elsewhere"]


async def test_iso_datetimes_and_no_legacy_fields_decode_too(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    fake = server.metafold.add_job(PROJECT, timeline=[("success", None)])
    rfc = await mf.get_job(fake.id)
    server.metafold.datetime_format = "iso8601"
    server.metafold.legacy_fields = False
    iso = await mf.get_job(fake.id)
    assert rfc.created_raw is not None and rfc.created_raw.endswith(" GMT")
    assert iso.created_raw is not None and "T" in iso.created_raw
    assert iso.created == rfc.created and iso.finished == rfc.finished
    assert iso.assets is None and iso.parameters is None and rfc.parameters is not None


async def test_list_and_get_workflows(server: FakeApiServer, mf: aj.MetafoldClient) -> None:
    wf = server.metafold.add_workflow(PROJECT, [{"name": "one"}, {"name": "two", "needs": ["one"]}])
    (listed,) = await mf.list_workflows()
    assert listed.id == wf.id and listed.jobs == tuple(wf.jobs)
    got = await mf.get_workflow(wf.id)
    assert got.state == "pending" and got.definition is not None
    assert "two:" in got.definition and "needs: [one]" in got.definition
    jobs = [await mf.get_job(job_id) for job_id in got.jobs]
    assert [j.name for j in jobs] == ["one", "two"]
    assert jobs[1].needs == (jobs[0].id,) and jobs[1].workflow_id == wf.id


async def test_sort_and_q_reach_the_server_byte_for_byte(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    fm = server.metafold
    fm.add_job(PROJECT, "implicit/from-mesh", [("started", None)], name="My mesh b")
    fm.add_job(PROJECT, "implicit/from-mesh", [("started", None)], name="My mesh a")
    fm.add_job(PROJECT, "implicit/from-mesh", [("success", None)], name="My mesh c")
    fm.add_job(PROJECT, "mesh/preprocess", [("started", None)], name="a+b&c=d/==")
    query = q(state="started", type="implicit/*", name=["My *", Not("*c")])
    jobs = await mf.list_jobs(sort=("name", False), q=query)
    assert [j.name for j in jobs] == ["My mesh a", "My mesh b"]
    text = 'state:started AND type:implicit/* AND name:"My *" AND !name:*c'
    assert query == text
    assert server.requests[-1].query == {"sort": "name:1", "q": text}
    assert fm.raw_paths[-1] == f"/projects/{PROJECT}/jobs?sort=name%3A1&q={quote(text, safe='')}"
    # A plain string goes out untouched, every reserved character percent-encoded.
    nasty = 'name:"a+b&c=d/=="'
    (hit,) = await mf.list_jobs(q=nasty, sort="created:-1")
    assert hit.name == "a+b&c=d/=="
    assert fm.raw_paths[-1].endswith("q=name%3A%22a%2Bb%26c%3Dd%2F%3D%3D%22")
    assert server.requests[-1].query["q"] == nasty
    by_name_desc = await mf.list_jobs(sort="name:-1")
    assert [j.name for j in by_name_desc] == ["a+b&c=d/==", "My mesh c", "My mesh b", "My mesh a"]


async def test_workflow_sort_and_q(server: FakeApiServer, mf: aj.MetafoldClient) -> None:
    done = server.metafold.add_workflow(PROJECT, [{"name": "x", "timeline": [("success", None)]}])
    waiting = server.metafold.add_workflow(PROJECT, [{"name": "y"}])
    assert [w.id for w in await mf.list_workflows(q=q(state="success", resource="workflows"))] == [
        done.id
    ]
    assert [w.id for w in await mf.list_workflows(q=q(state=Not("success")))] == [waiting.id]
    ordered = await mf.list_workflows(sort=("created", True))
    assert [w.id for w in ordered] == [waiting.id, done.id]


async def test_arguments_are_checked_before_any_request(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    before = len(server.requests)
    async with aj.MetafoldClient(TOKEN, server.url) as no_project:
        with pytest.raises(ValueError, match="project id"):
            await no_project.list_jobs()
        with pytest.raises(ValueError, match="project id"):
            await no_project.get_workflow("w")
        with pytest.raises(ValueError, match="project id"):
            no_project.job("j")
        assert (await no_project.list_jobs(PROJECT)) == []
    with pytest.raises(ValueError):
        await mf.list_jobs(sort="size")
    with pytest.raises(ValueError):
        await mf.list_workflows(sort=("two words", True))
    with pytest.raises(ValueError, match="searched by"):
        await mf.list_workflows(q=q(name="x"))
    with pytest.raises(ValueError):
        await mf.get_job("")
    with pytest.raises(ValueError):
        mf.workflow("")
    assert len(server.requests) == before + 1


async def test_env_configuration(server: FakeApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.metafold.add_project("env-project")
    monkeypatch.setenv("METAFOLD_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("METAFOLD_BASE_URL", server.url)
    monkeypatch.setenv("METAFOLD_PROJECT_ID", "env-project")
    async with aj.MetafoldClient() as mf:
        assert mf.base_url == server.url and mf.project_id == "env-project"
        assert await mf.list_jobs() == []
    assert server.requests[-1].authorization == f"Bearer {TOKEN}"
    monkeypatch.delenv("METAFOLD_BASE_URL")
    async with aj.MetafoldClient() as default:
        assert default.base_url == "https://api.metafold3d.com"
    # Credentials from the environment win over a token from the environment (as the SDK)...
    monkeypatch.setenv("METAFOLD_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("METAFOLD_CLIENT_SECRET", SECRET)
    async with aj.MetafoldClient() as from_env:
        auth: Any = from_env._http._auth
        assert repr(auth).startswith("ClientCredentialsAuth(")
        assert auth.audience == "https://api.metafold3d.com/"  # as the official SDK sends it
        assert auth.token_url == "https://metafold3d.us.auth0.com/oauth/token"
    # ...but an explicit token wins over credentials from the environment.
    async with aj.MetafoldClient("explicit-token") as explicit:
        assert repr(explicit._http._auth) == "StaticTokenAuth(token=***)"
    with pytest.raises(ValueError, match="together"):
        aj.MetafoldClient(client_id="only-the-id")


# -- errors -----------------------------------------------------------------------------------


async def test_metafold_error_bodies_map_to_typed_errors(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    with pytest.raises(aj.NotFoundError) as missing:
        await mf.get_job("nope")
    assert missing.value.status == 404 and missing.value.message == "Resource does not exist"
    assert missing.value.code == "Not Found"
    with pytest.raises(aj.NotFoundError):
        await mf.get_workflow("nope")
    with pytest.raises(aj.NotFoundError, match="Project does not exist"):
        await mf.list_jobs("no-such-project")
    with pytest.raises(aj.BadRequestError) as bad:
        await mf.list_jobs(q="name:a OR name:b")
    assert bad.value.status == 400 and bad.value.code == "Bad Request"
    assert bad.value.message == "Invalid query: OR is not supported"
    server.inject("status", status=403, route="/projects/*")
    with pytest.raises(aj.AuthenticationError) as forbidden:
        await mf.list_jobs()
    assert forbidden.value.message == "injected fault" and forbidden.value.code == "Forbidden"
    async with aj.MetafoldClient("wrong-token", server.url, PROJECT) as wrong:
        with pytest.raises(aj.AuthenticationError) as unauthorized:
            await wrong.list_jobs()
    assert unauthorized.value.message == "invalid or missing API token"
    assert unauthorized.value.code == "Unauthorized"


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("msg", "Invalid query: OR is not supported"),
        ("errors", "q: Invalid query: OR is not supported"),
    ],
)
async def test_legacy_error_bodies_keep_the_message(
    server: FakeApiServer, mf: aj.MetafoldClient, style: Any, expected: str
) -> None:
    server.metafold.error_style = style
    with pytest.raises(aj.BadRequestError) as bad:
        await mf.list_jobs(q="name:a OR name:b")
    assert bad.value.message == expected
    with pytest.raises(aj.NotFoundError) as missing:
        await mf.get_job("nope")
    assert "Resource does not exist" in missing.value.message


async def test_transient_trouble_is_retried(server: FakeApiServer, mf: aj.MetafoldClient) -> None:
    fake = server.metafold.add_job(PROJECT, timeline=[("success", None)])
    server.inject("status", status=503, times=2, route=f"/projects/{PROJECT}/jobs/*")
    server.inject("drop", times=1, route=f"/projects/{PROJECT}/jobs/*")
    assert (await mf.get_job(fake.id)).state == "success"


# -- client credentials -----------------------------------------------------------------------


async def test_client_credentials_exchange_once_for_a_burst(server: FakeApiServer) -> None:
    server.metafold.add_job(PROJECT, name="j")
    async with oauth_client(server) as mf:
        assert mf.token_exchanges == 0  # nothing is sent before the first call
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(mf.list_jobs)
        assert mf.token_exchanges == 1 and server.metafold.exchanges == 1
        (token,) = server.metafold.tokens
        assert {r.authorization for r in server.requests if r.path.startswith("/projects")} == {
            f"Bearer {token}"
        }
        assert server.metafold.raw_paths and len(project_requests(server)) == 10
    token_requests = [r for r in server.requests if r.path == "/oauth/token"]
    assert len(token_requests) == 1 and token_requests[0].authorization is None


async def test_exchange_works_under_a_concurrency_cap(server: FakeApiServer) -> None:
    # The exchange is a request through the same transport: it must not wait for a slot held
    # by the very request that needs the token.
    async with oauth_client(server) as mf:
        mf.set_limits(max_concurrency=1)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(mf.list_jobs)
            server.metafold.revoke_tokens()
            await mf.list_jobs()
        assert mf.token_exchanges == 2


async def test_token_is_refreshed_before_it_expires(server: FakeApiServer) -> None:
    # A 2 s token is renewed once less than 1 s (half its lifetime) is left: two calls right
    # after the exchange reuse it (a whole second of slack on a busy machine), one after 1.1 s
    # renews it. The client's own clock is real time, so this test sleeps instead of advancing.
    server.metafold.token_lifetime = 2.0
    async with oauth_client(server) as mf:
        await mf.list_jobs()
        await mf.list_jobs()
        assert mf.token_exchanges == 1
        await anyio.sleep(1.1)
        await mf.list_jobs()
        assert mf.token_exchanges == 2
    # No request was ever refused: three calls, three requests, no retry after a 401.
    assert len(project_requests(server)) == 3


async def test_a_401_refreshes_once_and_retries(server: FakeApiServer) -> None:
    async with oauth_client(server) as mf:
        await mf.list_jobs()
        server.metafold.revoke_tokens()
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(mf.list_jobs)
        # Five requests refused with the same token share one new token.
        assert mf.token_exchanges == 2
        assert len(project_requests(server)) == 1 + 5 + 5
        # Refused again after the refresh: one refresh per request, then the typed error.
        server.inject("status", status=401, times=2, route="/projects/*")
        with pytest.raises(aj.AuthenticationError):
            await mf.list_jobs()
        assert mf.token_exchanges == 3


async def test_expired_token_on_the_server_clock_is_renewed(server: FakeApiServer) -> None:
    async with oauth_client(server) as mf:
        await mf.list_jobs()
        server.clock.advance(86400)  # the server says the token expired; the client can't know
        await mf.list_jobs()
        assert mf.token_exchanges == 2


async def test_bad_credentials_and_audience_are_typed_errors(server: FakeApiServer) -> None:
    async with oauth_client(server, client_secret="wrong-secret") as mf:
        with pytest.raises(aj.AuthenticationError) as denied:
            await mf.list_jobs()
    assert denied.value.status == 401 and denied.value.code == "access_denied"
    assert denied.value.message == "Unauthorized"
    async with oauth_client(server, audience="https://elsewhere.example/") as mf:
        with pytest.raises(aj.AuthenticationError, match="Service not found"):
            await mf.list_jobs()
    assert not project_requests(server)  # nothing was sent without a token
    with pytest.raises(ValueError, match="plain http"):
        oauth_client(server, token_url="http://auth.example/oauth/token")


async def test_token_endpoint_trouble_is_retried(server: FakeApiServer) -> None:
    server.inject("status", status=503, times=2, route="/oauth/token")
    async with oauth_client(server) as mf:
        assert await mf.list_jobs() == []
    assert server.metafold.exchanges == 1


async def test_secret_and_tokens_never_leak(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = server.metafold.add_job(PROJECT, timeline=[("started", None)])
    errors: list[BaseException] = []
    async with oauth_client(server) as mf:
        await mf.get_job(fake.id)
        server.metafold.revoke_tokens()
        await mf.get_job(fake.id)
        for kind, options in [
            ("status", {"status": 503, "times": None}),
            ("status", {"status": 400}),
            ("malformed", {}),
            ("drop", {"times": None}),
        ]:
            server.faults.clear()
            server.inject(kind, route="/projects/*", **options)
            with pytest.raises(aj.AsyncJobsError) as info:
                await mf.get_job(fake.id)
            errors.append(info.value)
        server.faults.clear()
        with pytest.raises(aj.WaitTimeout) as timeout:
            await aj.wait_until_terminal(mf.job(fake.id), timeout=0.05)
        errors.append(timeout.value)
        texts = [repr(mf), str(mf), repr(mf._http), repr(vars(mf)), repr(mf._http._auth)]
    # The server echoing a token back in a job's error is masked in the log line too.
    tokens = {r.authorization.split()[-1] for r in server.requests if r.authorization}
    assert len(tokens) == 2
    async with oauth_client(server) as mf:
        server.metafold.add_job(PROJECT, timeline=[(f"odd {SECRET}", None)])
        odd = [job for job in await mf.list_jobs() if job.state.startswith("odd")]
        assert [job.job_state for job in odd] == [aj.JobState.UNKNOWN]  # logs a warning
    for error in errors:
        texts += [str(error), repr(error), repr(vars(error))]
    texts += [r.getMessage() for r in caplog.records]
    assert caplog.records
    for text in texts:
        assert SECRET not in text
        for token in tokens:
            assert token not in text


# -- waiting ----------------------------------------------------------------------------------


async def test_wait_on_a_job(server: FakeApiServer, mf: aj.MetafoldClient) -> None:
    fake = server.metafold.add_job(PROJECT, timeline=QUICK)
    seen: list[str] = []
    final = await aj.wait_until_terminal(
        mf.job(fake.id), timeout=5, on_update=lambda job: seen.append(job.state)
    )
    assert seen == ["pending", "started", "success"]
    assert final.is_terminal and final.progress == 1.0 and final.finished is not None
    assert mf.job(fake.id).key == f"metafold.job:{PROJECT}/{fake.id}"
    assert mf.job(fake.id).ids == (PROJECT, fake.id)


async def test_refs_can_be_remade_from_kind_and_ids(mf: aj.MetafoldClient) -> None:
    for ref in (mf.job("j1", project_id="other"), mf.workflow("w1")):
        again = mf.job_ref(ref.kind, ref.ids)
        assert again == ref and again is not None and again.ids == ref.ids
    assert mf.job_ref("zoo.async_operation", ("x",)) is None


async def test_failed_job_is_a_result_or_raises(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    fake = server.metafold.add_job(
        PROJECT, timeline=[("started", 0.02), ("failure", None)], error="mesh is not watertight"
    )
    final = await aj.wait_until_terminal(mf.job(fake.id), timeout=5)
    assert final.job_state is aj.JobState.FAILED and final.error == "mesh is not watertight"
    with pytest.raises(aj.JobFailed, match="watertight"):
        await aj.wait_until_terminal(mf.job(fake.id), raise_on_failure=True)


async def test_wait_on_a_workflow(server: FakeApiServer, mf: aj.MetafoldClient) -> None:
    wf = server.metafold.add_workflow(
        PROJECT,
        [
            {"name": "pre", "timeline": QUICK},
            {"name": "sample", "needs": ["pre"], "timeline": QUICK},
        ],
    )
    states: list[str] = []
    final = await aj.wait_until_terminal(
        mf.workflow(wf.id), timeout=5, on_update=lambda w: states.append(w.state)
    )
    assert final.state == "success" and final.job_state is aj.JobState.SUCCEEDED
    assert states[0] == "pending" and "started" in states
    assert final.started is not None and final.finished is not None
    assert final.started <= final.finished


def five_jobs(slow: float = 0.06) -> list[dict[str, Any]]:
    """pre -> (sample FAILS, other) -> down (needs sample, other) -> last; plus a slow side job.

    Listed out of dependency order on purpose."""
    return [
        {"name": "last", "needs": ["down"], "timeline": QUICK},
        {"name": "down", "needs": ["sample", "other"], "timeline": QUICK},
        {
            "name": "sample",
            "needs": ["pre"],
            "timeline": [("pending", 0.01), ("started", 0.03), ("failure", None)],
            "error": "out of memory",
        },
        {
            "name": "other",
            "needs": ["pre"],
            "timeline": [("pending", 0.01), ("started", slow), ("success", None)],
        },
        {"name": "pre", "timeline": QUICK},
    ]


async def test_workflow_jobs_in_dependency_order_with_one_failure(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    server.clock.set_speed(0)  # stopped until "pre" was seen pending, however busy the machine
    wf = server.metafold.add_workflow(PROJECT, five_jobs())
    updates: list[tuple[str | None, str]] = []

    def record(job: aj.MetafoldJob) -> None:
        updates.append((job.name, job.state))
        if (job.name, job.state) == ("pre", "pending"):
            server.clock.set_speed(1.0)

    jobs = await aj.wait_for_workflow_jobs(mf, wf.id, timeout=5, on_update=record)
    # Listed as last, down, sample, other, pre: each job comes after the jobs it needs.
    assert [j.name for j in jobs] == ["pre", "sample", "other", "down", "last"]
    states = {j.name: j.state for j in jobs}
    assert states == {
        "pre": "success",
        "sample": "failure",
        "other": "success",
        "down": "canceled",
        "last": "canceled",
    }
    assert all(j.is_terminal for j in jobs)
    assert next(j for j in jobs if j.name == "sample").error == "out of memory"
    assert ("sample", "failure") in updates and ("pre", "pending") in updates
    final = await aj.wait_until_terminal(mf.workflow(wf.id), timeout=5)
    assert final.job_state is aj.JobState.FAILED


async def test_fail_fast_cancels_the_rest_and_leaves_no_task(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    wf = server.metafold.add_workflow(PROJECT, five_jobs(slow=3600.0))
    before = client_tasks()
    with anyio.fail_after(5):
        with pytest.raises(aj.JobFailed) as info:
            await aj.wait_for_workflow_jobs(mf, wf.id, fail_fast=True, max_concurrency=2)
    # The failure, or a job it canceled, whichever was polled first.
    failed = info.value.job
    assert (failed.name, failed.state) in {
        ("sample", "failure"),
        ("down", "canceled"),
        ("last", "canceled"),
    }
    assert server.metafold.state(PROJECT, wf.jobs[3]) == "started"  # "other" still runs
    gc.collect()
    assert client_tasks() == before
    # The client still works after the cancelled waits.
    assert (await mf.get_workflow(wf.id)).state == "started"


async def test_workflow_wait_timeout_carries_the_last_jobs(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    wf = server.metafold.add_workflow(
        PROJECT, [{"name": "a", "timeline": QUICK}, {"name": "b", "timeline": [("started", None)]}]
    )
    with pytest.raises(aj.WaitTimeout) as info:
        await aj.wait_for_workflow_jobs(mf, wf.id, timeout=0.3)
    last = info.value.last
    assert isinstance(last, list) and len(last) == 2
    assert last[0].state == "success" and last[1].state == "started"


async def test_workflow_wait_errors_are_raised_plainly(
    server: FakeApiServer, mf: aj.MetafoldClient
) -> None:
    with pytest.raises(aj.NotFoundError):
        await aj.wait_for_workflow_jobs(mf, "no-such-workflow", timeout=5)
    wf = server.metafold.add_workflow(PROJECT, [{"name": "a", "timeline": [("started", None)]}])
    server.inject("status", status=404, route=f"/projects/{PROJECT}/jobs/*")
    with pytest.raises(aj.NotFoundError):  # not an ExceptionGroup
        await aj.wait_for_workflow_jobs(mf, wf.id, timeout=5)
    with pytest.raises(ValueError):
        await aj.wait_for_workflow_jobs(mf, wf.id, max_concurrency=0)


async def test_canceled_workflow(server: FakeApiServer, mf: aj.MetafoldClient) -> None:
    wf = server.metafold.add_workflow(
        PROJECT, [{"name": "a", "timeline": [("started", None)]}, {"name": "b", "needs": ["a"]}]
    )

    def cancel_once_running(job: aj.MetafoldJob) -> None:
        if job.state == "started":
            server.metafold.cancel_workflow(PROJECT, wf.id)

    jobs = await aj.wait_for_workflow_jobs(mf, wf.id, timeout=5, on_update=cancel_once_running)
    assert [(j.name, j.state) for j in jobs] == [("a", "canceled"), ("b", "canceled")]
    assert (await mf.get_workflow(wf.id)).job_state is aj.JobState.CANCELED
