"""The transport end to end: retries, hints, faults, redirects, limits, timeouts."""

from __future__ import annotations

import gzip
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import anyio
import msgspec
import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer

from .conftest import FAST_RETRY, TOKEN

pytestmark = pytest.mark.anyio
ROUTE = "/async/operations/*"


def _gets(server: FakeApiServer, op_id: str) -> int:
    return sum(1 for r in server.requests if r.path == f"/async/operations/{op_id}")


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_three_transient_statuses_then_success(
    server: FakeApiServer, zoo: aj.ZooClient, status: int
) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject("status", status=status, times=3, route=ROUTE)
    op = await zoo.get_async_operation(fake.id)
    assert op.status == "completed"
    assert _gets(server, fake.id) == 4


#: A schedule that would wait up to an hour before each retry: only a Retry-After can make
#: the retries come sooner.
SLOW_SCHEDULE = aj.RetryPolicy(max_attempts=4, initial=3600.0, multiplier=1.0, maximum=3600.0)


@pytest.mark.parametrize("form", ["seconds", "past-date"])
@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_retry_after_zero_beats_the_schedule(
    server: FakeApiServer, status: int, form: str
) -> None:
    """Retry-After is honoured on every retried status, not only 429: "retry now" (0 s, or
    a date in the past) wins over an hour-long backoff. The hang guard only trips if the
    hint is ignored (three full-jitter draws from [0, 3600] s all but never sum below 10)."""
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    hint = {"retry_after": "0"} if form == "seconds" else {"retry_after_date": -60.0}
    server.inject("status", status=status, times=3, route=ROUTE, **hint)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=SLOW_SCHEDULE) as client:
        with anyio.fail_after(10):
            assert (await client.get_async_operation(fake.id)).status == "completed"
    assert _gets(server, fake.id) == 4


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_retry_after_longer_than_the_schedule_is_waited(
    server: FakeApiServer, status: int
) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject("status", status=status, retry_after="0.2", route=ROUTE)
    retry = aj.RetryPolicy(max_attempts=2, initial=0.0, maximum=5.0)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=retry) as client:
        started = time.monotonic()
        assert (await client.get_async_operation(fake.id)).status == "completed"
        waited = time.monotonic() - started
    assert waited >= 0.2  # a lower bound only: the schedule alone retries at once


@pytest.mark.parametrize("status", [400, 404, 409, 500, 501, 505])
async def test_other_statuses_are_not_retried(
    server: FakeApiServer, zoo: aj.ZooClient, status: int
) -> None:
    fake = server.zoo.add_operation()
    server.inject("status", status=status, retry_after="0", times=None, route=ROUTE)
    with pytest.raises(aj.ApiError) as info:
        await zoo.get_async_operation(fake.id)
    assert info.value.status == status
    assert _gets(server, fake.id) == 1


async def test_persistent_503_gives_server_error(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation()
    server.inject("status", status=503, times=None, route=ROUTE)
    with pytest.raises(aj.ServerError) as info:
        await zoo.get_async_operation(fake.id)
    assert info.value.status == 503
    assert info.value.request_id  # from the Zoo error body
    assert _gets(server, fake.id) == FAST_RETRY.max_attempts


async def test_500_is_not_retried(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation()
    server.inject("status", status=500, times=None, route=ROUTE)
    with pytest.raises(aj.ServerError):
        await zoo.get_async_operation(fake.id)
    assert _gets(server, fake.id) == 1


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_429_retry_after_is_honoured(
    server: FakeApiServer, zoo: aj.ZooClient, form: str
) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    if form == "seconds":
        header, minimum = "0.3", 0.3
    else:
        # HTTP dates have whole seconds: ask for the next-but-one second.
        when = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
        header = format_datetime(when, usegmt=True)
        minimum = (when - datetime.now(timezone.utc)).total_seconds() - 0.05
    server.inject("status", status=429, retry_after=header, route=ROUTE)
    retry = aj.RetryPolicy(max_attempts=3, initial=0.0, maximum=5.0)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=retry) as client:
        started = time.monotonic()
        op = await client.get_async_operation(fake.id)
        waited = time.monotonic() - started
    assert op.status == "completed"
    assert waited >= minimum  # the schedule alone would have retried at once


async def test_429_forever_gives_rate_limited_error(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    fake = server.zoo.add_operation()
    server.inject("status", status=429, retry_after="0.001", times=None, route=ROUTE)
    with pytest.raises(aj.RateLimitedError) as info:
        await zoo.get_async_operation(fake.id)
    assert info.value.retry_after == pytest.approx(0.001)


@pytest.mark.parametrize("kind", ["drop", "truncated"])
async def test_broken_connections_are_retried(
    server: FakeApiServer, zoo: aj.ZooClient, kind: str
) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject(kind, times=2, route=ROUTE)
    assert (await zoo.get_async_operation(fake.id)).status == "completed"


@pytest.mark.parametrize("kind", ["drop", "truncated"])
async def test_broken_connections_exhaust_into_transport_error(
    server: FakeApiServer, zoo: aj.ZooClient, kind: str
) -> None:
    fake = server.zoo.add_operation()
    server.inject(kind, times=None, route=ROUTE)
    with pytest.raises(aj.TransportError):
        await zoo.get_async_operation(fake.id)


async def test_malformed_body_is_decode_error(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation()
    server.inject("malformed", route=ROUTE)
    with pytest.raises(aj.DecodeError) as info:
        await zoo.get_async_operation(fake.id)
    assert info.value.status == 200
    assert info.value.excerpt.startswith('{"id": "x"')


async def test_html_200_is_decode_error(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation()
    server.inject("html", status=200, route=ROUTE)
    with pytest.raises(aj.DecodeError) as info:
        await zoo.get_async_operation(fake.id)
    assert "Bad Gateway" in info.value.excerpt


async def test_html_502_is_retried_then_succeeds(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject("html", status=502, times=2, route=ROUTE)
    assert (await zoo.get_async_operation(fake.id)).status == "completed"


async def test_wrong_shape_is_decode_error(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    server.zoo.add_operation(id="op-1", extra={"status": 42})
    with pytest.raises(aj.DecodeError) as info:
        await zoo.get_async_operation("op-1")
    assert "status" in str(info.value)


async def test_not_found(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    with pytest.raises(aj.NotFoundError) as info:
        await zoo.get_async_operation("no-such-op")
    assert info.value.code == "not_found"
    assert info.value.request_id


async def test_request_timeout_is_transport_error(server: FakeApiServer) -> None:
    fake = server.zoo.add_operation()
    server.inject("latency", delay=0.5, times=None, route=ROUTE)
    retry = aj.RetryPolicy(max_attempts=2, initial=0.0)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=retry, timeout=0.05) as zoo:
        with pytest.raises(aj.TransportError, match="no response within"):
            await zoo.get_async_operation(fake.id)


async def test_slow_once_then_fine(server: FakeApiServer) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject("latency", delay=0.5, times=1, route=ROUTE)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY, timeout=0.1) as zoo:
        assert (await zoo.get_async_operation(fake.id)).status == "completed"


async def test_connection_refused_is_transport_error() -> None:
    async with FakeApiServer() as gone:
        url = gone.url
    async with aj.ZooClient(token=TOKEN, base_url=url, retry=FAST_RETRY) as zoo:
        with pytest.raises(aj.TransportError):
            await zoo.get_async_operation("x")


async def test_body_over_the_cap_is_refused(server: FakeApiServer) -> None:
    fake = server.zoo.add_operation(extra={"code": "x" * 50_000})
    async with aj.ZooClient(token=TOKEN, base_url=server.url, max_body_size=10_000) as zoo:
        with pytest.raises(aj.DecodeError, match="limit"):
            await zoo.get_async_operation(fake.id)


async def test_same_origin_redirect_keeps_auth(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject(
        "redirect", location=f"/async/operations/{fake.id}", route="/async/operations/old"
    )
    assert (await zoo.get_async_operation("old")).id == fake.id
    assert server.requests[-1].authorization == f"Bearer {TOKEN}"


async def test_cross_origin_redirect_drops_auth(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    async with FakeApiServer(token=None) as other:
        target = other.zoo.add_operation(timeline=[("completed", None)])
        server.inject("redirect", location=f"{other.url}/async/operations/{target.id}", route=ROUTE)
        op = await zoo.get_async_operation("anything")
        assert op.id == target.id
        assert [r.authorization for r in other.requests] == [None]


async def test_redirect_loop_is_transport_error(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    server.inject("redirect", location="/async/operations/loop", times=None, route=ROUTE)
    with pytest.raises(aj.TransportError, match="redirects"):
        await zoo.get_async_operation("loop")


async def test_401_with_a_static_token_is_sent_once(server: FakeApiServer) -> None:
    """A static token cannot be renewed, so a 401 is final: no second request."""
    fake = server.zoo.add_operation()
    async with aj.ZooClient(token="wrong", base_url=server.url, retry=FAST_RETRY) as zoo:
        with pytest.raises(aj.AuthenticationError):
            await zoo.get_async_operation(fake.id)
    assert _gets(server, fake.id) == 1


def _padded_operation(size: int) -> bytes:
    """A valid operation body of exactly ``size`` bytes (JSON allows trailing blanks)."""
    body = msgspec.json.encode({"id": "padded", "status": "completed"})
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("compressed", [False, True], ids=["content-length", "gzip"])
async def test_body_cap_is_exact(server: FakeApiServer, compressed: bool) -> None:
    """A body of exactly ``max_body_size`` bytes (decompressed) is read; one byte more is
    refused, whether its length is announced or only found while reading."""
    cap = 4096
    for size, fits in [(cap, True), (cap + 1, False)]:
        body = _padded_operation(size)
        headers = None
        if compressed:
            body, headers = gzip.compress(body), {"Content-Encoding": "gzip"}
        server.inject("body", body=body, headers=headers, route=ROUTE)
        async with aj.ZooClient(token=TOKEN, base_url=server.url, max_body_size=cap) as zoo:
            if fits:
                assert (await zoo.get_async_operation("padded")).id == "padded"
            else:
                with pytest.raises(aj.DecodeError, match=f"{cap}-byte limit"):
                    await zoo.get_async_operation("padded")
