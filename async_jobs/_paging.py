"""Pages and cursors: walk one paginated stream, or several merged in sort order.

Each stream keeps at most one page in hand and one request in flight (the next page is
fetched while the caller consumes the current one); several streams are merged with a k-way
heap merge, so memory stays at a few pages however long the listing is.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio
import msgspec

from ._errors import DecodeError

__all__ = ["Page", "iter_items", "merge_streams"]

T = TypeVar("T")


class Page(msgspec.Struct, Generic[T], kw_only=True):
    """One page of a paginated listing: ``items`` and the opaque token of the next page."""

    items: list[T]
    next_page: str | None = None


FetchPage = Callable[[str | None], Awaitable[Page[T]]]


class _Cursor(Generic[T]):
    """Reads one stream page by page, with the next page prefetched."""

    def __init__(self, fetch: FetchPage[T], limiter: asyncio.Semaphore) -> None:
        self._fetch = fetch
        self._limiter = limiter
        self._buffer: deque[T] = deque()
        self._pending: asyncio.Task[Page[T]] | None = None
        self._seen_tokens: set[str] = set()

    def start(self) -> None:
        self._pending = asyncio.ensure_future(self._fetch_limited(None))

    async def _fetch_limited(self, token: str | None) -> Page[T]:
        async with self._limiter:
            return await self._fetch(token)

    async def next(self) -> list[T]:
        """``[item]``, or ``[]`` at the end of the stream."""
        while not self._buffer:
            if self._pending is None:
                return []
            task = self._pending
            page = await task
            self._pending = None
            self._buffer.extend(page.items)
            token = page.next_page
            if token:
                if token in self._seen_tokens:
                    raise DecodeError(f"the server repeated page token {token[:40]!r}")
                self._seen_tokens.add(token)
                self._pending = asyncio.ensure_future(self._fetch_limited(token))
        return [self._buffer.popleft()]

    async def aclose(self) -> None:
        task, self._pending = self._pending, None
        if task is None:
            return
        task.cancel()
        # Wait for the cancelled fetch to finish (so no task outlives the iteration) and
        # retrieve its outcome (so asyncio never logs "exception was never retrieved").
        with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
            await task


async def iter_items(
    fetch: FetchPage[T], *, max_items: int | None = None
) -> AsyncGenerator[T, None]:
    """Every item of one paginated stream, fetching the next page ahead."""
    # aclosing: leaving early must close the inner stream (and cancel its prefetch) now,
    # not whenever the garbage collector finalises it.
    async with contextlib.aclosing(merge_streams([fetch], key=None, max_items=max_items)) as items:
        async for item in items:
            yield item


async def merge_streams(
    fetches: Sequence[FetchPage[T]],
    *,
    key: Callable[[T], float] | None,
    descending: bool = False,
    max_items: int | None = None,
    max_concurrency: int = 8,
) -> AsyncGenerator[T, None]:
    """Merge streams that are each sorted by ``key`` into one sorted stream.

    Streams are fetched concurrently (at most ``max_concurrency`` requests at once); each
    has one page in hand and the next in flight. With one stream, ``key`` may be None.
    """
    if max_items is not None and max_items <= 0:
        return
    limiter = asyncio.Semaphore(max_concurrency)
    cursors = [_Cursor(fetch, limiter) for fetch in fetches]
    try:
        for cursor in cursors:
            cursor.start()
        heap: list[tuple[float, int, T]] = []
        sign = -1.0 if descending else 1.0

        async def push(index: int) -> None:
            for item in await cursors[index].next():
                rank = sign * key(item) if key is not None else 0.0
                heapq.heappush(heap, (rank, index, item))

        for index in range(len(cursors)):
            await push(index)
        emitted = 0
        while heap:
            _, index, item = heapq.heappop(heap)
            yield item
            emitted += 1
            if max_items is not None and emitted >= max_items:
                return
            await push(index)
    finally:
        for cursor in cursors:
            await cursor.aclose()
