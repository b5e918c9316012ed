"""Transport events: one RequestDone per attempt the server saw, one RetryScheduled per retry;
no token in any of them."""

from __future__ import annotations

import msgspec
import pytest

import async_jobs as aj
from async_jobs import events
from async_jobs.testing import FakeApiServer

from .conftest import FAST_RETRY, TOKEN

pytestmark = pytest.mark.anyio


async def test_request_events_match_the_servers_count(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{op.id}"
    server.inject("status", status=503, times=2, route=path)
    server.inject("status", status=429, times=1, retry_after="0", route=path)
    seen: list[events.Event] = []
    remove = aj.add_listener(seen.append)
    try:
        async with aj.ZooClient(
            token=TOKEN, base_url=server.url, retry=aj.RetryPolicy(max_attempts=5, initial=0.001)
        ) as zoo:
            assert (await zoo.get_async_operation(op.id)).status == "completed"
    finally:
        remove()
    done = [e for e in seen if isinstance(e, events.RequestDone)]
    retries = [e for e in seen if isinstance(e, events.RetryScheduled)]
    assert len(done) == len([r for r in server.requests if r.path == path]) == 4
    assert [e.attempt for e in done] == [1, 2, 3, 4]
    assert sorted(e.status or 0 for e in done) == [200, 429, 503, 503]
    assert all(e.request_id for e in done)  # Zoo's X-Api-Call-Id
    assert [e.attempt for e in retries] == [1, 2, 3]
    assert sorted(e.cause for e in retries) == ["RateLimitedError", "ServerError", "ServerError"]
    assert all(e.url.endswith(path) and e.method == "GET" for e in done + retries)
    assert TOKEN not in repr(seen) and TOKEN.encode() not in msgspec.json.encode(seen)


@pytest.mark.no_listeners
async def test_no_listener_no_event_objects(server: FakeApiServer) -> None:
    """With no listener the transport builds no event (one truth test per request)."""
    op = server.zoo.add_operation(timeline=[("completed", None)])
    assert not events.enabled()
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY) as zoo:
        await zoo.get_async_operation(op.id)


async def test_a_request_without_a_response_has_no_status(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject("drop", times=None)
    seen: list[events.Event] = []
    remove = aj.add_listener(seen.append)
    try:
        async with aj.ZooClient(
            token=TOKEN, base_url=server.url, retry=aj.RetryPolicy(max_attempts=2, initial=0.001)
        ) as zoo:
            with pytest.raises(aj.TransportError):
                await zoo.get_async_operation(op.id)
    finally:
        remove()
    done = [e for e in seen if isinstance(e, events.RequestDone)]
    assert [(e.attempt, e.status, e.error) for e in done] == [
        (1, None, "TransportError"),
        (2, None, "TransportError"),
    ]
