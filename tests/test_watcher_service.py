"""The Watcher inside a real web service (DESIGN.md "Services: what a Watcher promises").

A FastAPI app served by a real uvicorn server on loopback. Its lifespan owns one
aiohttp.ClientSession, a ZooClient and a MetafoldClient built on it, and one ``aj.Watcher``,
all entered with an AsyncExitStack; the clients talk to FakeApiServer. Tests drive the app
with real HTTP requests (httpx):

- ``GET /wait/{kind}/{id}?timeout=``: ``asyncio.wait_for(watcher.add(ref), timeout)``, the
  terminal job (504 past the timeout, 503 on an error such as ``aj.PollStalled``);
- ``GET /follow/{kind}/{id}``: a server-sent event per ``on_update`` change until the job is
  terminal; a wait that ends with an error (``aj.PollStalled``) ends with an ``error`` event;
- ``GET /last/{kind}/{id}``: ``watcher.last(ref)``;
- ``POST /watch/{kind}`` (a JSON list of ids): watch jobs in the background, their changes
  recorded by an ``on_update``.

``kind`` is ``operation`` (Zoo async operation), ``conversion`` (``{dataset}/{conversion}``)
or ``job`` (Metafold job). Timeouts below are hang guards, never measures.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import httpx
import pytest
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse

import async_jobs as aj
from async_jobs import events
from async_jobs.testing import FakeApiServer, FaultKind

from .conftest import FAST_RETRY, TOKEN, eventually

pytestmark = pytest.mark.anyio

POLL = aj.PollPolicy(initial=0.01, maximum=0.05, jitter=0.1)
PROJECT = "service-project"
OPS = "/async/operations"
#: Longest anything below may take before the test gives up (a hang guard, not a measure).
HANG_GUARD = 10.0
#: uvicorn's grace for requests still in flight at shutdown; then it cancels them. uvicorn runs
#: the lifespan's exit (so the Watcher's) only once no request is left: without this grace a
#: service's pending waits would hold its shutdown for as long as their own timeouts.
GRACE = 0.2
#: Fake-clock seconds a scripted job stays in a step until the test moves it on.
PARKED = 1000.0

Json = dict[str, Any] | None


def view(job: Any) -> Json:
    """A job as the service returns it."""
    if job is None:
        return None
    return {
        "id": job.id,
        "state": job.job_state.value,
        "status": getattr(job, "status", None) or getattr(job, "state", None),
        "phase": getattr(job, "phase", None),
        "progress": job.progress,
    }


def error_view(exc: BaseException) -> dict[str, Any]:
    """A wait's error as the service returns it."""
    cause = exc.__cause__
    return {
        "error": type(exc).__name__,
        "last": view(getattr(exc, "last", None)),
        "cause": None if cause is None else type(cause).__name__,
    }


def sse(event: str, data: Json) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@dataclass
class Service:
    """What the app's lifespan built (set at startup), and what its handlers recorded."""

    url: str = ""
    uvicorn: uvicorn.Server | None = None
    session: aiohttp.ClientSession | None = None
    zoo: aj.ZooClient | None = None
    mf: aj.MetafoldClient | None = None
    watcher: aj.Watcher | None = None
    #: ``on_update`` per job id, for the /wait handler.
    hooks: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    #: Everything the watcher emitted (its ``listeners=``).
    events: list[events.Event] = field(default_factory=list)
    #: /wait handlers awaiting their job right now.
    waiting: int = 0
    #: The futures of the jobs watched in the background (POST /watch), and what they saw.
    watched: list[asyncio.Future[Any]] = field(default_factory=list)
    seen: dict[str, Json] = field(default_factory=dict)
    #: The errors that ended waits (as /wait and /follow saw them).
    failures: list[BaseException] = field(default_factory=list)
    #: The lifespan's exit stack was closed without an error.
    stopped: bool = False

    def ref(self, kind: str, ident: str) -> aj.JobRef[Any]:
        assert self.zoo is not None and self.mf is not None
        if kind == "operation":
            return self.zoo.async_operation(ident)
        if kind == "conversion":
            dataset_id, conversion_id = ident.split("/")
            return self.zoo.dataset_conversion(dataset_id, conversion_id)
        if kind == "job":
            return self.mf.job(ident)
        raise HTTPException(404, f"unknown kind {kind!r}")

    def of(self, key: str, kind: type[Any]) -> list[Any]:
        """The events of type ``kind`` about ``key``."""
        return [e for e in self.events if isinstance(e, kind) and e.key == key]


def make_app(server: FakeApiServer, svc: Service, options: dict[str, Any]) -> FastAPI:
    """The service: one session, two clients and one Watcher for the app's lifetime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            zoo = await stack.enter_async_context(
                aj.ZooClient(TOKEN, server.url, session, retry=FAST_RETRY, timeout=5)
            )
            mf = await stack.enter_async_context(
                aj.MetafoldClient(TOKEN, server.url, PROJECT, session, retry=FAST_RETRY, timeout=5)
            )
            watcher = await stack.enter_async_context(
                aj.Watcher(zoo, mf, poll=POLL, listeners=[svc.events.append], **options)
            )
            svc.session, svc.zoo, svc.mf, svc.watcher = session, zoo, mf, watcher
            yield
        svc.stopped = True

    app = FastAPI(lifespan=lifespan)

    @app.get("/wait/{kind}/{ident:path}", response_model=None)
    async def wait(kind: str, ident: str, timeout: float = HANG_GUARD) -> JSONResponse:
        assert svc.watcher is not None
        ref = svc.ref(kind, ident)
        svc.waiting += 1
        try:
            future = svc.watcher.add(ref, on_update=svc.hooks.get(ident))
            job = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return JSONResponse({"last": view(svc.watcher.last(ref))}, status_code=504)
        except aj.AsyncJobsError as exc:  # aj.PollStalled, or a typed error of the job's
            svc.failures.append(exc)
            return JSONResponse(error_view(exc), status_code=503)
        finally:
            svc.waiting -= 1
        return JSONResponse(view(job))

    @app.get("/follow/{kind}/{ident:path}", response_model=None)
    async def follow(kind: str, ident: str) -> StreamingResponse:
        assert svc.watcher is not None
        ref = svc.ref(kind, ident)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        future = svc.watcher.add(ref, on_update=lambda job: queue.put_nowait(("update", job)))
        future.add_done_callback(lambda done: queue.put_nowait(("done", done)))
        seen = svc.watcher.last(ref)

        async def stream() -> AsyncIterator[str]:
            try:
                if seen is not None:
                    yield sse("update", view(seen))
                while True:
                    what, item = await queue.get()
                    if what == "update":
                        yield sse("update", view(item))
                        continue
                    if not item.cancelled() and item.exception() is not None:
                        svc.failures.append(item.exception())
                        yield sse("error", error_view(item.exception()))
                    return  # the terminal job was the last update
            finally:
                future.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/watch/{kind}", status_code=202)
    async def watch(kind: str, ids: list[str]) -> dict[str, int]:
        """Watch jobs in the background (the service keeps what it saw in ``svc.seen``)."""
        assert svc.watcher is not None

        def record(job: Any) -> None:
            svc.seen[job.id] = view(job)

        for ident in ids:
            svc.watched.append(svc.watcher.add(svc.ref(kind, ident), on_update=record))
        return {"watching": len(ids)}

    @app.get("/last/{kind}/{ident:path}", response_model=None)
    async def last(kind: str, ident: str) -> JSONResponse:
        assert svc.watcher is not None
        return JSONResponse(view(svc.watcher.last(svc.ref(kind, ident))))

    return app


@asynccontextmanager
async def running_service(server: FakeApiServer, **options: Any) -> AsyncIterator[Service]:
    """Serve the app with uvicorn on a free loopback port until the block ends (then stop it
    as a deployment would: ``should_exit``, in-flight requests get ``GRACE`` seconds)."""
    svc = Service()
    config = uvicorn.Config(
        make_app(server, svc, options),
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        log_config=None,
        http="h11",
        ws="none",
        timeout_graceful_shutdown=GRACE,  # type: ignore[arg-type]  # annotated int; a float works
    )
    uv = svc.uvicorn = uvicorn.Server(config)
    finished = anyio.Event()

    async def serve() -> None:
        try:
            await uv.serve()
        finally:
            finished.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        try:
            await eventually(lambda: uv.started or finished.is_set(), timeout=HANG_GUARD)
            assert uv.started, "uvicorn did not start (see its log)"
            port = uv.servers[0].sockets[0].getsockname()[1]
            svc.url = f"http://127.0.0.1:{port}"
            yield svc
        finally:
            uv.should_exit = True
            with anyio.fail_after(HANG_GUARD):
                await finished.wait()
    assert svc.stopped, "the lifespan's exit did not complete"


def http_client(svc: Service) -> httpx.AsyncClient:
    unlimited = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(base_url=svc.url, timeout=HANG_GUARD, limits=unlimited)


async def sse_events(response: httpx.Response) -> AsyncGenerator[tuple[str, Json], None]:
    """The (event, data) pairs of a server-sent event stream."""
    name = "message"
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


async def last_until(
    http: httpx.AsyncClient, path: str, until: Callable[[Json], bool], answers: list[Json]
) -> Json:
    """GET ``path`` until its answer satisfies ``until``; that answer (each one kept in
    ``answers``)."""
    with anyio.fail_after(HANG_GUARD):
        while True:
            body: Json = (await http.get(path)).json()
            answers.append(body)
            if until(body):
                return body
            await anyio.sleep(0.01)


# -- 1. callers that leave ------------------------------------------------------------------


async def test_callers_that_leave_mid_wait_do_not_end_the_others(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    per_group = 40
    staying: list[httpx.Response] = []
    timed_out: list[httpx.Response] = []
    answered: list[httpx.Response] = []  # by clients that hung up: none
    url = f"/wait/operation/{op.id}"

    async with running_service(server, coalesce=False) as svc, http_client(svc) as http:
        key = svc.ref("operation", op.id).key

        async def stay() -> None:
            staying.append(await http.get(url))

        async def hang_up(scope: anyio.CancelScope) -> None:
            with scope:
                answered.append(await http.get(url))

        async def give_up() -> None:
            timed_out.append(await http.get(url, params={"timeout": 0.05}))

        async with anyio.create_task_group() as tg:
            scopes = [anyio.CancelScope() for _ in range(per_group)]
            for scope in scopes:
                tg.start_soon(hang_up, scope)
            for _ in range(per_group):
                tg.start_soon(stay)
            await eventually(lambda: svc.waiting == 2 * per_group, timeout=HANG_GUARD)
            for scope in scopes:  # these clients disconnect mid-wait
                scope.cancel()
            async with anyio.create_task_group() as impatient:  # these time out mid-wait
                for _ in range(per_group):
                    impatient.start_soon(give_up)
            server.zoo.set_status(op.id, "completed")

        assert all(scope.cancelled_caught for scope in scopes) and not answered
        assert [r.status_code for r in timed_out] == [504] * per_group
        assert [r.status_code for r in staying] == [200] * per_group
        assert {r.json()["status"] for r in staying} == {"completed"}
        # One request stream for the job, whatever the number of callers: one wait, whose
        # polls are exactly the GETs the server saw.
        gets = [r for r in server.requests if r.path == f"{OPS}/{op.id}"]
        (done,) = svc.of(key, events.WaitDone)
        assert len(svc.of(key, events.WaitStarted)) == 1
        assert done.outcome == "succeeded"
        assert len(gets) == done.polls < 3 * per_group


# -- 2. a raising on_update -----------------------------------------------------------------


async def test_a_raising_on_update_is_logged_and_contained(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    steps = [("queued", PARKED), ("in_progress", PARKED), ("completed", None)]
    sync_op = server.zoo.add_operation(timeline=steps)
    async_op = server.zoo.add_operation(timeline=steps)
    other = server.metafold.add_job(
        PROJECT, timeline=[("pending", PARKED), ("started", PARKED), ("success", None)]
    )

    def sync_hook(job: aj.AsyncOperation) -> None:
        raise ValueError(f"sync hook failed on {job.status}")

    async def async_hook(job: aj.AsyncOperation) -> None:
        await anyio.lowlevel.checkpoint()
        raise RuntimeError(f"async hook failed on {job.status}")

    results: dict[str, httpx.Response] = {}
    async with running_service(server) as svc, http_client(svc) as http:
        svc.hooks = {sync_op.id: sync_hook, async_op.id: async_hook}
        sync_key = svc.ref("operation", sync_op.id).key
        async_key = svc.ref("operation", async_op.id).key

        def failures() -> Counter[tuple[str, str]]:
            return Counter(
                (e.key, e.error) for e in svc.events if isinstance(e, events.CallbackFailed)
            )

        def failed(times: int) -> Callable[[], bool]:
            expected = {(sync_key, "ValueError"): times, (async_key, "RuntimeError"): times}
            return lambda: failures() == expected

        async def wait(kind: str, ident: str) -> None:
            results[ident] = await http.get(f"/wait/{kind}/{ident}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "operation", sync_op.id)
            tg.start_soon(wait, "operation", async_op.id)
            tg.start_soon(wait, "job", other.id)
            for seen in (1, 2):  # queued, then in_progress: each change raises in the hooks
                await eventually(failed(seen), timeout=HANG_GUARD)
                for op in (sync_op, async_op):  # still watched
                    last = (await http.get(f"/last/operation/{op.id}")).json()
                    assert last is not None and last["state"] != "succeeded"
                server.clock.advance(PARKED)

        assert {ident: r.status_code for ident, r in results.items()} == dict.fromkeys(
            (sync_op.id, async_op.id, other.id), 200
        )
        assert {r.json()["state"] for r in results.values()} == {"succeeded"}
        # The terminal change raised too, and changed nothing.
        assert failures() == {(sync_key, "ValueError"): 3, (async_key, "RuntimeError"): 3}
        # Later requests keep working: same watcher, same clients, same session.
        later = server.zoo.add_operation(timeline=[("queued", 0.05), ("completed", None)])
        response = await http.get(f"/wait/operation/{later.id}")
        assert response.status_code == 200 and response.json()["status"] == "completed"
        later_job = server.metafold.add_job(
            PROJECT, timeline=[("started", 0.05), ("success", None)]
        )
        response = await http.get(f"/wait/job/{later_job.id}")
        assert response.status_code == 200 and response.json()["status"] == "success"
        assert svc.session is not None and not svc.session.closed
        assert svc.watcher is not None and svc.watcher.running

    logged = [
        r for r in caplog.records if r.name == "async_jobs.watcher" and r.levelno >= logging.INFO
    ]
    assert logged and all(r.levelno == logging.ERROR for r in logged)
    raised = Counter(r.exc_info[0] for r in logged if r.exc_info is not None)
    assert raised == {ValueError: 3, RuntimeError: 3}
    assert all(r.exc_info[2] is not None for r in logged if r.exc_info)  # with its traceback
    assert sum(sync_key in r.getMessage() for r in logged) == 3


# -- 3. an outage longer than stall_timeout -------------------------------------------------


@pytest.mark.parametrize(
    ("coalesce", "fault", "causes"),
    [
        (False, "status", {"ServerError", "TransportError"}),
        (True, "drop", {"TransportError"}),
    ],
    ids=["per-job-503", "listing-drop"],
)
async def test_an_outage_ends_the_follow_stream_with_poll_stalled(
    server: FakeApiServer, coalesce: bool, fault: FaultKind, causes: set[str]
) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    route = OPS if coalesce else f"{OPS}/{op.id}"  # the group's listing, or the job's GET
    async with (
        running_service(server, coalesce=coalesce, stall_timeout=0.5) as svc,
        http_client(svc) as http,
        http.stream("GET", f"/follow/operation/{op.id}") as response,
        aclosing(sse_events(response)) as stream,
    ):
        assert response.status_code == 200
        first = await anext(stream)
        assert first[0] == "update" and first[1] is not None
        assert first[1]["status"] == "in_progress"
        outage = server.inject(fault, status=503, times=None, route=route)
        rest = [event async for event in stream]
        assert outage.hits >= 1
        assert len(rest) == 1
        event, data = rest[0]
        assert event == "error" and data is not None
        assert data["error"] == "PollStalled"
        assert data["last"] == first[1]  # the last job seen
        assert data["cause"] in causes
    (stalled,) = svc.failures
    assert type(stalled).__name__ == "PollStalled" and isinstance(stalled, aj.AsyncJobsError)


def test_poll_stalled_has_its_public_name() -> None:
    """DESIGN.md: a service catches ``aj.PollStalled`` by that name."""
    assert "PollStalled" in aj.__all__
    assert issubclass(aj.PollStalled, aj.AsyncJobsError)


@pytest.mark.parametrize("coalesce", [True, False], ids=["listing", "per-job"])
async def test_a_wait_after_an_idle_spell_is_not_stalled(
    server: FakeApiServer, coalesce: bool
) -> None:
    """``stall_timeout`` counts from the job's own wait: a service that watched nothing for a
    while (the API healthy all along) must not fail its next wait with PollStalled."""
    first = server.zoo.add_operation(timeline=[("queued", 0.05), ("completed", None)])
    second = server.zoo.add_operation(timeline=[("queued", 0.05), ("completed", None)])
    async with (
        # 1 s: a first answer (a new connection, through uvicorn) can take longer than 0.2 s
        # on a busy machine, which failed the first wait with PollStalled (seen on 3.13).
        running_service(server, coalesce=coalesce, stall_timeout=1.0) as svc,
        http_client(svc) as http,
    ):
        response = await http.get(f"/wait/operation/{first.id}")
        assert response.status_code == 200 and response.json()["status"] == "completed"
        await anyio.sleep(1.3)  # nothing watched for longer than stall_timeout
        before = len(server.requests)
        response = await http.get(f"/wait/operation/{second.id}")
        assert response.status_code == 200, response.json()
        assert response.json()["status"] == "completed"
        assert len(server.requests) > before


# -- 4. shutdown with many pending watches --------------------------------------------------


async def test_shutdown_with_a_thousand_pending_watches(server: FakeApiServer) -> None:
    count, waiting, following = 1000, 100, 10
    ops = [server.zoo.add_operation(timeline=[("in_progress", None)]) for _ in range(count)]
    ids = [op.id for op in ops]
    ended: list[int | str] = []
    streams_ended: list[str] = []
    async with running_service(server) as svc, http_client(svc) as http:
        assert svc.watcher is not None and svc.uvicorn is not None
        watcher = svc.watcher
        response = await http.post("/watch/operation", json=ids)
        assert response.status_code == 202 and response.json() == {"watching": count}

        async def wait(op_id: str) -> None:
            try:
                response = await http.get(f"/wait/operation/{op_id}")
            except httpx.TransportError as exc:
                ended.append(type(exc).__name__)
            else:
                ended.append(response.status_code)

        async def follow(op_id: str) -> None:
            try:
                async with (
                    http.stream("GET", f"/follow/operation/{op_id}") as response,
                    aclosing(sse_events(response)) as stream,
                ):
                    async for event, _ in stream:
                        streams_ended.append(event)
            except httpx.TransportError as exc:
                streams_ended.append(type(exc).__name__)

        refs = [svc.ref("operation", op_id) for op_id in ids]
        async with anyio.create_task_group() as tg:
            for op_id in ids[:waiting]:
                tg.start_soon(wait, op_id)
            for op_id in ids[waiting : waiting + following]:
                tg.start_soon(follow, op_id)
            await eventually(lambda: svc.waiting == waiting, timeout=HANG_GUARD)
            await eventually(
                lambda: all(watcher.last(ref) is not None for ref in refs), timeout=HANG_GUARD
            )
            await eventually(lambda: len(streams_ended) == following, timeout=HANG_GUARD)
            await eventually(lambda: len(svc.seen) == count, timeout=HANG_GUARD)
            assert set(streams_ended) == {"update"}
            assert watcher.pending == count
            svc.uvicorn.should_exit = True  # a deployment stops the service mid-wait

        # Every awaiting request ended (uvicorn cancelled them after its grace), none with a job.
        assert len(ended) == waiting and 200 not in ended
        assert len(streams_ended) == 2 * following  # each stream ended, without an update
        assert "update" not in streams_ended[following:]
    # The lifespan's exit ran (running_service checks it) and closed everything it opened;
    # the watcher's exit cancelled the futures nobody awaited any more.
    assert svc.session is not None and svc.session.closed
    assert not watcher.running and watcher.pending == 0
    assert len(svc.watched) == count and all(future.cancelled() for future in svc.watched)
    # conftest: no task left pending, nothing logged by asyncio (unclosed session, task
    # destroyed while pending, exception never retrieved).


# -- 5. acceptance: 1,000 callers of one job ------------------------------------------------


@pytest.mark.parametrize("coalesce", [True, False], ids=["listing", "per-job"])
async def test_a_thousand_callers_of_one_job_cost_one_request_stream(
    server: FakeApiServer, coalesce: bool
) -> None:
    callers = 1000
    op = server.zoo.add_operation(timeline=[("queued", None)])
    rng = random.Random(20240612)
    leaving = set(rng.sample(range(callers), callers // 2))
    start_at = [rng.uniform(0.0, 0.2) for _ in range(callers)]
    leave_at = sorted((start_at[i] + rng.uniform(0.0, 0.3), i) for i in leaving)
    scopes = [anyio.CancelScope() for _ in range(callers)]
    started: set[int] = set()
    results: dict[int, aj.AsyncOperation] = {}

    async with running_service(server, coalesce=coalesce) as svc:
        assert svc.watcher is not None
        watcher = svc.watcher
        ref = svc.ref("operation", op.id)

        async def caller(i: int) -> None:
            await anyio.sleep(start_at[i])
            with scopes[i]:
                started.add(i)
                results[i] = await watcher.add(ref)

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for i in range(callers):
                    tg.start_soon(caller, i)
                t0 = anyio.current_time()
                moved = False
                for at, i in leave_at:  # cancel half of them at random moments
                    await anyio.sleep(max(0.0, t0 + at - anyio.current_time()))
                    if not moved and at > 0.25:
                        server.zoo.set_status(op.id, "in_progress")
                        moved = True
                    scopes[i].cancel()
                await eventually(lambda: len(started) == callers, timeout=HANG_GUARD)
                server.zoo.set_status(op.id, "completed")

        assert set(results) == set(range(callers)) - leaving
        assert {(job.id, job.status) for job in results.values()} == {(op.id, "completed")}
        assert all(scopes[i].cancelled_caught for i in leaving)
        assert watcher.pending == 0 and watcher.last(ref) is None
        assert [job async for job in watcher.as_completed()] == []  # nothing kept

        # One wait for the job; the server saw requests of the order of its polls.
        (done,) = svc.of(ref.key, events.WaitDone)
        assert len(svc.of(ref.key, events.WaitStarted)) == 1 and done.outcome == "succeeded"
        job_requests = [r for r in server.requests if r.path in (OPS, f"{OPS}/{op.id}")]
        if coalesce:  # a sweep lists each active status (one page each), then one GET confirms
            assert len(job_requests) <= 4 * done.polls + 4
        else:
            assert len(job_requests) == done.polls
        assert done.polls < callers // 10


# -- 6. last() ------------------------------------------------------------------------------


@pytest.mark.parametrize("coalesce", [True, False], ids=["listing", "per-job"])
async def test_last_reports_the_last_job_seen_while_watched(
    server: FakeApiServer, coalesce: bool
) -> None:
    dataset = server.conversions.add_dataset()
    conv = server.conversions.add_conversion(
        dataset,
        [
            ("snapshot_original", PARKED),
            ("in_progress", "mesh_repair", PARKED),  # a phase the library does not know
            ("salon", PARKED),
            ("completed", None),
        ],
    )
    ident = f"{dataset}/{conv.id}"
    last_path = f"/last/conversion/{ident}"
    gate = server.inject("hold", times=None, route=f"/org/datasets/{dataset}/*")
    answers: list[httpx.Response] = []
    seen: list[Json] = []  # what /last answered
    async with running_service(server, coalesce=coalesce) as svc, http_client(svc) as http:
        assert svc.watcher is not None

        async def wait() -> None:
            answers.append(await http.get(f"/wait/conversion/{ident}"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await eventually(lambda: server.in_flight >= 1, timeout=HANG_GUARD)
            # Watched, its first look held at the server: nothing seen yet.
            assert svc.watcher.pending == 1
            assert (await http.get(last_path)).json() is None
            gate.release()

            def phase(name: str) -> Callable[[Json], bool]:
                return lambda body: body is not None and body["phase"] == name

            known = await last_until(http, last_path, phase("snapshot_original"), seen)
            assert known is not None and known["progress"] is not None
            seen.clear()
            server.clock.advance(PARKED)
            unknown = await last_until(http, last_path, phase("mesh_repair"), seen)
            assert unknown is not None and unknown["state"] == "running"
            assert unknown["progress"] == known["progress"]  # the last known, never None
            server.clock.advance(PARKED)
            later = await last_until(http, last_path, phase("salon"), seen)
            assert later is not None and later["progress"] > known["progress"]
            # Every answer after the first known one had a progress.
            assert all(body is not None and body["progress"] is not None for body in seen)
            server.clock.advance(PARKED)

        (answer,) = answers
        assert answer.status_code == 200 and answer.json()["status"] == "success"
        # Finished: its result was the awaitable's; the watcher keeps nothing.
        assert (await http.get(last_path)).json() is None
        assert svc.watcher.pending == 0
