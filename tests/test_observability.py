"""Logs an operator can live with, events that match what the server saw, listeners per
client, and a caller's own aiohttp tracing left working (issue 13)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest

import async_jobs as aj
from async_jobs import events
from async_jobs.testing import FakeApiServer

from .conftest import TOKEN, eventually

pytestmark = pytest.mark.anyio

POLL = aj.PollPolicy(initial=0.005, multiplier=1.5, maximum=0.02, jitter=0.1)
ONCE = aj.RetryPolicy(max_attempts=1)
QUICK_RETRY = aj.RetryPolicy(max_attempts=3, initial=0.001, maximum=0.005)
SOON = 20.0


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("async_jobs") and r.levelno == level]


async def test_an_outage_is_one_warning_and_one_info_not_a_line_per_poll(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty jobs through one Watcher and a single wait, the host failing for a while: one
    WARNING naming the host when it starts, one INFO when it ends, every miss only DEBUG."""
    ops = [server.zoo.add_operation(timeline=[("queued", None)]) for _ in range(20)]
    caplog.set_level(logging.DEBUG, logger="async_jobs")
    fault = server.inject("status", status=503, times=60, route="/async/operations/*")
    async with (
        aj.ZooClient(token=TOKEN, base_url=server.url, retry=ONCE) as zoo,
        aj.Watcher(zoo, poll=POLL, coalesce=False) as watcher,
    ):
        futures = [watcher.add(zoo.async_operation(op.id)) for op in ops]
        await eventually(lambda: fault.hits == 60)
        for op in ops:
            server.zoo.set_status(op.id, "completed")
        with anyio.fail_after(SOON):
            for future in futures:
                await future
    warnings = _records(caplog, logging.WARNING)
    infos = [r for r in _records(caplog, logging.INFO) if "answering again" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "127.0.0.1" in warnings[0].getMessage() and warnings[0].name == "async_jobs.http"
    assert len(infos) == 1
    missed = [r for r in caplog.records if "missed a poll" in r.getMessage()]
    assert len(missed) >= 30 and {r.levelno for r in missed} == {logging.DEBUG}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_blip_is_no_outage(server: FakeApiServer, caplog: pytest.LogCaptureFixture) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject("status", status=503, times=2, route=f"/async/operations/{op.id}")
    caplog.set_level(logging.DEBUG, logger="async_jobs")
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=QUICK_RETRY) as zoo:
        assert (await zoo.get_async_operation(op.id)).status == "completed"
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


async def test_event_counts_equal_the_servers_under_faults(server: FakeApiServer) -> None:
    """Every attempt the server saw is one RequestDone, dropped connections included (the
    client never re-sends one unseen), and every retry one RetryScheduled."""
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(30)]
    for kind, options in [
        ("status", {"status": 503}),
        ("status", {"status": 429, "retry_after": "0"}),
        ("drop", {}),
        ("truncated", {}),
        ("html", {"status": 502}),
    ]:
        server.inject(kind, times=None, probability=0.15, route="/async/operations/*", **options)  # type: ignore[arg-type]
    seen: list[events.Event] = []
    retry = aj.RetryPolicy(max_attempts=6, initial=0.001, maximum=0.005)
    async with aj.ZooClient(
        token=TOKEN, base_url=server.url, retry=retry, listeners=[seen.append]
    ) as zoo:
        with anyio.fail_after(SOON):
            async with anyio.create_task_group() as tg:
                for op in ops:
                    tg.start_soon(_wait_quietly, zoo.async_operation(op.id))
    done = [e for e in seen if isinstance(e, events.RequestDone)]
    retries = [e for e in seen if isinstance(e, events.RetryScheduled)]
    assert len(done) == len(server.requests)
    assert len(retries) == sum(1 for e in done if e.status != 200) - _given_up(seen)
    assert {e.error for e in done if e.status is None} <= {"TransportError"}
    assert all(e.key is not None and e.wait_id for e in done)  # each names its wait
    waits = {e.wait_id for e in seen if isinstance(e, events.WaitStarted)}
    assert {e.wait_id for e in done} <= waits
    assert TOKEN.encode() not in msgspec.json.encode(seen) and TOKEN not in repr(seen)


async def _wait_quietly(ref: aj.JobRef[Any]) -> None:
    await aj.wait_until_terminal(ref, poll=POLL)


def _given_up(seen: list[events.Event]) -> int:
    """Requests that failed on their last attempt (no retry scheduled after them)."""
    return sum(1 for e in seen if isinstance(e, events.PollMissed))


async def test_client_listeners_hear_its_requests_and_the_waits_on_its_jobs(
    server: FakeApiServer,
) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    mine: list[events.Event] = []
    other: list[events.Event] = []
    async with (
        aj.ZooClient(token=TOKEN, base_url=server.url, listeners=[mine.append]) as zoo,
        aj.ZooClient(token=TOKEN, base_url=server.url, listeners=[other.append]) as quiet,
    ):
        with anyio.fail_after(SOON):
            await aj.wait_until_terminal(zoo.async_operation(op.id), poll=POLL)
        with pytest.raises(aj.NotFoundError):
            await quiet.get_async_operation(str(uuid.uuid4()))
    kinds = [type(e).__name__ for e in mine]
    assert kinds[0] == "WaitStarted" and kinds[-1] == "WaitDone"
    assert "RequestDone" in kinds and "StateChanged" in kinds
    assert [type(e).__name__ for e in other] == ["RequestDone"]
    assert isinstance(other[0], events.RequestDone) and other[0].status == 404
    assert other[0].key is None and other[0].wait_id is None  # not sent for a wait


async def test_a_callers_session_keeps_its_own_tracing(server: FakeApiServer) -> None:
    """``session=aiohttp.ClientSession(trace_configs=[...])`` sees every request."""
    op = server.zoo.add_operation(timeline=[("completed", None)])
    started: list[str] = []

    async def on_start(
        _session: Any, _context: Any, params: aiohttp.TraceRequestStartParams
    ) -> None:
        started.append(f"{params.method} {params.url.path}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        aj.ZooClient(token=TOKEN, base_url=server.url, session=session) as zoo,
    ):
        await zoo.get_async_operation(op.id)
    assert started == [f"GET /async/operations/{op.id}"]
