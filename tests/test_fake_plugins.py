"""FakeServer hosts fake API plugins: a Replicate-like predictions API written as a user would,
with the public building blocks of ``async_jobs.testing``, gets routes, its own error body, a
timeline on the fake clock, cursor paging, faults and auth from the host."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from async_jobs.testing import (
    CreationTimes,
    FakeApi,
    FakeApiServer,
    FakeClock,
    FakeServer,
    InvalidCursor,
    Timeline,
    cursor_page,
    json_response,
)

from .conftest import TOKEN

pytestmark = pytest.mark.anyio

PREDICTIONS = "/v1/predictions"
DONE = ("succeeded", "failed", "canceled")


# -- the plugin a user writes ------------------------------------------------------------------


class FakePredictions(FakeApi):
    """A Replicate-like predictions API: ``Token <key>`` auth, ``{detail, status}`` errors."""

    name = "predictions"
    prefixes = ("/v1",)

    def __init__(self, api_key: str = "r8-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.predictions: dict[str, Timeline[str]] = {}
        self.created: dict[str, Any] = {}
        self._times = CreationTimes()

    def add(self, script: list[tuple[str, float | None]]) -> str:
        """A prediction walking ``script`` from now on; returns its id."""
        pid = uuid.uuid4().hex[:12]
        self.predictions[pid] = Timeline.script(self.clock.now(), script)
        self.created[pid] = self._times.next(self.clock)[1]
        return pid

    def body(self, pid: str) -> dict[str, Any]:
        now = self.clock.now()
        moment = self.predictions[pid].at(
            now, started=lambda s: s != "starting", finished=lambda s: s in DONE
        )
        at = self.clock.wall
        return {
            "id": pid,
            "status": moment.state,
            "created_at": self.created[pid],
            "started_at": None if moment.started is None else at(moment.started),
            "completed_at": None if moment.finished is None else at(moment.finished),
        }

    def error(self, path: str, status: int, message: str, code: str | None = None) -> web.Response:
        return json_response({"detail": message, "status": status}, status=status)

    def accepts(self, authorization: str | None) -> bool:
        return authorization == f"Token {self.api_key}"

    def public(self, path: str) -> bool:
        return path == "/v1/health"

    def finish(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Fake-Api"] = self.name

    async def get(self, request: web.Request) -> web.Response:
        pid = request.match_info["id"]
        if pid not in self.predictions:
            return self.error(request.path, 404, "Not found.")
        return json_response(self.body(pid))

    async def listing(self, request: web.Request) -> web.Response:
        newest = sorted(self.predictions, key=self.created.__getitem__, reverse=True)
        try:
            page = cursor_page(newest, 2, request.query.get("cursor"), scan="created-desc")
        except InvalidCursor:
            return self.error(request.path, 400, "Invalid cursor.")
        return json_response(
            {"results": [self.body(pid) for pid in page.items], "next": page.next_cursor}
        )

    async def health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PREDICTIONS, self.listing)
        app.router.add_get(PREDICTIONS + "/{id}", self.get)
        app.router.add_get("/v1/health", self.health)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with FakeServer(token=TOKEN, clock=FakeClock(speed=0), apis=[FakePredictions()]) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": "Token r8-key"}) as session:
        yield session


def plugin(server: FakeServer) -> FakePredictions:
    api = server.api("predictions")
    assert isinstance(api, FakePredictions)
    return api


async def get(
    http: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[int, Any, Mapping[str, str]]:
    async with http.get(url, **kwargs) as response:
        return response.status, await response.json(), response.headers


# -- tests -------------------------------------------------------------------------------------


async def test_a_prediction_walks_its_timeline_on_the_server_clock(
    fake: FakeServer, http: aiohttp.ClientSession
) -> None:
    api = plugin(fake)
    assert api.clock is fake.clock
    pid = api.add([("starting", 1.0), ("processing", 2.0), ("succeeded", None)])
    url = f"{fake.url}{PREDICTIONS}/{pid}"
    status, body, headers = await get(http, url)
    assert (status, body["status"], body["started_at"]) == (200, "starting", None)
    assert headers["X-Fake-Api"] == "predictions"  # the plugin's finish() hook
    fake.clock.advance(1.5)
    body = (await get(http, url))[1]
    assert body["status"] == "processing" and body["completed_at"] is None
    assert body["started_at"].endswith("Z")
    fake.clock.advance(2.0)
    body = (await get(http, url))[1]
    assert body["status"] == "succeeded"
    assert body["created_at"] < body["started_at"] < body["completed_at"]
    status, body, _ = await get(http, f"{fake.url}{PREDICTIONS}/nope")
    assert (status, body) == (404, {"detail": "Not found.", "status": 404})


async def test_listing_pages_with_opaque_cursors(
    fake: FakeServer, http: aiohttp.ClientSession
) -> None:
    api = plugin(fake)
    made = [api.add([("succeeded", None)]) for _ in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {} if cursor is None else {"cursor": cursor}
        status, body, _ = await get(http, fake.url + PREDICTIONS, params=params)
        assert status == 200
        seen += [item["id"] for item in body["results"]]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert pages == 3 and seen == made[::-1]
    status, body, _ = await get(http, fake.url + PREDICTIONS, params={"cursor": "o=1&n=1&k=x/=="})
    assert (status, body) == (400, {"detail": "Invalid cursor.", "status": 400})


async def test_faults_and_shedding_answer_with_the_plugins_error_body(
    fake: FakeServer, http: aiohttp.ClientSession
) -> None:
    pid = plugin(fake).add([("processing", None)])
    url = f"{fake.url}{PREDICTIONS}/{pid}"
    fault = fake.inject("status", status=503, retry_after="7", route=PREDICTIONS + "/*")
    status, body, headers = await get(http, url)
    assert (status, body, headers["Retry-After"]) == (
        503,
        {"detail": "injected fault", "status": 503},
        "7",
    )
    assert fault.hits == 1 and (await get(http, url))[0] == 200
    fake.overload(times=1)
    assert (await get(http, url))[:2] == (503, {"detail": "injected fault", "status": 503})
    assert [r.path for r in fake.requests] == [f"{PREDICTIONS}/{pid}"] * 3


async def test_auth_goes_through_the_plugin(fake: FakeServer) -> None:
    url = f"{fake.url}{PREDICTIONS}"
    unauthorized = {"detail": "invalid or missing API token", "status": 401}
    async with aiohttp.ClientSession() as anonymous:
        assert (await get(anonymous, url))[:2] == (401, unauthorized)
        assert (await get(anonymous, url, headers={"Authorization": "Token wrong"}))[0] == 401
        assert (await get(anonymous, url, headers={"Authorization": "Token r8-key"}))[0] == 200
        bearer = {"Authorization": f"Bearer {TOKEN}"}  # the server's static token works too
        assert (await get(anonymous, url, headers=bearer))[0] == 200
        assert (await get(anonymous, fake.url + "/v1/health"))[:2] == (200, {"ok": True})
        # A path no plugin owns is the fallback's: a plain {"message"} body.
        status, body, _ = await get(anonymous, fake.url + "/elsewhere")
        assert (status, body) == (401, {"message": "invalid or missing API token"})


async def test_a_plugin_beside_the_built_in_apis(http: aiohttp.ClientSession) -> None:
    api = FakePredictions()
    async with FakeApiServer(token=TOKEN, apis=[api]) as server:
        assert server.api("predictions") is api and api.clock is server.clock
        pid = api.add([("processing", None)])
        assert (await get(http, f"{server.url}{PREDICTIONS}/{pid}"))[0] == 200
        op = server.zoo.add_operation()
        zoo = {"Authorization": f"Bearer {TOKEN}"}
        status, body, headers = await get(
            http, f"{server.url}/async/operations/{op.id}", headers=zoo
        )
        assert status == 200 and body["id"] == op.id and "X-Api-Call-Id" in headers
        # The predictions key is that plugin's credential, not Zoo's: Zoo answers its own 401.
        status, body, _ = await get(http, f"{server.url}/async/operations/{op.id}")
        assert status == 401 and body["message"] == "invalid or missing API token"
        assert "request_id" in body
        with pytest.raises(RuntimeError):
            server.add_api(FakePredictions())  # routes are bound: only before start
    with pytest.raises(ValueError, match="already hosted"):
        server.add_api(FakePredictions())


def test_timeline_and_cursor_helpers() -> None:
    walk = Timeline.script(10.0, [("a", 1.0), ("b", None), ("c", 5.0)])
    assert walk.steps == [(10.0, "a"), (11.0, "b")]
    assert [walk.state(t) for t in (0.0, 10.5, 11.0, 99.0)] == ["a", "a", "b", "b"]
    walk.goto(12.0, "c")
    moment = walk.at(13.0, started=lambda s: s != "a", finished=lambda s: s == "c")
    assert (moment.state, moment.since, moment.started, moment.finished) == ("c", 12.0, 11.0, 12.0)
    assert walk.last(13.0, lambda s: s != "c") == 11.0 and walk.first(10.5, "b".__eq__) is None
    first = cursor_page("abcde", 2, scan="s", sizes=[1])
    assert list(first.items) == ["a"] and first.next_cursor is not None
    second = cursor_page("abcde", 2, first.next_cursor, scan="s")
    assert list(second.items) == ["b", "c"]
    with pytest.raises(InvalidCursor):
        cursor_page("abcde", 2, first.next_cursor, scan="other")
    clock = FakeClock(speed=0)
    times = CreationTimes()
    assert times.next(clock) < times.next(clock)


def test_fake_workflows_create_jobs_in_the_librarys_dependency_order() -> None:
    server = FakeApiServer(clock=FakeClock(speed=0))
    jobs = [{"name": "c", "needs": ["b"]}, {"name": "a"}, {"name": "b", "needs": ["a"]}]
    workflow = server.metafold.add_workflow("p", jobs)
    made = server.metafold.projects["p"].jobs
    by_name = {made[job_id].name: made[job_id] for job_id in workflow.jobs}
    assert [by_name[n].name for n in ("c", "a", "b")] == [made[j].name for j in workflow.jobs]
    assert by_name["a"].created < by_name["b"].created < by_name["c"].created
    with pytest.raises(ValueError, match="unknown job 'x'"):
        server.metafold.add_workflow("p", [{"name": "a", "needs": ["x"]}])
    with pytest.raises(ValueError, match="cycle"):
        server.metafold.add_workflow(
            "p", [{"name": "a", "needs": ["b"]}, {"name": "b", "needs": ["a"]}]
        )
