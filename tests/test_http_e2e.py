"""The transport end to end: retries, hints, faults, redirects, limits, timeouts."""

from __future__ import annotations

import contextlib
import gzip
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import anyio
import msgspec
import pytest
from aiohttp import web

import async_jobs as aj
from async_jobs._http import HttpTransport, StaticTokenAuth
from async_jobs._redact import MASK, redact
from async_jobs.testing import FakeApiServer

from .conftest import FAST_RETRY, TOKEN, eventually

pytestmark = pytest.mark.anyio
ROUTE = "/async/operations/*"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
        # HTTP dates have whole seconds: ask for a whole second at least 0.5 s away.
        now = datetime.now(timezone.utc)
        when = now.replace(microsecond=0) + timedelta(seconds=1 if now.microsecond < 500_000 else 2)
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
    fake = server.zoo.add_operation(extra={"status": 42})
    with pytest.raises(aj.DecodeError) as info:
        await zoo.get_async_operation(fake.id)
    assert "status" in str(info.value)


async def test_not_found(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    with pytest.raises(aj.NotFoundError) as info:
        await zoo.get_async_operation(str(uuid.uuid4()))
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


@contextlib.asynccontextmanager
async def _serve(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A bare aiohttp server on loopback answering every path with ``handler``: for what
    FakeApiServer does not do (hold requests open, chunked bodies)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


OPERATION = {"id": "op", "status": "completed"}


@pytest.mark.parametrize("how", ["constructor", "set_limits"])
async def test_max_concurrency_bounds_requests_in_flight(how: str) -> None:
    """Six concurrent calls through a client capped at 2: the server never holds more than
    two at once (it holds each until the test has seen two arrive and waited a little)."""
    in_flight = busiest = arrived = 0
    gate = anyio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, busiest, arrived
        in_flight += 1
        arrived += 1
        busiest = max(busiest, in_flight)
        try:
            await gate.wait()
        finally:
            in_flight -= 1
        return web.json_response(OPERATION)

    async with _serve(handler) as url:
        options = {"max_concurrency": 2} if how == "constructor" else {}
        async with aj.ZooClient(token=TOKEN, base_url=url, retry=FAST_RETRY, **options) as zoo:
            if how == "set_limits":
                zoo.set_limits(max_concurrency=2)
            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(zoo.get_async_operation, "op")
                await eventually(lambda: in_flight >= 2)
                await anyio.sleep(0.2)  # room for a third to arrive, were it let through
                gate.set()
    assert (busiest, arrived) == (2, 6)


@pytest.mark.parametrize("value", [0, -1])
def test_max_concurrency_below_one_is_refused(value: int) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        aj.ZooClient(token=None, base_url="http://127.0.0.1:9", max_concurrency=value)
    client = aj.ZooClient(token=None, base_url="http://127.0.0.1:9", max_concurrency=1)
    client.set_limits(max_concurrency=1)
    with pytest.raises(ValueError, match="max_concurrency"):
        client.set_limits(max_concurrency=value)


async def test_rate_limit_spaces_requests(server: FakeApiServer) -> None:
    """At 20 requests a second, five requests span at least four intervals (a lower bound:
    a busy machine only makes it longer); a later set_limits() of another limit keeps it."""
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    async with aj.ZooClient(token=TOKEN, base_url=server.url, rate_limit=20) as zoo:
        zoo.set_limits(max_concurrency=8)
        started = time.monotonic()
        for _ in range(5):
            await zoo.get_async_operation(fake.id)
        assert time.monotonic() - started >= 4 / 20 - 0.01


async def test_a_429_halves_a_configured_rate(server: FakeApiServer) -> None:
    """At 20/s a 429 halves the rate to 10/s (creeping back by 10% a second): the retry and
    four more requests after it need at least 0.05 + 4 * 0.095 s, not 5 * 0.05."""
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject("status", status=429, retry_after="0", route=ROUTE)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, rate_limit=20) as zoo:
        started = time.monotonic()
        for _ in range(5):
            await zoo.get_async_operation(fake.id)
        assert time.monotonic() - started >= 0.05 + 4 * 0.095 - 0.01
    assert _gets(server, fake.id) == 6


async def test_an_uncompressed_body_of_unknown_length_is_capped() -> None:
    """A chunked body with no Content-Length (and no Content-Encoding) is counted as it is
    read, and refused past the cap like any other."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=msgspec.json.encode(OPERATION) + b" " * 5000)
        response.enable_chunked_encoding()
        return response

    async with _serve(handler) as url:
        async with aj.ZooClient(token=TOKEN, base_url=url, max_body_size=4096) as zoo:
            with pytest.raises(aj.DecodeError, match="limit"):
                await zoo.get_async_operation("op")
        async with aj.ZooClient(token=TOKEN, base_url=url, max_body_size=8192) as zoo:
            assert (await zoo.get_async_operation("op")).id == "op"


@pytest.mark.parametrize(
    ("status", "retry_after", "retried"),
    [
        (429, None, True),
        (503, "0", True),
        (503, None, False),
        (502, "0", False),
        (504, None, False),
        (500, None, False),
    ],
)
@pytest.mark.parametrize("idempotent", [False, None])
async def test_a_post_is_retried_only_when_the_server_surely_did_not_act(
    server: FakeApiServer,
    idempotent: bool | None,
    status: int,
    retry_after: str | None,
    retried: bool,
) -> None:
    """A POST goes again only on 429 or a 503 with Retry-After (the server says it did not act
    on it); a bare 503 or a 502/504 may come after the work was done: sent once."""
    server.inject("status", status=status, retry_after=retry_after, times=None, route="/submit")
    transport = HttpTransport(server.url, auth=StaticTokenAuth(TOKEN), retry=FAST_RETRY)
    try:
        with pytest.raises(aj.ApiError) as caught:
            await transport.request("POST", "/submit", json={}, idempotent=idempotent)
        assert caught.value.status == status
        assert len(server.requests) == (FAST_RETRY.max_attempts if retried else 1)
        server.requests.clear()
        with pytest.raises(aj.ApiError):
            await transport.request("POST", "/submit", json={}, idempotent=True)
        transient = status != 500
        assert len(server.requests) == (FAST_RETRY.max_attempts if transient else 1)
    finally:
        await transport.aclose()


async def test_a_post_cut_off_after_sending_is_not_sent_again(server: FakeApiServer) -> None:
    """A connection dropped once the request went out may hide a done job: no second POST."""
    server.inject("drop", times=None, route="/submit")
    transport = HttpTransport(server.url, auth=StaticTokenAuth(TOKEN), retry=FAST_RETRY)
    try:
        with pytest.raises(aj.TransportError):
            await transport.request("POST", "/submit", json={})
        assert len(server.requests) == 1
    finally:
        await transport.aclose()


async def test_a_post_whose_connection_was_refused_is_sent_again() -> None:
    """No connection, nothing sent: a POST is retried like a GET."""
    async with FakeApiServer() as gone:
        url = gone.url
    attempts: list[int] = []

    def listener(event: aj.events.Event) -> None:
        if isinstance(event, aj.events.RequestDone):
            attempts.append(event.attempt)

    transport = HttpTransport(
        url, auth=StaticTokenAuth(TOKEN), retry=FAST_RETRY, listeners=[listener]
    )
    try:
        with pytest.raises(aj.TransportError):
            await transport.request("POST", "/submit", json={})
        assert attempts == list(range(1, FAST_RETRY.max_attempts + 1))
    finally:
        await transport.aclose()


async def test_a_300_is_not_success(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    """300 Multiple Choices is neither followed nor read as the answer."""
    status = 300
    body = msgspec.json.encode(OPERATION)
    server.inject("body", status=status, body=body, route=ROUTE)
    with pytest.raises(aj.ApiError) as info:
        await zoo.get_async_operation("op")
    assert info.value.status == status


async def test_the_first_retry_uses_the_first_step_of_the_schedule(server: FakeApiServer) -> None:
    """Retry 1 waits at most ``initial`` (1 ms here), not a later step of the backoff (an
    hour here): the hang guard trips only if the schedule starts one step late."""
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject("status", status=503, route=ROUTE)
    retry = aj.RetryPolicy(max_attempts=2, initial=0.001, multiplier=3.6e6, maximum=3600.0)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=retry) as zoo:
        with anyio.fail_after(10):
            assert (await zoo.get_async_operation(fake.id)).status == "completed"


async def test_a_token_echoed_by_the_server_is_masked_in_logs(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server puts the token in a redirect URL, which the transport logs at DEBUG: the
    record carries *** instead (the client registers its token while it is open)."""
    fake = server.zoo.add_operation(timeline=[("completed", None)])
    old = str(uuid.uuid4())
    location = f"/async/operations/{fake.id}?echo={TOKEN}"
    server.inject("redirect", location=location, route=f"/async/operations/{old}")
    caplog.set_level(logging.DEBUG, logger="async_jobs")
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY) as zoo:
        assert (await zoo.get_async_operation(old)).id == fake.id
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"?echo={MASK}" in message for message in messages)
    assert not any(TOKEN in message for message in messages)


async def test_a_closed_client_stops_masking_its_token(server: FakeApiServer) -> None:
    """A token is masked while some open client uses it, and forgotten once the last one
    closes (closing one twice does not forget it for the other)."""
    token = "tok-" + uuid.uuid4().hex
    first = aj.ZooClient(token=token, base_url=server.url)
    second = aj.ZooClient(token=token, base_url=server.url)
    assert redact(f"x {token}") == f"x {MASK}"
    await first.aclose()
    await first.aclose()
    assert redact(f"x {token}") == f"x {MASK}"
    await second.aclose()
    assert redact(f"x {token}") == f"x {token}"
