"""ZooClient against FakeApiServer: listing, paging, merging, validation, sessions."""

from __future__ import annotations

import gc
import random
from collections import Counter

import aiohttp
import anyio
import msgspec
import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer

from .conftest import FAST_RETRY, TOKEN, client_tasks

pytestmark = pytest.mark.anyio

STATUSES = ["queued", "uploaded", "in_progress", "completed", "failed"]


def _populate(server: FakeApiServer, count: int) -> dict[str, str]:
    """``count`` operations spread at random over the five statuses; id -> status."""
    rng = random.Random(7)
    truth = {}
    for _ in range(count):
        status = rng.choice(STATUSES)
        op = server.zoo.add_operation("file_mass", [(status, None)], error="bad mesh")
        truth[op.id] = status
    return truth


async def test_get_async_operation(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    fake = server.zoo.add_operation("file_volume", [("completed", None)])
    op = await zoo.get_async_operation(fake.id)
    assert isinstance(op, aj.AsyncOperation)
    assert (op.id, op.status, op.type) == (fake.id, "completed", "file_volume")
    assert op.volume == 42.5
    assert op.job_state is aj.JobState.SUCCEEDED
    request = server.requests[-1]
    assert request.authorization == f"Bearer {TOKEN}"
    assert request.user_agent == f"async-jobs/{aj.__version__}"


async def test_list_one_page(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    truth = _populate(server, 30)
    page = await zoo.list_async_operations("queued", limit=5)
    assert len(page.items) == min(5, Counter(truth.values())["queued"])
    assert all(op.status == "queued" for op in page.items)
    assert page.next_page is not None
    follow = await zoo.list_async_operations("queued", limit=5, page_token=page.next_page)
    assert {op.id for op in follow.items}.isdisjoint(op.id for op in page.items)


@pytest.mark.parametrize("sort_by", ["created_at_descending", "created_at_ascending"])
async def test_thousand_operations_over_five_statuses(
    server: FakeApiServer, zoo: aj.ZooClient, sort_by: str
) -> None:
    truth = _populate(server, 1000)
    seen = [op async for op in zoo.iter_async_operations(sort_by=sort_by, limit=7)]
    ids = [op.id for op in seen]
    assert len(ids) == len(set(ids)) == 1000  # no loss, no duplicate
    assert {op.id: op.status for op in seen} == truth
    stamps = [op.created_at for op in seen]
    assert stamps == sorted(stamps, reverse=sort_by == "created_at_descending")  # type: ignore[type-var]
    pages = [r for r in server.requests if r.path == "/async/operations"]
    expected_pages = sum(-(-n // 7) for n in Counter(truth.values()).values())
    assert len(pages) == expected_pages


async def test_iter_several_statuses_and_max_items(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    truth = _populate(server, 100)
    wanted = {k for k, v in truth.items() if v in ("completed", "failed")}
    got = [op.id async for op in zoo.iter_async_operations(["completed", "failed"], limit=3)]
    assert set(got) == wanted and len(got) == len(wanted)
    first = [op async for op in zoo.iter_async_operations(limit=4, max_items=10)]
    assert len(first) == 10
    stamps = [op.created_at for op in first]
    assert stamps == sorted(stamps)  # type: ignore[type-var]  # created_at_ascending by default
    latest = [
        op
        async for op in zoo.iter_async_operations(
            sort_by="created_at_descending", limit=4, max_items=10
        )
    ]
    stamps = [op.created_at for op in latest]
    assert stamps == sorted(stamps, reverse=True)  # type: ignore[type-var]


async def test_breaking_out_early_leaves_no_task(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    _populate(server, 200)
    before = client_tasks()
    iterator = zoo.iter_async_operations(limit=5)
    async for _ in iterator:
        break
    await iterator.aclose()
    assert client_tasks() == before


@pytest.mark.parametrize(
    "call",
    [
        lambda z: z.list_async_operations(""),
        lambda z: z.list_async_operations("queued", sort_by=""),
        lambda z: z.list_async_operations("queued", limit=0),
        lambda z: z.list_async_operations("queued", limit=True),
    ],
)
async def test_bad_arguments_raise_before_any_request(
    server: FakeApiServer, zoo: aj.ZooClient, call: object
) -> None:
    with pytest.raises(ValueError):
        await call(zoo)  # type: ignore[operator]
    assert server.requests == []


@pytest.mark.parametrize(
    "call",
    [
        lambda z: z.list_async_operations("canceled_by_staff"),
        lambda z: z.list_async_operations("queued", sort_by="updated_at_descending"),
        lambda z: z.iter_async_operations("canceled_by_staff").__anext__(),
    ],
)
async def test_a_value_the_server_may_add_is_sent_as_is(
    server: FakeApiServer, zoo: aj.ZooClient, call: object
) -> None:
    """Literal[...] | str: a status or sort mode this library does not know is the server's
    to judge (this fake, like today's API, answers 400), never refused client-side."""
    with pytest.raises(aj.BadRequestError):
        await call(zoo)  # type: ignore[operator]
    assert len(server.requests) == 1
    sent = server.requests[0].query
    assert "canceled_by_staff" in sent.values() or "updated_at_descending" in sent.values()


def test_bad_iter_arguments_raise_at_call_time() -> None:
    client = aj.ZooClient(token="t", base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError):
        client.iter_async_operations(status=["queued", ""])
    with pytest.raises(ValueError):
        client.iter_async_operations(status=[])
    with pytest.raises(ValueError, match="merging"):
        client.iter_async_operations(sort_by="by_size")  # several streams: order unknown
    with pytest.raises(ValueError):
        client.iter_async_operations(limit=-1)
    with pytest.raises(ValueError):
        client.iter_async_operations(max_items=-1)


async def test_page_token_reaches_server_byte_for_byte(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    with pytest.raises(aj.BadRequestError):
        await zoo.list_async_operations("queued", page_token="a+b&c=d/==")
    assert server.requests[-1].query["page_token"] == "a+b&c=d/=="
    assert server.requests[-1].query["status"] == "queued"


async def test_callers_session_is_used_and_left_open(server: FakeApiServer) -> None:
    fake = server.zoo.add_operation(timeline=[("queued", None)])
    async with aiohttp.ClientSession() as session:
        async with aj.ZooClient(token=TOKEN, base_url=server.url, session=session) as zoo:
            assert (await zoo.get_async_operation(fake.id)).status == "queued"
        assert not session.closed
        async with session.get(f"{server.url}/async/operations/{fake.id}") as resp:
            assert resp.status == 401  # still usable; carries no token of ours


async def test_own_session_is_closed(server: FakeApiServer) -> None:
    fake = server.zoo.add_operation(timeline=[("queued", None)])
    zoo = aj.ZooClient(token=TOKEN, base_url=server.url)
    await zoo.get_async_operation(fake.id)
    session = zoo._http._session
    assert session is not None
    await zoo.aclose()
    assert session.closed
    with pytest.raises(RuntimeError):
        await zoo.get_async_operation(fake.id)


async def test_own_session_is_closed_even_from_a_cancelled_scope(server: FakeApiServer) -> None:
    """aclose() in a cancelled task (a finally block, a task group shutting down) still runs
    the session's close() to its end, so no connection is left to the garbage collector."""
    fake = server.zoo.add_operation(timeline=[("queued", None)])
    zoo = aj.ZooClient(token=TOKEN, base_url=server.url)
    await zoo.get_async_operation(fake.id)
    session = zoo._http._session
    assert session is not None
    with anyio.CancelScope() as scope:
        scope.cancel()
        await zoo.aclose()
    assert session.closed
    assert session.connector is None  # close() finished: it drops the connector last


async def test_environment_configuration(
    server: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZOO_API_TOKEN", raising=False)
    monkeypatch.setenv("KITTYCAD_API_TOKEN", TOKEN)
    monkeypatch.setenv("ZOO_HOST", server.url)
    fake = server.zoo.add_operation(timeline=[("queued", None)])
    async with aj.ZooClient(retry=FAST_RETRY) as zoo:
        assert zoo.base_url == server.url
        assert (await zoo.get_async_operation(fake.id)).id == fake.id
    monkeypatch.setenv("ZOO_API_TOKEN", "wrong")
    async with aj.ZooClient(retry=FAST_RETRY) as zoo:
        with pytest.raises(aj.AuthenticationError) as info:
            await zoo.get_async_operation(fake.id)
    assert info.value.status == 401
    assert info.value.request_id


def test_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZOO_HOST", raising=False)
    assert aj.ZooClient(token="x").base_url == "https://api.zoo.dev"


@pytest.mark.parametrize("tokens", [["A", "A"], ["A", "B", "A"]], ids=["same", "cycle"])
async def test_a_repeated_page_token_ends_the_listing(
    server: FakeApiServer, zoo: aj.ZooClient, tokens: list[str]
) -> None:
    """A server that hands back a token it already gave (at once, or after a detour) would
    make the listing loop forever: the items before it are yielded, then DecodeError."""
    ops = [server.zoo.add_operation(timeline=[("queued", None)]) for _ in tokens]
    for op, token in zip(ops, tokens, strict=True):
        page = {"items": [server.zoo.list_item(op)], "next_page": token}
        server.inject("body", body=msgspec.json.encode(page), route="/async/operations")
    seen: list[str] = []
    with pytest.raises(aj.DecodeError, match="repeated page token"):
        async for op in zoo.iter_async_operations("queued"):
            seen.append(op.id)
    assert seen == [op.id for op in ops[:-1]]
    listing = [r.query.get("page_token") for r in server.requests]
    assert listing == [None, *tokens[:-1]]


async def test_paging_follows_tokens_until_none(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    """Each page's token is sent for the next page, and a page without one ends the stream
    (an empty page with a token does not)."""
    ops = [server.zoo.add_operation(timeline=[("queued", None)]) for _ in range(3)]
    pages = [
        {"items": [server.zoo.list_item(ops[0])], "next_page": "p2"},
        {"items": [], "next_page": "p3"},
        {"items": [server.zoo.list_item(op) for op in ops[1:]], "next_page": None},
    ]
    for page in pages:
        server.inject("body", body=msgspec.json.encode(page), route="/async/operations")
    got = [op.id async for op in zoo.iter_async_operations("queued")]
    assert got == [op.id for op in ops]
    assert [r.query.get("page_token") for r in server.requests] == [None, "p2", "p3"]


@pytest.mark.parametrize("max_items", [0, 1, 2])
async def test_max_items_is_exact(server: FakeApiServer, zoo: aj.ZooClient, max_items: int) -> None:
    """``max_items`` items and no more; 0 sends no request at all."""
    _populate(server, 30)
    got = [op async for op in zoo.iter_async_operations("queued", limit=1, max_items=max_items)]
    assert len(got) == max_items
    if max_items == 0:
        assert server.requests == []


async def test_leaving_early_fetches_nothing_more_and_leaves_nothing_running(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    """Breaking out of a listing, even without aclose(), sends no further page request and
    leaves no task behind (the conftest fails a test that leaves one): pages are fetched
    within a page step, never in the background across a yield."""
    op = server.zoo.add_operation(timeline=[("queued", None)])
    first = {"items": [server.zoo.list_item(op)] * 3, "next_page": "p2"}
    server.inject("body", body=msgspec.json.encode(first), route="/async/operations")
    async for _ in zoo.iter_async_operations("queued"):
        break
    gc.collect()
    for _ in range(10):
        await anyio.lowlevel.checkpoint()
    assert [r.query.get("page_token") for r in server.requests] == [None]


async def test_cancelling_a_listing_mid_page_stops_at_once(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    """A page the server takes a minute to send: cancelling the caller ends the request."""
    server.inject("latency", delay=60, route="/async/operations")
    with anyio.move_on_after(0.2) as scope:
        async for _ in zoo.iter_async_operations():
            pass
    assert scope.cancelled_caught
    assert len(server.requests) >= 1  # it was waiting on the server, not on itself


@pytest.mark.parametrize("cls", [aj.ZooClient, aj.MetafoldClient])
async def test_documented_transport_defaults(cls: type[aj.ZooClient | aj.MetafoldClient]) -> None:
    """Requests time out after 30 s and bodies over 32 MiB are refused (README), whether the
    client is given nothing, ``options=``, keywords, or both (keywords win)."""
    async with cls(token="t") as client:
        assert client.options.timeout == 30.0
        assert client.options.max_body_size == 32 * 2**20
    options = aj.ClientOptions(timeout=5.0, rate_limit=2.0)
    async with cls(token="t", options=options, timeout=7.0) as client:
        assert (client.options.timeout, client.options.rate_limit) == (7.0, 2.0)
        assert client._http._timeout == 7.0
    with pytest.raises(TypeError):
        cls(token="t", no_such_option=1)  # type: ignore[call-arg]
