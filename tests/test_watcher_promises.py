"""DESIGN.md "Services: what a Watcher promises", one promise per test (the service-shaped
tests, a real app on uvicorn, are in test_watcher_service.py), plus stall_timeout and the
last known progress on the single waits."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any

import anyio
import pytest

import async_jobs as aj
from async_jobs import events
from async_jobs.models.zoo import CONVERSION_ACTIVE_STATUSES
from async_jobs.testing import FakeApiServer

from .conftest import FAST_RETRY, TOKEN, eventually

pytestmark = pytest.mark.anyio

POLL = aj.PollPolicy(initial=0.01, multiplier=1.5, maximum=0.05, jitter=0.1)
#: A client whose failed request is one missed poll (no retries inside the request).
ONCE = aj.RetryPolicy(max_attempts=1)
SOON = 20.0
#: Every conversion phase step lasts an hour of fake time: only the test moves it on.
HOUR = 3600.0


def _zoo(server: FakeApiServer, retry: aj.RetryPolicy = FAST_RETRY) -> aj.ZooClient:
    return aj.ZooClient(token=TOKEN, base_url=server.url, retry=retry, timeout=5)


# -- each caller its own awaitable ----------------------------------------------------------


@pytest.mark.parametrize("coalesce", [True, False])
async def test_one_callers_timeout_never_cancels_another(
    server: FakeApiServer, coalesce: bool
) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, coalesce=coalesce) as watcher:
        ref = zoo.async_operation(op.id)
        patient = watcher.add(ref)
        with pytest.raises(asyncio.TimeoutError):  # TimeoutError itself from 3.11 on
            await asyncio.wait_for(watcher.add(ref), 0.05)
        again = watcher.add(ref)  # a new caller after the cancelled one: a live awaitable
        assert not patient.done() and not again.done()
        assert watcher.pending == 1
        server.zoo.set_status(op.id, "completed")
        with anyio.fail_after(SOON):
            assert (await patient).status == (await again).status == "completed"


async def test_callers_share_one_request_stream(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    path = f"/async/operations/{op.id}"
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, coalesce=False) as watcher:
        futures = [watcher.add(zoo.async_operation(op.id)) for _ in range(200)]
        await eventually(lambda: sum(r.path == path for r in server.requests) >= 3)
        server.zoo.set_status(op.id, "completed")
        with anyio.fail_after(SOON):
            done = await asyncio.gather(*futures)
    assert len({id(f) for f in futures}) == 200
    assert {job.status for job in done} == {"completed"}
    polls = sum(r.path == path for r in server.requests)
    assert polls < 50  # one stream of polls, not one per caller


# -- last() ---------------------------------------------------------------------------------


async def test_last_is_the_last_job_seen_while_watched(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("queued", None)])
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL) as watcher:
        ref = zoo.async_operation(op.id)
        assert watcher.last(ref) is None  # not watched
        future = watcher.add(ref)
        assert watcher.last(ref) is None  # not seen yet
        await eventually(lambda: watcher.last(ref) is not None)
        seen = watcher.last(ref)
        assert seen is not None and seen.status == "queued"
        server.zoo.set_status(op.id, "in_progress")
        await eventually(lambda: getattr(watcher.last(ref), "status", None) == "in_progress")
        server.zoo.set_status(op.id, "completed")
        with anyio.fail_after(SOON):
            assert (await future).status == "completed"
        assert watcher.last(ref) is None  # its wait ended: the result is the future's


# -- raising callbacks ----------------------------------------------------------------------


def _raise_sync(job: Any) -> None:
    raise ValueError(f"sync callback broke on {job.status}")


async def _raise_async(job: Any) -> None:
    await anyio.lowlevel.checkpoint()
    raise KeyError("async callback broke")


@pytest.mark.parametrize("where", ["add", "watcher"])
@pytest.mark.parametrize("callback", [_raise_sync, _raise_async])
async def test_a_raising_callback_is_logged_emitted_and_contained(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture, where: str, callback: Any
) -> None:
    bad = server.zoo.add_operation(timeline=[("queued", None)])
    good = server.zoo.add_operation(timeline=[("queued", None)])
    seen: list[events.Event] = []
    options: dict[str, Any] = {"on_update": callback} if where == "watcher" else {}
    caplog.set_level(logging.ERROR, logger="async_jobs.watcher")
    async with (
        _zoo(server) as zoo,
        aj.Watcher(zoo, poll=POLL, listeners=[seen.append], **options) as watcher,
    ):
        broken = watcher.add(
            zoo.async_operation(bad.id), on_update=callback if where == "add" else None
        )
        fine = watcher.add(zoo.async_operation(good.id))
        await eventually(lambda: any(isinstance(e, events.CallbackFailed) for e in seen))
        server.zoo.set_status(bad.id, "completed")
        server.zoo.set_status(good.id, "failed")
        with anyio.fail_after(SOON):
            assert (await broken).status == "completed"  # the job stayed watched
            assert (await fine).status == "failed"
        assert await zoo.get_async_operation(good.id)  # the client is still open
    failures = [e for e in seen if isinstance(e, events.CallbackFailed)]
    error = type(ValueError() if callback is _raise_sync else KeyError()).__name__
    assert {e.key for e in failures} >= {f"zoo.async_operation:{bad.id}"}
    assert {e.error for e in failures} == {error}
    logged = [r for r in caplog.records if r.name == "async_jobs.watcher" and r.exc_info]
    assert logged and all(r.levelno == logging.ERROR for r in logged)


# -- exceptions leave as themselves ---------------------------------------------------------


async def test_wait_all_timeout_leaves_async_with_as_itself(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("queued", None)])
    async with _zoo(server) as zoo:
        with pytest.raises(aj.WaitTimeout) as caught:
            async with aj.Watcher(zoo, poll=POLL) as watcher:
                watcher.add(zoo.async_operation(op.id))
                await watcher.wait_all(timeout=0.1)
    assert type(caught.value) is aj.WaitTimeout  # not an ExceptionGroup around it
    assert isinstance(caught.value.last, list) and len(caught.value.last) == 1


async def test_a_callers_own_error_leaves_async_with_as_itself(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("queued", None)])
    async with _zoo(server) as zoo:
        with pytest.raises(LookupError, match="mine"):
            async with aj.Watcher(zoo, poll=POLL) as watcher:
                watcher.add(zoo.async_operation(op.id))
                await eventually(lambda: bool(server.requests))
                raise LookupError("mine")


async def test_a_typed_error_of_one_job_fails_only_its_awaitable(server: FakeApiServer) -> None:
    ok = server.zoo.add_operation(timeline=[("completed", None)])
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, coalesce=False) as watcher:
        missing = watcher.add(zoo.async_operation(str(uuid.uuid4())))
        good = watcher.add(zoo.async_operation(ok.id))
        with anyio.fail_after(SOON):
            with pytest.raises(aj.NotFoundError):
                await missing
            assert (await good).status == "completed"


# -- listing fallback -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_a_refused_listing_falls_back_with_one_warning_naming_the_group(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    dataset = server.conversions.add_dataset()
    convs = [server.conversions.add_conversion(dataset, [("queued", None)]) for _ in range(3)]
    listing = f"/org/datasets/{dataset}/conversions"
    server.inject("status", status=status, times=None, route=listing)
    seen: list[events.Event] = []
    caplog.set_level(logging.INFO, logger="async_jobs")
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, listeners=[seen.append]) as watcher:
        futures = [watcher.add(zoo.dataset_conversion(dataset, c.id)) for c in convs]
        await eventually(
            lambda: all(watcher.last(zoo.dataset_conversion(dataset, c.id)) for c in convs)
        )
        for conv in convs:
            server.conversions.set_status(conv.id, "success", phase="completed")
        with anyio.fail_after(SOON):
            assert {(await f).status for f in futures} == {"success"}
    # One sweep (a request per active status), never asked again.
    assert sum(r.path == listing for r in server.requests) <= len(CONVERSION_ACTIVE_STATUSES)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert f"zoo.dataset_conversions:{dataset}" in message
    assert not re.search(r"\(\d{6,}", message)  # no id(client) in it
    assert [e for e in seen if isinstance(e, events.ListingFallback)] == [
        events.ListingFallback(group=f"zoo.dataset_conversions:{dataset}", status=status)
    ]


# -- limits ---------------------------------------------------------------------------------


async def test_a_watcher_never_changes_its_clients_limits(server: FakeApiServer) -> None:
    async with aj.ZooClient(token=TOKEN, base_url=server.url, max_concurrency=64) as zoo:
        before = (zoo._http._concurrency, zoo._http.limiter)
        async with aj.Watcher(zoo, max_concurrency=2, rate_limit=5.0):
            assert (zoo._http._concurrency, zoo._http.limiter) == before
        assert zoo._http._concurrency is not None
        assert zoo._http._concurrency.total == 64


async def test_the_watchers_own_max_concurrency_bounds_all_its_requests(
    server: FakeApiServer,
) -> None:
    """Three groups and per-job polls at once, every request held by the server: never more
    than max_concurrency of the watcher's requests in flight (not one per loop)."""
    gate = server.inject("hold", times=None)
    datasets = [server.conversions.add_dataset() for _ in range(3)]
    convs = [(d, server.conversions.add_conversion(d, [("queued", None)])) for d in datasets]
    ops = [server.zoo.add_operation(timeline=[("queued", None)]) for _ in range(4)]
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, max_concurrency=2) as watcher:
        for dataset, conv in convs:
            watcher.add(zoo.dataset_conversion(dataset, conv.id))
        per_job = aj.Watcher(zoo, poll=POLL, max_concurrency=2, coalesce=False)
        async with per_job:
            for op in ops:
                per_job.add(zoo.async_operation(op.id))
            await eventually(lambda: server.in_flight == 4)
            for _ in range(50):
                await anyio.sleep(0.002)  # every chance for a fifth request to start
            assert server.max_in_flight == 4  # two watchers, two each
            gate.release()


# -- stall_timeout --------------------------------------------------------------------------


async def test_wait_until_terminal_stalls_with_the_last_job_and_the_cause(
    server: FakeApiServer,
) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    seen: list[aj.AsyncOperation] = []

    def outage(job: aj.AsyncOperation) -> None:
        seen.append(job)
        server.inject("status", status=503, times=None, route=f"/async/operations/{op.id}")

    async with _zoo(server, ONCE) as zoo:
        with anyio.fail_after(SOON), pytest.raises(aj.PollStalled) as caught:
            await aj.wait_until_terminal(
                zoo.async_operation(op.id), poll=POLL, on_update=outage, stall_timeout=0.3
            )
    assert caught.value.last == seen[-1]
    assert isinstance(caught.value.__cause__, aj.ServerError)
    assert isinstance(caught.value, aj.AsyncJobsError) and not isinstance(
        caught.value, TimeoutError
    )


async def test_watch_stalls_on_a_request_that_never_answers(server: FakeApiServer) -> None:
    """The server holds every request: no poll ends at all, and the stall still comes."""
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    server.inject("hold", times=None)
    async with _zoo(server) as zoo:
        with anyio.fail_after(SOON), pytest.raises(aj.PollStalled) as caught:
            async for _ in aj.watch(zoo.async_operation(op.id), poll=POLL, stall_timeout=0.2):
                pass
    assert caught.value.last is None
    assert isinstance(caught.value.__cause__, aj.TransportError)


async def test_without_stall_timeout_an_outage_is_waited_out(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    fault = server.inject("status", status=503, times=8, route=f"/async/operations/{op.id}")
    async with _zoo(server, ONCE) as zoo:
        with anyio.fail_after(SOON):
            waiting = zoo.async_operation(op.id)
            async for job in aj.watch(waiting, poll=POLL):
                if fault.hits == 8:
                    server.zoo.set_status(op.id, "completed")
                if job.is_terminal:
                    break
            else:
                raise AssertionError("watch ended without a terminal job")


@pytest.mark.parametrize("coalesce", [True, False])
async def test_watcher_stall_fails_the_awaitables_with_poll_stalled(
    server: FakeApiServer, coalesce: bool
) -> None:
    dataset = server.conversions.add_dataset()
    conv = server.conversions.add_conversion(dataset, [("queued", None)])
    other = server.zoo.add_operation(timeline=[("queued", None)])
    async with (
        _zoo(server, ONCE) as zoo,
        aj.Watcher(zoo, poll=POLL, coalesce=coalesce, stall_timeout=0.3) as watcher,
    ):
        ref = zoo.dataset_conversion(dataset, conv.id)
        stalled = watcher.add(ref)
        fine = watcher.add(zoo.async_operation(other.id))
        await eventually(lambda: watcher.last(ref) is not None)
        server.inject("drop", times=None, route=f"/org/datasets/{dataset}/*")
        with anyio.fail_after(SOON), pytest.raises(aj.PollStalled) as caught:
            await stalled
        assert caught.value.last is not None and caught.value.last.id == conv.id
        assert isinstance(caught.value.__cause__, aj.TransportError)
        assert not fine.done()  # the other job's polls succeed: it is still watched
        server.zoo.set_status(other.id, "completed")
        with anyio.fail_after(SOON):
            assert (await fine).status == "completed"


# -- the last known progress ----------------------------------------------------------------


async def test_unknown_phase_keeps_progress_in_watch_on_update_and_last(
    server: FakeApiServer,
) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(
        dataset,
        [
            ("in_progress", "salon", HOUR),
            ("in_progress", "phase_from_the_future", HOUR),
            ("in_progress", "another_new_phase", HOUR),
            ("success", "completed", None),
        ],
    )
    async with _zoo(server) as zoo:
        ref = zoo.dataset_conversion(dataset, fake.id)
        watched: list[float | None] = []
        async for conv in aj.watch(ref, poll=POLL):
            watched.append(conv.progress)
            server.clock.advance(HOUR)
        updates: list[float | None] = []
        lasts: list[float | None] = []
        again = server.conversions.add_conversion(
            dataset,
            [
                ("in_progress", "salon", HOUR),
                ("in_progress", "phase_from_the_future", HOUR),
                ("success", "completed", None),
            ],
        )
        async with aj.Watcher(zoo, poll=POLL) as watcher:
            ref = zoo.dataset_conversion(dataset, again.id)

            def record(conv: aj.DatasetConversion) -> None:
                updates.append(conv.progress)
                last = watcher.last(ref)
                lasts.append(last.progress if last is not None else None)
                server.clock.advance(HOUR)

            with anyio.fail_after(SOON):
                await watcher.add(ref, on_update=record)
    salon = aj.DatasetConversion(id="x", status="in_progress", phase="salon").progress
    assert watched == [salon, salon, salon, 1.0]
    assert updates == [salon, salon, 1.0]
    assert lasts == [salon, salon, 1.0]


# -- events of one wait ---------------------------------------------------------------------


async def test_a_wait_emits_started_polls_changes_and_done(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("queued", None)])
    seen: list[events.Event] = []
    remove = aj.add_listener(seen.append)
    try:
        async with _zoo(server) as zoo:

            def step(job: aj.AsyncOperation) -> None:
                if job.status == "queued":
                    server.zoo.set_status(op.id, "completed")

            with anyio.fail_after(SOON):
                await aj.wait_until_terminal(zoo.async_operation(op.id), poll=POLL, on_update=step)
            with pytest.raises(aj.WaitTimeout):
                late = server.zoo.add_operation(timeline=[("queued", None)])
                await aj.wait_until_terminal(zoo.async_operation(late.id), poll=POLL, timeout=0.05)
    finally:
        remove()
        remove()  # harmless twice
    key = f"zoo.async_operation:{op.id}"
    mine = [e for e in seen if getattr(e, "key", None) == key]
    assert isinstance(mine[0], events.WaitStarted)
    changes = [(e.old, e.new) for e in mine if isinstance(e, events.StateChanged)]
    assert changes == [(None, "pending"), ("pending", "succeeded")]
    done = [e for e in mine if isinstance(e, events.WaitDone)]
    assert len(done) == 1 and done[0].outcome == "succeeded" and done[0].polls >= 2
    assert {e.wait_id for e in mine} == {mine[0].wait_id} and mine[0].wait_id > 0
    timeouts = [e for e in seen if isinstance(e, events.WaitDone) and e.key != key]
    assert [e.outcome for e in timeouts] == ["timeout"]


async def test_a_raising_listener_changes_no_outcome(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])

    def broken(event: events.Event) -> None:
        raise RuntimeError("listener bug")

    remove = aj.add_listener(broken)
    try:
        async with _zoo(server) as zoo:
            with anyio.fail_after(SOON):
                job = await aj.wait_until_terminal(zoo.async_operation(op.id), poll=POLL)
    finally:
        remove()
    assert job.status == "completed"
    assert any(r.name == "async_jobs.events" for r in caplog.records)


async def test_a_watcher_can_be_entered_again_after_leaving(server: FakeApiServer) -> None:
    """Leaving stops every watch (its futures cancelled); entering again starts afresh, group
    loops included (a job polled through its listing resolves)."""
    first = server.zoo.add_operation(timeline=[("queued", None)])
    second = server.zoo.add_operation(timeline=[("completed", None)])
    async with _zoo(server) as zoo:
        watcher = aj.Watcher(zoo, poll=POLL)
        async with watcher:
            stopped = watcher.add(zoo.async_operation(first.id))
            with pytest.raises(RuntimeError, match="already running"):
                await watcher.__aenter__()
        assert stopped.cancelled() and not watcher.running and watcher.pending == 0
        async with watcher:
            with anyio.fail_after(SOON):
                assert (await watcher.add(zoo.async_operation(second.id))).id == second.id
        assert any(r.path == "/async/operations" for r in server.requests)


async def test_missed_polls_are_events_counting_the_misses_in_a_row(
    server: FakeApiServer,
) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    path = f"/async/operations/{op.id}"
    seen: list[events.Event] = []
    remove = aj.add_listener(seen.append)
    try:
        async with _zoo(server, ONCE) as zoo:

            def outage(job: aj.AsyncOperation) -> None:
                if job.status == "in_progress":
                    server.inject("status", status=503, times=3, route=path)
                    server.zoo.set_status(op.id, "completed")

            with anyio.fail_after(SOON):
                await aj.wait_until_terminal(
                    zoo.async_operation(op.id), poll=POLL, on_update=outage
                )
    finally:
        remove()
    missed = [e for e in seen if isinstance(e, events.PollMissed)]
    assert [(e.consecutive, e.error) for e in missed] == [(n, "ServerError") for n in (1, 2, 3)]
    assert all(0 <= e.delay <= POLL.maximum for e in missed)
    done = [e for e in seen if isinstance(e, events.WaitDone)]
    assert [(d.outcome, d.polls) for d in done] == [("succeeded", 2)]


async def test_a_bug_in_a_watcher_loop_fails_its_jobs_not_the_service(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop that raises (here: a listing that is not an async iterator) fails the jobs it
    serves with that error, is logged, and leaves async with cleanly; add() then refuses."""
    op = server.zoo.add_operation(timeline=[("queued", None)])
    async with _zoo(server) as zoo:
        ref = zoo.async_operation(op.id)
        broken = aj.JobRef(
            ref.kind,
            ref.ids,
            ref.fetch,
            listing=aj.ActiveListing("broken", lambda: None, name="broken"),  # type: ignore[arg-type,return-value]
        )
        async with aj.Watcher(zoo, poll=POLL) as watcher:
            future = watcher.add(broken)
            with anyio.fail_after(SOON), pytest.raises(TypeError):
                await future
            with pytest.raises(RuntimeError, match="internal error"):
                watcher.add(ref)
    assert any("failed" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_leaving_a_watch_early_is_an_interrupted_wait(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("queued", None)])
    seen: list[events.Event] = []
    remove = aj.add_listener(seen.append)
    try:
        async with _zoo(server) as zoo:
            updates = aj.watch(zoo.async_operation(op.id), poll=POLL)
            async for job in updates:
                assert job.status == "queued"
                break
            await updates.aclose()
    finally:
        remove()
    assert [e.outcome for e in seen if isinstance(e, events.WaitDone)] == ["interrupted"]
