"""The paging core on its own: merge order, the fetch bound, Page's constructor.

The fetches here are plain coroutines over in-memory pages (no HTTP): what is under test is
the merge itself; the HTTP side is in test_zoo_client.py.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

import async_jobs as aj
from async_jobs._paging import FetchPage, merge_streams

pytestmark = pytest.mark.anyio


def _stream(values: list[int], per_page: int = 2) -> FetchPage[int]:
    """A fetch serving ``values`` ``per_page`` at a time; tokens are offsets."""

    async def fetch(token: str | None) -> aj.Page[int]:
        start = int(token or 0)
        end = start + per_page
        await anyio.lowlevel.checkpoint()
        return aj.Page(items=values[start:end], next_page=str(end) if end < len(values) else None)

    return fetch


async def test_merge_is_ascending_unless_asked_otherwise() -> None:
    streams = [_stream([1, 4, 7]), _stream([2, 5, 8]), _stream([3, 6, 9])]
    merged = [v async for v in merge_streams(streams, key=float)]
    assert merged == list(range(1, 10))
    streams = [_stream([7, 4, 1]), _stream([8, 5, 2]), _stream([9, 6, 3])]
    merged = [v async for v in merge_streams(streams, key=float, descending=True)]
    assert merged == list(range(9, 0, -1))


async def test_at_most_eight_fetches_at_once_by_default() -> None:
    in_flight = busiest = 0
    release = anyio.Event()

    def stream(index: int) -> FetchPage[int]:
        async def fetch(token: str | None) -> aj.Page[int]:
            nonlocal in_flight, busiest
            in_flight += 1
            busiest = max(busiest, in_flight)
            try:
                await release.wait()
            finally:
                in_flight -= 1
            return aj.Page(items=[index])

        return fetch

    async def release_when_saturated() -> None:
        while in_flight < 8:
            await anyio.lowlevel.checkpoint()
        for _ in range(20):  # give a ninth fetch every chance to start
            await anyio.lowlevel.checkpoint()
        release.set()

    with anyio.fail_after(10):  # a bound below 8 would never saturate
        async with anyio.create_task_group() as tg:
            tg.start_soon(release_when_saturated)
            merged = [v async for v in merge_streams([stream(i) for i in range(12)], key=float)]
    assert merged == list(range(12))
    assert busiest == 8


def test_page_takes_keywords_only() -> None:
    assert aj.Page(items=[1], next_page="n").next_page == "n"
    with pytest.raises(TypeError):
        aj.Page([1])  # type: ignore[misc]
