"""Pages and cursors: walk one paginated stream, or several merged in sort order.

Each stream keeps at most about one page in hand; several streams are merged with a k-way heap
merge, so memory stays at a few pages however long the listing is. Pages are fetched in
bounded task groups, never across a ``yield`` (no task outlives a page step, so leaving a
listing early, even without ``aclose()``, leaves nothing running): the first pages of all
streams at once, then, whenever a stream runs dry, its next page together with the next pages
of the other streams that are running low.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from functools import partial
from typing import Generic, TypeVar

import msgspec

from ._errors import DecodeError
from ._ratelimit import Slots
from ._tasks import run_concurrently

__all__ = ["Page", "iter_items", "merge_streams"]

T = TypeVar("T")


class Page(msgspec.Struct, Generic[T], kw_only=True, repr_omit_defaults=True):
    """One page of a paginated listing: ``items`` and the opaque token of the next page."""

    items: list[T]
    next_page: str | None = None


FetchPage = Callable[[str | None], Awaitable[Page[T]]]


class _Cursor(Generic[T]):
    """Reads one stream page by page. With a ``rank`` (the sort key, negated for a descending
    order) every item is ranked here, as its page arrives, and must not rank below the item
    before it, within a page or across pages: a stream out of order is a DecodeError naming
    ``order``, never a wrong merge."""

    __slots__ = (
        "_fetch",
        "_last_rank",
        "_order",
        "_rank",
        "_seen_tokens",
        "_what",
        "buffer",
        "done",
        "page_size",
        "token",
    )

    def __init__(
        self,
        fetch: FetchPage[T],
        rank: Callable[[T], float] | None = None,
        order: str = "the requested",
        what: str = "items",
    ) -> None:
        self._fetch = fetch
        self._rank = rank
        self._order = order
        self._what = what
        self._last_rank = -math.inf
        self._seen_tokens: set[str] = set()
        #: (rank, item) pairs, the rank 0.0 without a ``rank`` function.
        self.buffer: deque[tuple[float, T]] = deque()
        self.token: str | None = None
        self.done = False  # the last page was read
        self.page_size = 0

    @property
    def low(self) -> bool:
        """Worth fetching the next page now: under half a page in hand and more to come."""
        return not self.done and len(self.buffer) <= self.page_size // 2

    def _ranked(self, items: Sequence[T]) -> list[tuple[float, T]]:
        if self._rank is None:
            return [(0.0, item) for item in items]
        ranked = []
        for item in items:
            rank = self._rank(item)
            if rank < self._last_rank:
                raise DecodeError(
                    f"{self._what} came back out of {self._order} order: the server may not "
                    f"support {self._order}"
                )
            self._last_rank = rank
            ranked.append((rank, item))
        return ranked

    async def fill(self, limiter: Slots) -> None:
        """Fetch the next page into the buffer (and on past empty pages, to the next item or
        the end)."""
        while True:
            async with limiter:
                page = await self._fetch(self.token)
            self.buffer.extend(self._ranked(page.items))
            self.page_size = max(self.page_size, len(page.items))
            token = page.next_page
            if not token:
                self.done = True
                return
            if token in self._seen_tokens:
                raise DecodeError(f"the server repeated page token {token[:40]!r}")
            self._seen_tokens.add(token)
            self.token = token
            if page.items:
                return


async def _fill(cursors: Sequence[_Cursor[T]], limiter: Slots) -> None:
    """Fetch the next page of each of ``cursors`` concurrently; the first error is raised as
    itself (never inside an exception group) and stops the other fetches."""
    if len(cursors) == 1:
        await cursors[0].fill(limiter)
        return
    await run_concurrently(partial(cursor.fill, limiter) for cursor in cursors)


async def iter_items(
    fetch: FetchPage[T], *, max_items: int | None = None
) -> AsyncGenerator[T, None]:
    """Every item of one paginated stream, page by page: ``fetch(None)`` is the first
    :class:`Page`, ``fetch(page.next_page)`` the next, until a page has no ``next_page``. A
    page token coming back twice is a :class:`~async_jobs.DecodeError` (a server looping),
    not an endless listing; ``max_items`` stops early."""
    async for item in merge_streams([fetch], key=None, max_items=max_items):
        yield item


async def merge_streams(
    fetches: Sequence[FetchPage[T]],
    *,
    key: Callable[[T], float] | None,
    descending: bool = False,
    max_items: int | None = None,
    max_concurrency: int = 8,
    order: str | None = None,
    what: str = "items",
) -> AsyncGenerator[T, None]:
    """Merge streams that are each sorted by ``key`` into one sorted stream.

    Pages of different streams are fetched concurrently (at most ``max_concurrency`` requests
    at once). With one stream, ``key`` may be None. With a ``key``, every stream must come in
    that order, within and across its pages (equal keys in any order): an item out of order
    raises :class:`~async_jobs.DecodeError` naming ``what`` and ``order`` (how the caller
    asked, e.g. the API's ``sort_by`` value) instead of merging wrongly.
    """
    if max_items is not None and max_items <= 0:
        return
    limiter = Slots(max_concurrency)
    rank: Callable[[T], float] | None = None
    if key is not None:
        sort_key = key
        rank = (lambda item: -sort_key(item)) if descending else sort_key
    name = order or ("descending" if descending else "ascending")
    cursors = [_Cursor(fetch, rank, name, what) for fetch in fetches]
    heap: list[tuple[float, int, T]] = []

    def push(index: int) -> None:
        buffer = cursors[index].buffer
        if buffer:
            item_rank, item = buffer.popleft()
            heapq.heappush(heap, (item_rank, index, item))

    await _fill(cursors, limiter)
    for index in range(len(cursors)):
        push(index)
    emitted = 0
    while heap:
        _, index, item = heapq.heappop(heap)
        yield item
        emitted += 1
        if max_items is not None and emitted >= max_items:
            return
        cursor = cursors[index]
        if not cursor.buffer and not cursor.done:
            # This stream ran dry: fetch its next page, and those of the streams running low.
            await _fill([c for c in cursors if c is cursor or c.low], limiter)
        push(index)
