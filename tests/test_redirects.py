"""Redirects end to end: every status the transport follows, the method each one keeps or
changes (RFC 9110 15.4), relative locations, the hop limit, and a 3xx without a Location."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from itertools import pairwise

import msgspec
import pytest

import async_jobs as aj
from async_jobs._http import HttpTransport, StaticTokenAuth
from async_jobs.testing import FakeApiServer

from .conftest import FAST_RETRY, TOKEN

pytestmark = pytest.mark.anyio
BEARER = f"Bearer {TOKEN}"
FOLLOWED = [301, 302, 303, 307, 308]
CLIENT_ID, SECRET = "redirect-client", "redirect-secret"
#: Redirects followed for one request (the design's limit, spelled out so a change to it
#: has to change this test too).
MAX_REDIRECTS = 5


def _path(op_id: str) -> str:
    return f"/async/operations/{op_id}"


def _hops(server: FakeApiServer) -> list[tuple[str, str, str | None]]:
    return [(r.method, r.path, r.authorization) for r in server.requests]


@pytest.fixture
async def transport(server: FakeApiServer) -> AsyncIterator[HttpTransport]:
    http = HttpTransport(server.url, auth=StaticTokenAuth(TOKEN), retry=FAST_RETRY)
    try:
        yield http
    finally:
        await http.aclose()


@pytest.mark.parametrize("status", FOLLOWED)
async def test_get_follows_each_redirect_status_as_a_get(
    server: FakeApiServer, zoo: aj.ZooClient, status: int
) -> None:
    target = server.zoo.add_operation(timeline=[("completed", None)])
    old = str(uuid.uuid4())
    server.inject("redirect", status=status, location=_path(target.id), route=_path(old))
    op = await zoo.get_async_operation(old)
    assert (op.id, op.status) == (target.id, "completed")
    assert _hops(server) == [("GET", _path(old), BEARER), ("GET", _path(target.id), BEARER)]


async def test_303_turns_a_post_into_a_get(server: FakeApiServer, transport: HttpTransport) -> None:
    target = server.zoo.add_operation(timeline=[("completed", None)])
    server.inject("redirect", status=303, location=_path(target.id), route="/submit")
    response = await transport.request("POST", "/submit", json={"x": 1}, idempotent=False)
    assert response.status == 200
    assert msgspec.json.decode(response.body)["id"] == target.id
    assert _hops(server) == [("POST", "/submit", BEARER), ("GET", _path(target.id), BEARER)]


@pytest.mark.parametrize("status", [307, 308])
async def test_307_and_308_keep_the_method_and_the_body(
    server: FakeApiServer, transport: HttpTransport, status: int
) -> None:
    """A POST redirected by 307/308 arrives as the same POST: the token endpoint only
    answers 200 to the whole form, so a 200 proves the body came along."""
    server.metafold.add_client(CLIENT_ID, SECRET)
    server.inject("redirect", status=status, location="/oauth/token", route="/oauth/moved")
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "audience": server.url + "/",
    }
    response = await transport.request("POST", "/oauth/moved", data=form, authenticate=False)
    assert response.status == 200
    assert msgspec.json.decode(response.body)["access_token"]
    assert [(r.method, r.path) for r in server.requests] == [
        ("POST", "/oauth/moved"),
        ("POST", "/oauth/token"),
    ]


async def test_client_credentials_follow_a_moved_token_endpoint(server: FakeApiServer) -> None:
    """The public path a POST takes: the OAuth2 exchange, with its token URL moved (308)."""
    server.metafold.add_client(CLIENT_ID, SECRET)
    job = server.metafold.add_job("p", timeline=[("success", None)])
    server.inject("redirect", status=308, location="/oauth/token", route="/oauth/moved")
    async with aj.MetafoldClient(
        client_id=CLIENT_ID,
        client_secret=SECRET,
        token_url=server.url + "/oauth/moved",
        base_url=server.url,
        project_id="p",
        retry=FAST_RETRY,
    ) as mf:
        assert (await mf.get_job(job.id)).id == job.id
    assert [(r.method, r.path) for r in server.requests[:2]] == [
        ("POST", "/oauth/moved"),
        ("POST", "/oauth/token"),
    ]


async def test_relative_location_is_resolved_against_the_request(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    target = server.zoo.add_operation(timeline=[("completed", None)])
    old = str(uuid.uuid4())
    server.inject("redirect", location=target.id, route=_path(old))
    assert (await zoo.get_async_operation(old)).id == target.id
    assert [r.path for r in server.requests] == [_path(old), _path(target.id)]


async def test_a_chain_of_the_maximum_hops_is_followed(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    target = server.zoo.add_operation(timeline=[("completed", None)])
    hops = [str(uuid.uuid4()) for _ in range(MAX_REDIRECTS)]
    for here, there in pairwise([*hops, target.id]):
        server.inject("redirect", location=_path(there), route=_path(here))
    assert (await zoo.get_async_operation(hops[0])).id == target.id
    assert len(server.requests) == MAX_REDIRECTS + 1


async def test_one_hop_too_many_is_a_transport_error_not_retried(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    hops = [str(uuid.uuid4()) for _ in range(MAX_REDIRECTS + 2)]
    for here, there in pairwise(hops):
        server.inject("redirect", location=_path(there), route=_path(here))
    with pytest.raises(aj.TransportError, match=f"more than {MAX_REDIRECTS} redirects"):
        await zoo.get_async_operation(hops[0])
    # One attempt only: five hops followed after the first request, then stop.
    assert [r.path for r in server.requests] == [_path(h) for h in hops[: MAX_REDIRECTS + 1]]


@pytest.mark.parametrize("status", [302, 304])
async def test_a_3xx_without_location_is_an_api_error(
    server: FakeApiServer, zoo: aj.ZooClient, status: int
) -> None:
    op_id = str(uuid.uuid4())
    server.inject("body", status=status, body=b"", route=_path(op_id))
    with pytest.raises(aj.ApiError) as info:
        await zoo.get_async_operation(op_id)
    assert info.value.status == status
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [307, 308])
async def test_a_body_is_never_sent_on_to_another_origin(
    server: FakeApiServer, status: int
) -> None:
    """A token exchange redirected to another origin keeping the method (307/308) would carry
    the client secret there: it is refused, and the other server sees nothing."""
    async with FakeApiServer(token=None) as other:
        other.metafold.add_client(CLIENT_ID, SECRET)
        location = other.url + "/oauth/token"
        server.inject("redirect", status=status, location=location, route="/oauth/moved")
        async with aj.MetafoldClient(
            client_id=CLIENT_ID,
            client_secret=SECRET,
            token_url=server.url + "/oauth/moved",
            audience=other.url + "/",
            base_url=server.url,
            project_id="p",
            retry=FAST_RETRY,
        ) as mf:
            with pytest.raises(aj.TransportError, match="another origin") as info:
                await mf.get_job("j")
        assert SECRET not in str(info.value)
        assert other.requests == []


async def test_a_303_to_another_origin_drops_the_body_and_goes(
    server: FakeApiServer, transport: HttpTransport
) -> None:
    async with FakeApiServer(token=None) as other:
        target = other.zoo.add_operation(timeline=[("completed", None)])
        location = other.url + _path(target.id)
        server.inject("redirect", status=303, location=location, route="/submit")
        response = await transport.request("POST", "/submit", json={"x": 1}, idempotent=False)
        assert msgspec.json.decode(response.body)["id"] == target.id
        assert _hops(other) == [("GET", _path(target.id), None)]
