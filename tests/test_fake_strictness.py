"""The fake is not kinder than the real APIs, and the library behaves against it.

Each test arms one strict default or one option of :class:`FakeApiServer` where the real
servers vary (``server.zoo.options``, ``server.overload()``, ``server.metafold.audience``)
and drives the real client against it over HTTP. Facts from the specs
(``zoo-async-subset.json``, ``metafold-jobs-subset.json``) are quoted where they are used.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import anyio
import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer

from .conftest import FAST_POLL, FAST_RETRY, TOKEN

pytestmark = pytest.mark.anyio

#: A step long enough that only the test moves the fake clock past it.
STEP = 1000.0
#: A backoff no test could sit through: a retry that comes quickly came from Retry-After.
PATIENT_RETRY = aj.RetryPolicy(max_attempts=3, initial=1000.0, multiplier=1.0, maximum=1000.0)
#: A hang guard, not a measurement: generous enough for a machine under load.
HANG_GUARD = 60.0


def _zoo(server: FakeApiServer, **options: Any) -> aj.ZooClient:
    kwargs: dict[str, Any] = {
        "token": TOKEN,
        "base_url": server.url,
        "retry": FAST_RETRY,
        "poll": FAST_POLL,
        "timeout": 10,
    }
    kwargs.update(options)
    return aj.ZooClient(**kwargs)


def _lists(server: FakeApiServer, path: str = "/async/operations") -> list[dict[str, str]]:
    return [r.query for r in server.requests if r.path == path]


@pytest.fixture
async def http(server: FakeApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session for what the client does not expose (headers, raw bodies)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        yield session


# -- path ids are UUIDs (Zoo), not Metafold's -------------------------------------------------


async def test_a_non_uuid_zoo_id_is_a_400_and_ends_the_wait_at_once(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    """``/async/operations/{id}``: ``{"type": "string", "format": "uuid"}``; the conversion
    paths' ``id`` and ``conversion_id`` are ``Uuid`` too. A non-UUID is refused by the path
    schema (400), before any lookup: never a 404."""
    op = server.zoo.add_operation(timeline=[("completed", None)])
    dataset = server.conversions.add_dataset()
    conversion = server.conversions.add_conversion(dataset, [("success", None)])
    before = len(server.requests)
    with pytest.raises(aj.BadRequestError) as info:
        await zoo.get_async_operation("no-such-op")
    assert info.value.status == 400 and info.value.request_id
    assert "no-such-op" in info.value.message
    with pytest.raises(aj.BadRequestError):
        await zoo.get_dataset_conversion(dataset, "no-such-conversion")
    with pytest.raises(aj.BadRequestError):
        await zoo.get_dataset_conversion("my-dataset", conversion.id)
    with pytest.raises(aj.BadRequestError):
        await zoo.list_dataset_conversions("my-dataset")
    # A 400 is final: no retry, and a wait on such an id ends with the first answer.
    with pytest.raises(aj.BadRequestError):
        await aj.wait_until_terminal(zoo.async_operation("op-1"), timeout=HANG_GUARD)
    assert len(server.requests) == before + 5
    # A well-formed id that names nothing is the 404; any spelling of a UUID finds its job.
    with pytest.raises(aj.NotFoundError):
        await zoo.get_async_operation(str(uuid.uuid4()))
    with pytest.raises(aj.NotFoundError):
        await zoo.list_dataset_conversions(str(uuid.uuid4()))
    assert (await zoo.get_async_operation(op.id.upper())).id == op.id
    got = await zoo.get_dataset_conversion(dataset.upper(), conversion.id.upper())
    assert got.id == conversion.id


async def test_the_watcher_fails_a_non_uuid_job_alone(server: FakeApiServer) -> None:
    ok = server.zoo.add_operation(timeline=[("in_progress", 0.05), ("completed", None)])
    dataset = server.conversions.add_dataset()
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=FAST_POLL) as watcher:
        good = watcher.add(zoo.async_operation(ok.id))
        bad_op = watcher.add(zoo.async_operation("no-such-op"))
        bad_conversion = watcher.add(zoo.dataset_conversion(dataset, "no-such-conversion"))
        with anyio.fail_after(HANG_GUARD):
            for doomed in (bad_op, bad_conversion):
                with pytest.raises(aj.BadRequestError):
                    await doomed
            assert (await good).status == "completed"


def test_the_fake_refuses_to_create_non_uuid_zoo_ids_unless_told() -> None:
    fake = FakeApiServer()
    with pytest.raises(ValueError, match="not a UUID"):
        fake.zoo.add_operation(id="op-1")
    with pytest.raises(ValueError, match="not a UUID"):
        fake.conversions.add_dataset("my-dataset")
    dataset = fake.conversions.add_dataset()
    with pytest.raises(ValueError, match="not a UUID"):
        fake.conversions.add_conversion(dataset, id="c-1")
    with pytest.raises(ValueError, match="not a UUID"):
        fake.conversions.add_conversion("my-dataset")
    assert fake.zoo.options is fake.conversions.options  # one Zoo API, one set of options
    fake.zoo.options.uuid_ids = False
    assert fake.zoo.add_operation(id="op-1").id == "op-1"
    assert fake.conversions.add_conversion("my-dataset", id="c-1").dataset_id == "my-dataset"


async def test_lenient_ids_are_served_when_asked(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    server.zoo.options.uuid_ids = False
    server.zoo.add_operation(id="op-1", timeline=[("completed", None)])
    assert (await zoo.get_async_operation("op-1")).status == "completed"
    with pytest.raises(aj.NotFoundError):
        await zoo.get_async_operation("no-such-op")


async def test_metafold_ids_are_not_uuids(server: FakeApiServer) -> None:
    """Metafold's ids are plain strings (metafold-jobs-subset: ``"id": "string"``): an unknown
    one is a 404, never a 400."""
    job = server.metafold.add_job("project", timeline=[("success", None)])
    async with aj.MetafoldClient(
        TOKEN, server.url, "project", retry=FAST_RETRY, poll=FAST_POLL
    ) as mf:
        assert (await mf.get_job(job.id)).state == "success"
        with pytest.raises(aj.NotFoundError):
            await mf.get_job("no-such-job")
        with pytest.raises(aj.NotFoundError):
            await mf.get_workflow("no-such-workflow")


# -- GET /async/operations: optional status and sort_by, ascending-only scans -----------------


def _mixed_operations(server: FakeApiServer, count: int) -> list[str]:
    """``count`` operations cycling through every status, in creation order."""
    cycle = ["queued", "uploaded", "in_progress", "completed", "failed"]
    return [
        server.zoo.add_operation(timeline=[(cycle[index % len(cycle)], None)]).id
        for index in range(count)
    ]


async def test_without_status_every_status_is_listed(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    """``status`` is optional in the spec: without it the listing spans every status."""
    created = _mixed_operations(server, 11)
    seen: list[str] = []
    token: str | None = None
    for _ in range(len(created) + 2):  # bounded: a looping token would fail below
        page = await zoo.list_async_operations(limit=3, page_token=token)
        seen += [op.id for op in page.items]
        token = page.next_page
        if token is None:
            break
    assert token is None
    assert sorted(seen) == sorted(created) and len(seen) == len(created)
    assert all("status" not in query for query in _lists(server))
    assert seen == created  # the library asks created_at_ascending by default


async def test_without_sort_by_the_scan_is_ascending(
    server: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    """``sort_by`` is optional too; "Currently, we only support scanning in ascending order"."""
    created = _mixed_operations(server, 4)
    async with http.get(f"{server.url}/async/operations") as response:
        assert response.status == 200
        body = await response.json()
    assert [item["id"] for item in body["items"]] == created and body["next_page"] is None


async def test_ascending_only_serves_ascending_whatever_sort_by_says(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    created = _mixed_operations(server, 6)
    descending = await zoo.list_async_operations(sort_by="created_at_descending")
    assert [op.id for op in descending.items] == list(reversed(created))
    server.zoo.options.ascending_only = True
    ignored = await zoo.list_async_operations(sort_by="created_at_descending")
    assert [op.id for op in ignored.items] == created
    assert _lists(server)[-1]["sort_by"] == "created_at_descending"  # asked, not served


async def test_an_ascending_iteration_is_right_on_an_ascending_only_server(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    server.zoo.options.ascending_only = True
    created = _mixed_operations(server, 23)
    got = [op.id async for op in zoo.iter_async_operations(sort_by="created_at_ascending", limit=2)]
    assert got == created  # every status merged in created_at order, each job once
    active = [
        op.id
        async for op in zoo.iter_async_operations(
            ["queued", "in_progress"], sort_by="created_at_ascending", limit=3
        )
    ]
    assert active == [op_id for index, op_id in enumerate(created) if index % 5 in (0, 2)]


async def test_an_unknown_status_or_sort_is_a_400(
    server: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    for query in ("status=done", "sort_by=newest", "limit=0", "limit=4294967296", "limit=x"):
        async with http.get(f"{server.url}/async/operations?{query}") as response:
            assert response.status == 400, query


# -- page caps, over-large limits, short and empty pages --------------------------------------


async def test_a_page_cap_below_the_limit_still_lists_everything(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    server.zoo.options.max_page_size = 5
    created = [server.zoo.add_operation(timeline=[("queued", None)]).id for _ in range(12)]
    got = [op.id async for op in zoo.iter_async_operations("queued", limit=1000)]
    assert got == created
    lists = _lists(server)
    assert len(lists) == 3 and all(query["limit"] == "1000" for query in lists)
    dataset = server.conversions.add_dataset()
    conversions = [server.conversions.add_conversion(dataset).id for _ in range(11)]
    listed = [c.id async for c in zoo.iter_dataset_conversions(dataset, limit=1000)]
    assert sorted(listed) == sorted(conversions) and len(listed) == 11
    assert len(_lists(server, f"/org/datasets/{dataset}/conversions")) == 3


async def test_an_over_large_limit_can_be_a_400(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    server.zoo.options.max_page_size = 50
    server.zoo.options.reject_over_limit = True
    server.zoo.add_operation(timeline=[("queued", None)])
    assert len((await zoo.list_async_operations("queued", limit=50)).items) == 1
    before = len(server.requests)
    with pytest.raises(aj.BadRequestError, match="limit must be <= 50"):
        await zoo.list_async_operations("queued", limit=51)
    dataset = server.conversions.add_dataset()
    with pytest.raises(aj.BadRequestError):
        await zoo.list_dataset_conversions(dataset, limit=51)
    assert len(server.requests) == before + 2  # a 400 is not retried


async def test_the_watcher_falls_back_to_gets_when_its_listing_is_refused(
    server: FakeApiServer,
) -> None:
    """The Watcher lists with a large page; a server that answers that with a 400 must not
    leave its jobs unwatched: they are polled one by one instead."""
    server.zoo.options.max_page_size = 100
    server.zoo.options.reject_over_limit = True
    op = server.zoo.add_operation(timeline=[("queued", None)])
    dataset = server.conversions.add_dataset()
    conversion = server.conversions.add_conversion(dataset, [("queued", None)])
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=FAST_POLL) as watcher:
        watched_op = watcher.add(zoo.async_operation(op.id))
        watched_conversion = watcher.add(zoo.dataset_conversion(dataset, conversion.id))
        server.zoo.set_status(op.id, "completed")
        server.conversions.set_status(conversion.id, "success")
        with anyio.fail_after(HANG_GUARD):
            assert (await watched_op).status == "completed"
            assert (await watched_conversion).status == "success"
    assert any(r.path == f"/async/operations/{op.id}" for r in server.requests)


async def test_short_and_empty_pages_with_a_token_are_followed(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    """Pages of 0, 1, 0, 0 and 2 items, each with a ``next_page``, then full pages, and a
    token on the last page too (dropshot's ``ResultsPage``): every job once, in order, with
    exactly one request per page."""
    server.zoo.options.page_sizes = [0, 1, 0, 0, 2]
    server.zoo.options.token_on_last_page = True
    created = [server.zoo.add_operation(timeline=[("queued", None)]).id for _ in range(7)]
    got = [
        op.id
        async for op in zoo.iter_async_operations("queued", sort_by="created_at_ascending", limit=3)
    ]
    assert got == created
    # 0, 1, 0, 0, 2 (3 jobs), then 3, then the last 1 (with a token), then an empty page.
    assert len(_lists(server)) == 8
    tokens = [query["page_token"] for query in _lists(server)[1:]]
    assert len(set(tokens)) == len(tokens)


async def test_short_conversion_pages_are_followed(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    server.conversions.options.page_sizes = [0, 2, 0]
    dataset = server.conversions.add_dataset()
    created = [server.conversions.add_conversion(dataset).id for _ in range(5)]
    got = [
        c.id
        async for c in zoo.iter_dataset_conversions(
            dataset, sort_by="created_at_ascending", limit=2
        )
    ]
    assert got == created
    assert len(_lists(server, f"/org/datasets/{dataset}/conversions")) == 5  # 0, 2, 0, 2, 1


async def test_an_empty_last_page_ends_the_listing(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    server.zoo.options.token_on_last_page = True
    created = [server.zoo.add_operation(timeline=[("failed", None)]).id for _ in range(4)]
    got = [op.id async for op in zoo.iter_async_operations("failed", limit=2)]
    assert got == created
    assert len(_lists(server)) == 3  # 2, 2 (with a token), then an empty page without one


# -- bodies and headers -----------------------------------------------------------------------


async def test_worker_is_always_a_string(
    server: FakeApiServer, zoo: aj.ZooClient, http: aiohttp.ClientSession
) -> None:
    """``AsyncApiCall.worker``: ``{"type": "string"}``, not nullable."""
    _mixed_operations(server, 5)
    async with http.get(f"{server.url}/async/operations") as response:
        items = (await response.json())["items"]
    assert len(items) == 5
    assert all(isinstance(item["worker"], str) for item in items)
    page = await zoo.list_async_operations()
    workers = {op.status: op.worker for op in page.items}
    assert workers["queued"] == "" and workers["uploaded"] == ""
    assert workers["in_progress"] and workers["completed"] and workers["failed"]


async def test_the_list_leaves_converted_files_out(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    """ "For async file conversion operations, this endpoint does not return the contents of
    converted files (`output`). To get the contents use the `/async/operations/{id}`
    endpoint." The library gets them from there."""
    conversion = server.zoo.add_operation("file_conversion", [("completed", None)])
    volume = server.zoo.add_operation("file_volume", [("completed", None)])
    listed = {op.type: op for op in (await zoo.list_async_operations("completed")).items}
    assert listed["file_conversion"].output is None and listed["file_conversion"].outputs is None
    assert listed["file_volume"].output == {"volume": 42.5}
    done = await aj.wait_until_terminal(zoo.async_operation(conversion.id), timeout=HANG_GUARD)
    assert done.outputs and set(done.outputs) == {"output.stl"}
    assert (await zoo.get_async_operation(volume.id)).volume == 42.5


def _time(text: datetime | None) -> float:
    assert text is not None
    return text.timestamp()


async def test_conversion_completed_at_is_when_it_got_its_status(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    """``completed_at``: "The date and time the conversion got its current ``status``", so it
    is set while the conversion runs; the library must not take it for the end."""
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(
        dataset,
        [
            ("queued", STEP),
            ("in_progress", "convert_raw_kcl", STEP),
            ("queued", "queued", STEP),  # a worker dropped it: it got "queued" again
            ("in_progress", "convert_raw_kcl", STEP),
            ("in_progress", "salon", STEP),
            ("success", None),
        ],
    )
    seen: list[aj.DatasetConversion] = []

    def step(conv: aj.DatasetConversion) -> None:
        seen.append(conv)
        server.clock.advance(STEP)

    with anyio.fail_after(HANG_GUARD):
        final = await aj.wait_until_terminal(
            zoo.dataset_conversion(dataset, fake.id), on_update=step
        )
    assert [(c.status, c.phase) for c in seen] == [
        ("queued", "queued"),
        ("in_progress", "convert_raw_kcl"),
        ("queued", "queued"),
        ("in_progress", "convert_raw_kcl"),
        ("in_progress", "salon"),
        ("success", "completed"),
    ]
    assert final == seen[-1] and final.is_terminal
    assert all(not c.is_terminal for c in seen[:-1])  # completed_at set, still running
    created = _time(seen[0].created_at)
    got_status = [c.completed_at for c in seen]
    assert got_status[0] is None  # still the status it was created with
    offsets = [round((_time(at) - created) / STEP) for at in got_status[1:]]
    # Entered in_progress at 1, queued again at 2, in_progress at 3 (the phase change at 4
    # keeps it), success at 5.
    assert offsets == [1, 2, 3, 3, 5]


async def test_x_api_call_id_only_on_zoo_responses(
    server: FakeApiServer, zoo: aj.ZooClient, http: aiohttp.ClientSession
) -> None:
    op = server.zoo.add_operation()
    job = server.metafold.add_job("project")
    for path, header in [
        (f"/async/operations/{op.id}", True),
        (f"/async/operations/{uuid.uuid4()}", True),
        ("/async/operations", True),
        (f"/projects/project/jobs/{job.id}", False),
        ("/projects/project/jobs/no-such-job", False),
        ("/projects/project/jobs", False),
    ]:
        async with http.get(server.url + path) as response:
            assert ("X-Api-Call-Id" in response.headers) is header, path
    # What the library makes of it: a Zoo error names its request, a Metafold one cannot.
    server.metafold.error_style = "msg"  # no request id in the body either
    async with aj.MetafoldClient(TOKEN, server.url, "project", retry=FAST_RETRY) as mf:
        with pytest.raises(aj.NotFoundError) as metafold_error:
            await mf.get_job("no-such-job")
    assert metafold_error.value.request_id is None
    with pytest.raises(aj.NotFoundError) as zoo_error:
        await zoo.get_async_operation(str(uuid.uuid4()))
    assert zoo_error.value.request_id


# -- load shedding: 503 with Retry-After, apart from the fault plan ---------------------------


async def test_shed_requests_are_retried_after_their_retry_after(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    shed = server.overload(times=2, retry_after="0")
    async with _zoo(server, retry=PATIENT_RETRY) as zoo:
        with anyio.fail_after(HANG_GUARD):  # a backoff of up to 1000 s would not make it
            assert (await zoo.get_async_operation(op.id)).status == "completed"
    assert shed.hits == 2
    assert len(server.requests) == 3
    assert server.faults.injected == {}  # not part of the fault plan


async def test_overload_is_independent_of_the_fault_plan(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    fault = server.inject("status", status=502, route="/async/operations/*")
    shed = server.overload(times=1, retry_after="0", route="/async/operations/*")
    assert (await zoo.get_async_operation(op.id)).status == "completed"
    # Shed first (the fault untouched), then the fault, then the answer.
    assert (shed.hits, fault.hits, len(server.requests)) == (1, 1, 3)


async def test_overload_answers_as_each_api_does(
    server: FakeApiServer, http: aiohttp.ClientSession
) -> None:
    server.overload(retry_after="7")
    for path, body_key in [("/async/operations", "request_id"), ("/projects/p/jobs", "code")]:
        async with http.get(server.url + path) as response:
            assert response.status == 503 and response.headers["Retry-After"] == "7"
            assert body_key in await response.json()
    server.shedding.clear()
    async with http.get(server.url + "/async/operations") as response:
        assert response.status == 200


async def test_waits_ride_out_a_server_shedding_load(server: FakeApiServer) -> None:
    """A third of all requests refused, on both APIs: every wait still ends right (retries,
    then missed polls that honour Retry-After)."""
    server.metafold.add_client("client", "secret")
    ops = [
        server.zoo.add_operation(timeline=[("in_progress", 0.05 * i), (final, None)], error="x")
        for i, final in enumerate(["completed", "failed"] * 4)
    ]
    jobs = [
        server.metafold.add_job("p", timeline=[("started", 0.05 * i), (final, None)])
        for i, final in enumerate(["success", "failure"] * 2)
    ]
    shed = server.overload(share=0.33, retry_after="0.01")
    async with (
        _zoo(server) as zoo,
        aj.MetafoldClient(
            base_url=server.url,
            project_id="p",
            client_id="client",
            client_secret="secret",
            token_url=server.url + "/oauth/token",
            retry=FAST_RETRY,
            poll=FAST_POLL,
        ) as mf,
    ):
        refs: list[aj.JobRef[Any]] = [zoo.async_operation(op.id) for op in ops]
        refs += [mf.job(job.id) for job in jobs]
        finals: list[Any] = [None] * len(refs)

        async def wait(index: int) -> None:
            finals[index] = await aj.wait_until_terminal(refs[index], poll=FAST_POLL)

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for index in range(len(refs)):
                    tg.start_soon(wait, index)
    assert [f.status for f in finals[: len(ops)]] == ["completed", "failed"] * 4
    assert [f.state for f in finals[len(ops) :]] == ["success", "failure"] * 2
    assert shed.hits > 0


# -- the OAuth audience is matched exactly -----------------------------------------------------


def _oauth(server: FakeApiServer, **options: Any) -> aj.MetafoldClient:
    server.metafold.add_client("client", "secret")
    server.metafold.add_project("p")
    kwargs: dict[str, Any] = {
        "base_url": server.url,
        "project_id": "p",
        "client_id": "client",
        "client_secret": "secret",
        "token_url": server.url + "/oauth/token",
        "retry": FAST_RETRY,
    }
    kwargs.update(options)
    return aj.MetafoldClient(**kwargs)


async def test_the_audience_is_matched_exactly(server: FakeApiServer) -> None:
    """Auth0 compares the audience with the API's identifier as a string. By default the fake
    wants the base URL with a trailing slash, which the official SDK (and the library) send."""
    async with _oauth(server) as mf:
        assert await mf.list_jobs() == []
    for near_miss in (server.url, server.url.upper() + "/", server.url + "//"):
        async with _oauth(server, audience=near_miss) as mf:
            with pytest.raises(aj.AuthenticationError, match="Service not found"):
                await mf.list_jobs()
    # An API registered without the slash (as Metafold's docs write it) refuses the default.
    server.metafold.audience = server.url
    async with _oauth(server) as mf:
        with pytest.raises(aj.AuthenticationError, match="Service not found"):
            await mf.list_jobs()
    async with _oauth(server, audience=server.url) as mf:
        assert await mf.list_jobs() == []
    assert server.metafold.exchanges == 2
