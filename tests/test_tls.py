"""Credentials across TLS hops, with real https servers on loopback.

Each test makes its own certificate authority (trustme) and serves https from FakeApiServer
with it; the client trusts that CA through a caller-owned session, the public way to bring
TLS settings. Every hop's Authorization header is read from what the servers received.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import trustme

import async_jobs as aj
from async_jobs.testing import FakeApiServer

from .conftest import FAST_RETRY, TOKEN

pytestmark = pytest.mark.anyio
BEARER = f"Bearer {TOKEN}"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_ssl(ca: trustme.CA) -> Iterator[ssl.SSLContext]:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    yield context


@pytest.fixture
async def session(client_ssl: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as owned:
        yield owned


def _zoo(base_url: str, session: aiohttp.ClientSession) -> aj.ZooClient:
    return aj.ZooClient(token=TOKEN, base_url=base_url, session=session, retry=FAST_RETRY)


def _path(op_id: str) -> str:
    return f"/async/operations/{op_id}"


async def test_https_base_url_is_verified_and_authenticated(
    server_ssl: ssl.SSLContext, session: aiohttp.ClientSession
) -> None:
    """The control for the tests below: TLS really completes, with the token, and a client
    that does not trust the test CA is refused (certificates are verified by default)."""
    async with FakeApiServer(token=TOKEN, ssl=server_ssl) as tls:
        assert tls.url.startswith("https://127.0.0.1:")
        op = tls.zoo.add_operation(timeline=[("completed", None)])
        async with _zoo(tls.url, session) as zoo:
            assert (await zoo.get_async_operation(op.id)).status == "completed"
        assert [r.authorization for r in tls.requests] == [BEARER]
        async with aj.ZooClient(token=TOKEN, base_url=tls.url, retry=FAST_RETRY) as untrusting:
            with pytest.raises(aj.TransportError) as info:
                await untrusting.get_async_operation(op.id)
        assert "certificate" in str(info.value).lower()
        assert TOKEN not in str(info.value)
        assert len(tls.requests) == 1  # no request got past a failed handshake


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_from_http_to_https_drops_auth(
    server: FakeApiServer,
    server_ssl: ssl.SSLContext,
    session: aiohttp.ClientSession,
    status: int,
) -> None:
    """http://127.0.0.1:A redirects to https://127.0.0.1:B: the https hop completes and
    receives no Authorization header (an upgrade to https is still another origin)."""
    async with FakeApiServer(token=None, ssl=server_ssl) as tls:
        target = tls.zoo.add_operation(timeline=[("completed", None)])
        op_id = str(uuid.uuid4())
        location = tls.url + _path(target.id)
        server.inject("redirect", status=status, location=location, route=_path(op_id))
        async with _zoo(server.url, session) as zoo:
            assert (await zoo.get_async_operation(op_id)).id == target.id
        assert [r.authorization for r in server.requests] == [BEARER]
        assert [(r.method, r.path, r.authorization) for r in tls.requests] == [
            ("GET", _path(target.id), None)
        ]


@pytest.mark.parametrize(
    "second_https",
    [pytest.param(False, id="https downgraded to http"), pytest.param(True, id="another port")],
)
async def test_https_redirect_to_another_origin_drops_auth(
    server_ssl: ssl.SSLContext, session: aiohttp.ClientSession, second_https: bool
) -> None:
    """An https base URL redirected to plain http on the same host, or to https on another
    port: another origin either way, so no header there."""
    async with (
        FakeApiServer(token=TOKEN, ssl=server_ssl) as first,
        FakeApiServer(token=None, ssl=server_ssl if second_https else None) as second,
    ):
        target = second.zoo.add_operation(timeline=[("completed", None)])
        op_id = str(uuid.uuid4())
        first.inject("redirect", location=second.url + _path(target.id), route=_path(op_id))
        async with _zoo(first.url, session) as zoo:
            assert (await zoo.get_async_operation(op_id)).id == target.id
        assert [r.authorization for r in first.requests] == [BEARER]
        assert [r.authorization for r in second.requests] == [None]


async def test_https_redirect_to_another_host_name_drops_auth(
    server_ssl: ssl.SSLContext, session: aiohttp.ClientSession
) -> None:
    """Same scheme, same port, same server, but another host name (localhost instead of
    127.0.0.1): another origin, so the hop arrives without the header and gets a 401."""
    async with FakeApiServer(token=TOKEN, ssl=server_ssl) as tls:
        target = tls.zoo.add_operation(timeline=[("completed", None)])
        op_id = str(uuid.uuid4())
        location = f"https://localhost:{tls.port}{_path(target.id)}"
        tls.inject("redirect", location=location, route=_path(op_id))
        async with _zoo(tls.url, session) as zoo:
            with pytest.raises(aj.AuthenticationError):
                await zoo.get_async_operation(op_id)
        assert [(r.path, r.authorization) for r in tls.requests] == [
            (_path(op_id), BEARER),
            (_path(target.id), None),
        ]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_https_same_origin_redirect_keeps_auth(
    server_ssl: ssl.SSLContext, session: aiohttp.ClientSession, status: int
) -> None:
    async with FakeApiServer(token=TOKEN, ssl=server_ssl) as tls:
        target = tls.zoo.add_operation(timeline=[("completed", None)])
        op_id = str(uuid.uuid4())
        tls.inject("redirect", status=status, location=_path(target.id), route=_path(op_id))
        async with _zoo(tls.url, session) as zoo:
            assert (await zoo.get_async_operation(op_id)).id == target.id
        assert [(r.path, r.authorization) for r in tls.requests] == [
            (_path(op_id), BEARER),
            (_path(target.id), BEARER),
        ]
