"""Reliability: cancellation anywhere, hostile bodies and headers, redirects, restarts."""

from __future__ import annotations

import gzip
import json
import warnings
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import async_jobs as aj
from async_jobs._http import _same_origin
from async_jobs.testing import FakeApiServer

from .conftest import FAST_POLL, FAST_RETRY, TOKEN, client_tasks

ROUTE = "/async/operations/*"
SLOW_TESTS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# -- cancellation at every await point ----------------------------------------------------------


@SLOW_TESTS
@given(
    checkpoints=st.integers(min_value=0, max_value=60),
    own_session=st.booleans(),
    latency=st.sampled_from([0.0, 0.002, 0.02]),
    api=st.sampled_from(["zoo", "metafold", "iter"]),
)
def test_cancellation_anywhere_leaves_nothing_behind(
    checkpoints: int, own_session: bool, latency: float, api: str
) -> None:
    """Cancel after ``checkpoints`` event-loop turns: wherever that lands (connecting, sending,
    reading, decoding, sleeping between polls, prefetching a page), the cancellation
    propagates and nothing is left running or open."""

    async def scenario() -> None:
        async with FakeApiServer(token=TOKEN) as server:
            if latency:
                server.inject("latency", delay=latency, times=None)
            op = server.zoo.add_operation(timeline=[("in_progress", None)])
            for _ in range(30):
                server.zoo.add_operation(timeline=[("queued", None)])
            job = server.metafold.add_job("p", timeline=[("started", None)])
            before = client_tasks()
            session = None if own_session else aiohttp.ClientSession()
            options: dict[str, Any] = {
                "token": TOKEN,
                "base_url": server.url,
                "retry": FAST_RETRY,
                "session": session,
            }
            zoo = aj.ZooClient(**options)
            mf = aj.MetafoldClient(**options)

            async def work() -> None:
                if api == "zoo":
                    await aj.wait_until_terminal(zoo.async_operation(op.id), poll=FAST_POLL)
                elif api == "metafold":
                    await aj.wait_until_terminal(mf.job(job.id, project_id="p"), poll=FAST_POLL)
                else:
                    async for _ in zoo.iter_async_operations(limit=2):
                        await anyio.sleep(0.001)

            async with anyio.create_task_group() as tg:
                tg.start_soon(work)
                for _ in range(checkpoints):
                    await anyio.lowlevel.checkpoint()
                tg.cancel_scope.cancel()
            await zoo.aclose()
            await mf.aclose()
            if session is not None:
                assert not session.closed  # the caller's session stays open and usable
                async with session.get(f"{server.url}/async/operations/{op.id}") as resp:
                    assert resp.status == 401
                await session.close()
            else:
                assert zoo._http._session is None and mf._http._session is None
            assert client_tasks() == before

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        anyio.run(scenario)


# -- hostile bodies -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
operation_like = st.fixed_dictionaries(
    {"id": st.text(max_size=10) | st.integers(), "status": st.text(max_size=12) | st.none()},
    optional={
        "created_at": st.text(max_size=30) | st.integers(),
        "attempts": st.integers() | st.text(max_size=3),
        "input": json_values,
        "outputs": json_values,
    },
)
hostile_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    operation_like.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.just(b"<html><body>Service Unavailable</body></html>"),
    st.just(b'{"id": "x", "status": "queued", "input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    st.just(b'{"id": "' + b"x" * 2_000_000 + b'", "status": "queued"}'),
    st.just(b'{"id": "x", "status": "\xff\xfe"}'),
)


@settings(max_examples=60, deadline=None)
@given(body=hostile_bodies, status=st.sampled_from([200, 200, 201, 500]))
def test_hostile_bodies_give_a_model_or_decode_error(body: bytes, status: int) -> None:
    async def scenario() -> None:
        async with FakeApiServer(token=TOKEN) as server:
            server.inject("body", body=body, status=status, times=None, route=ROUTE)
            async with aj.ZooClient(
                token=TOKEN, base_url=server.url, retry=aj.RetryPolicy(max_attempts=1)
            ) as zoo:
                try:
                    op = await zoo.get_async_operation("x")
                except (aj.DecodeError, aj.ServerError):
                    return
                assert isinstance(op, aj.AsyncOperation)
                assert isinstance(op.job_state, aj.JobState)

    anyio.run(scenario)


@pytest.mark.anyio
async def test_gzip_bomb_is_refused_without_reading_it_whole(server: FakeApiServer) -> None:
    bomb = gzip.compress(b" " * (64 * 2**20), compresslevel=9)  # 64 MiB of spaces, ~64 KiB
    assert len(bomb) < 2**20
    server.inject("body", body=bomb, headers={"Content-Encoding": "gzip"}, times=None, route=ROUTE)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, max_body_size=2**20) as zoo:
        with pytest.raises(aj.DecodeError, match="limit"):
            await zoo.get_async_operation("x")
    # The default cap (32 MiB) holds too.
    async with aj.ZooClient(token=TOKEN, base_url=server.url) as zoo:
        with pytest.raises(aj.DecodeError, match="limit"):
            await zoo.get_async_operation("x")


@pytest.mark.anyio
async def test_valid_gzip_body_decodes(server: FakeApiServer) -> None:
    body = msgspec.json.encode({"id": "g", "status": "completed"})
    server.inject(
        "body", body=gzip.compress(body), headers={"Content-Encoding": "gzip"}, route=ROUTE
    )
    async with aj.ZooClient(token=TOKEN, base_url=server.url) as zoo:
        assert (await zoo.get_async_operation("g")).status == "completed"


# -- hostile headers and hints --------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "header", ["-5", "99999999", "Thu, 01 Jan 1970 00:00:00 GMT", "soon", "", "1e309", "NaN"]
)
async def test_hostile_retry_after_is_capped_and_sane(server: FakeApiServer, header: str) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject("status", status=429, retry_after=header, times=2, route=ROUTE)
    retry = aj.RetryPolicy(max_attempts=3, initial=0.01, maximum=0.05)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=retry) as zoo:
        with anyio.fail_after(2):
            assert (await zoo.get_async_operation(op.id)).status == "completed"


@pytest.mark.anyio
async def test_429_forever_still_times_out(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject("status", status=429, retry_after="3600", times=None, route=ROUTE)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY) as zoo:
        with anyio.fail_after(5), pytest.raises(aj.WaitTimeout):
            await aj.wait_until_terminal(zoo.async_operation(op.id), timeout=0.5, poll=FAST_POLL)


# -- credentials across redirects and schemes -----------------------------------------------


def test_origin_comparison_includes_scheme_host_and_port() -> None:
    from yarl import URL

    base = URL("https://api.zoo.dev/async/operations/1")
    assert _same_origin(base, URL("https://api.zoo.dev/other"))
    assert not _same_origin(base, URL("http://api.zoo.dev/async/operations/1"))
    assert not _same_origin(base, URL("https://api.zoo.dev:8443/x"))
    assert not _same_origin(base, URL("https://evil.example/x"))


@pytest.mark.anyio
async def test_redirect_to_another_scheme_drops_auth(server: FakeApiServer) -> None:
    """A redirect from the (loopback, plain-http) server to an https URL on the same host and
    port: the TLS handshake fails, but no request with our header is ever sent there. (The
    hops that do complete over TLS, and what header each receives, are in test_tls.py.)"""
    location = f"https://127.0.0.1:{server.port}/async/operations/x"
    server.inject("redirect", location=location, route=ROUTE, times=None)
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY) as zoo:
        with pytest.raises(aj.TransportError) as info:
            await zoo.get_async_operation("x")
    assert TOKEN not in str(info.value)
    # Only the plain-http requests to the origin arrived (one per attempt), with the header.
    assert [r.authorization for r in server.requests] == [f"Bearer {TOKEN}"] * 4


# -- server restarts ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_waits_survive_a_server_restart_on_the_same_port(server: FakeApiServer) -> None:
    ops = [
        server.zoo.add_operation(timeline=[("in_progress", 0.6), ("completed", None)])
        for _ in range(5)
    ]
    port = server.port
    retry = aj.RetryPolicy(max_attempts=2, initial=0.01, maximum=0.05)
    results: list[aj.AsyncOperation] = []
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=retry) as zoo:

        async def wait(op_id: str) -> None:
            results.append(
                await aj.wait_until_terminal(zoo.async_operation(op_id), timeout=10, poll=FAST_POLL)
            )

        async with anyio.create_task_group() as tg:
            for op in ops:
                tg.start_soon(wait, op.id)
            await anyio.sleep(0.15)
            await server.stop()
            await anyio.sleep(0.3)  # every poll in this window fails to connect
            await server.start()
            assert server.port == port
    assert sorted(r.id for r in results) == sorted(op.id for op in ops)
    assert all(r.status == "completed" for r in results)
