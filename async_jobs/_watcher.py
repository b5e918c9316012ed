"""Watcher: follow many jobs at once with few requests.

Jobs whose API can list its active jobs (``JobRef.listing``) are grouped and polled through
that listing: one paged request stream per group per interval instead of one request per job.
A watched job missing from its group's listing is confirmed with one GET before it is reported,
so a lagging list or a job finishing between two pages never yields a wrong result. A group
whose listing answers 400/401/403/404 falls back to per-job polling. Per-job polling runs on a
fixed pool of workers with jittered schedules; every request goes through its client's shared
rate and concurrency limits.

Per watched job the watcher keeps only its ref, its last observed state and its future.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic

import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._client import BaseClient
from ._errors import AuthenticationError, BadRequestError, NotFoundError, WaitTimeout
from ._policy import PollPolicy, next_delay
from ._poll import FATAL_ERRORS, MISSED_POLL_ERRORS, J, JobRef, OnUpdate

__all__ = ["Watcher"]

logger = logging.getLogger("async_jobs")

#: Listing errors after which a group is polled job by job instead: listing again cannot help.
FALLBACK_ERRORS: tuple[type[Exception], ...] = (
    BadRequestError,
    AuthenticationError,
    NotFoundError,
)


class _Entry:
    """One watched job."""

    __slots__ = ("confirming", "future", "last", "on_update", "ref", "step")

    def __init__(self, ref: JobRef[Any], future: asyncio.Future[Any], on_update: Any) -> None:
        self.ref = ref
        self.future = future
        self.on_update = on_update
        self.last: Any = None
        self.step = 0
        self.confirming = False


class _Group:
    """Jobs polled through one listing."""

    __slots__ = ("entries", "fallback", "key", "listing", "step", "wake")

    def __init__(self, key: Hashable, listing: Any) -> None:
        self.key = key
        self.listing = listing
        self.entries: dict[str, _Entry] = {}
        self.fallback = False
        self.step = 0
        self.wake = anyio.Event()


class Watcher(Generic[J]):
    """Follow many jobs at once; an async context manager.

    ``Watcher(*clients, poll=..., max_concurrency=..., rate_limit=...)``: ``clients`` are the
    API clients whose jobs will be added (needed by :meth:`restore`; their rate and concurrency
    limits are set to ``rate_limit`` requests/s and ``max_concurrency`` requests in flight).

    ``w.add(ref)`` returns an awaitable of the terminal job; ``as_completed()`` yields jobs as
    they finish; ``wait_all()`` waits for every one. Failed and canceled jobs are results;
    a 400/401/403/404 on a job's own GET fails that job's awaitable with the typed error.

    Finished jobs wait in the watcher until ``as_completed()`` (or ``wait_all()``) takes them;
    a long-running service that only uses the futures or ``on_update`` should pass
    ``keep_completed=False`` so they are not kept at all.
    """

    def __init__(
        self,
        *clients: BaseClient,
        poll: PollPolicy | None = None,
        max_concurrency: int = 16,
        rate_limit: float | None = None,
        on_update: OnUpdate[Any] | None = None,
        coalesce: bool = True,
        keep_completed: bool = True,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.clients = clients
        self.poll = poll or PollPolicy()
        self.max_concurrency = max_concurrency
        self.on_update = on_update
        self.coalesce = coalesce
        self.keep_completed = keep_completed
        for client in clients:
            client.set_limits(rate_limit=rate_limit, max_concurrency=max_concurrency)
        self._entries: dict[str, _Entry] = {}
        self._groups: dict[Hashable, _Group] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._counter = itertools.count()
        self._wake = anyio.Event()
        self._done: deque[Any] = deque()
        self._done_event = anyio.Event()
        self._done_count = 0
        self._task_group: TaskGroup | None = None
        self._send: MemoryObjectSendStream[_Entry] | None = None
        self._receive: MemoryObjectReceiveStream[_Entry] | None = None
        self._pending_groups: list[_Group] = []
        self._restored: list[JobRef[Any]] = []

    # -- public API -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Jobs watched and not yet terminal."""
        return len(self._entries)

    @property
    def done(self) -> int:
        """Jobs that reached a terminal state (or failed with an error) so far."""
        return self._done_count

    def add(self, ref: JobRef[J], *, on_update: OnUpdate[J] | None = None) -> asyncio.Future[J]:
        """Watch ``ref``; returns a future of its terminal job (the same one if it is already
        watched)."""
        existing = self._entries.get(ref.key)
        if existing is not None:
            return existing.future
        future: asyncio.Future[J] = asyncio.get_running_loop().create_future()
        entry = _Entry(ref, future, on_update)
        self._entries[ref.key] = entry
        listing = getattr(ref, "listing", None)
        if self.coalesce and listing is not None:
            group = self._groups.get(listing.key)
            if group is None:
                group = self._groups[listing.key] = _Group(listing.key, listing)
                self._start_group(group)
            if group.fallback:
                self._schedule(entry, self._spread())
            else:
                group.entries[ref.key] = entry
                group.wake.set()
        else:
            self._schedule(entry, self._spread())
        return future

    def add_many(self, refs: Iterable[JobRef[J]]) -> list[asyncio.Future[J]]:
        """:meth:`add` each ref; the futures in the same order."""
        return [self.add(ref) for ref in refs]

    def remove(self, ref: JobRef[Any]) -> bool:
        """Stop watching ``ref`` (its future is cancelled); False if it was not watched."""
        entry = self._entries.pop(ref.key, None)
        if entry is None:
            return False
        listing = getattr(ref, "listing", None)
        if listing is not None and listing.key in self._groups:
            self._groups[listing.key].entries.pop(ref.key, None)
        entry.future.cancel()
        return True

    async def as_completed(self) -> AsyncIterator[J]:
        """Yield terminal jobs as they finish (each once), until none is pending."""
        while True:
            while self._done:
                yield self._done.popleft()
            if not self._entries:
                return
            await self._done_event.wait()
            self._done_event = anyio.Event()

    async def wait_all(self, timeout: float | None = None) -> list[J]:
        """Wait until every watched job is terminal; their final states in the order added.

        Raises :class:`~async_jobs.WaitTimeout` (``.last`` = the jobs still pending) past
        ``timeout``, or the typed error of a job whose GET failed for good."""
        futures = [entry.future for entry in self._entries.values()]
        with anyio.move_on_after(timeout) as scope:
            while self._entries:
                await self._done_event.wait()
                self._done_event = anyio.Event()
        if scope.cancelled_caught:
            pending = [entry.last for entry in self._entries.values()]
            raise WaitTimeout(f"{len(pending)} jobs not terminal after {timeout}s", last=pending)
        self._done.clear()
        return [future.result() for future in futures]

    def snapshot(self) -> bytes:
        """The pending jobs as resume tokens (never a credential), for :meth:`restore`."""
        return msgspec.json.encode(
            {"version": 1, "jobs": [entry.ref.to_token() for entry in self._entries.values()]}
        )

    @classmethod
    def restore(cls, data: bytes, *clients: BaseClient, **options: Any) -> Watcher[Any]:
        """A new watcher over the jobs of a :meth:`snapshot`, rebuilt with ``clients``; they
        are watched once it is entered (use :meth:`as_completed` or :meth:`wait_all`)."""
        try:
            decoded = msgspec.json.decode(data, type=_Snapshot)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"not a Watcher snapshot: {exc}") from None
        watcher: Watcher[Any] = cls(*clients, **options)
        watcher._restored = [JobRef.from_token(token, *clients) for token in decoded.jobs]
        return watcher

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Watcher[J]:
        self._send, self._receive = anyio.create_memory_object_stream[_Entry](self.max_concurrency)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._schedule_loop)
        for _ in range(self.max_concurrency):
            self._task_group.start_soon(self._worker)
        for group in self._pending_groups:
            self._task_group.start_soon(self._group_loop, group)
        self._pending_groups.clear()
        self.add_many(self._restored)
        self._restored = []
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            for entry in self._entries.values():
                entry.future.cancel()
            self._entries.clear()
            self._task_group = None
            if self._send is not None:
                self._send.close()
            if self._receive is not None:
                self._receive.close()

    # -- scheduling -------------------------------------------------------------------------

    def _spread(self) -> float:
        """A first poll spread over the initial interval: no thundering herd."""
        return anyio.current_time() + random.random() * self.poll.initial

    def _schedule(self, entry: _Entry, when: float) -> None:
        heapq.heappush(self._heap, (when, next(self._counter), entry.ref.key))
        self._wake.set()

    def _start_group(self, group: _Group) -> None:
        if self._task_group is None:
            self._pending_groups.append(group)
        else:
            self._task_group.start_soon(self._group_loop, group)

    async def _schedule_loop(self) -> None:
        assert self._send is not None
        while True:
            now = anyio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, key = heapq.heappop(self._heap)
                entry = self._entries.get(key)
                if entry is not None:
                    await self._send.send(entry)
            delay = self._heap[0][0] - anyio.current_time() if self._heap else math.inf
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wake.wait()
                self._wake = anyio.Event()

    async def _worker(self) -> None:
        assert self._receive is not None
        async for entry in self._receive:
            if entry.ref.key not in self._entries:
                continue
            hint: float | None = None
            try:
                job = await entry.ref.fetch()
            except FATAL_ERRORS as exc:
                self._fail(entry, exc)
                continue
            except MISSED_POLL_ERRORS as exc:
                hint = getattr(exc, "retry_after", None)
                logger.info("missed a poll of %s: %s", entry.ref.key, exc)
            else:
                if await self._observe(entry, job):
                    entry.step = 0
            if entry.ref.key not in self._entries:
                continue
            confirming, entry.confirming = entry.confirming, False
            if confirming and self._in_live_group(entry):
                continue  # its group's listing takes over again
            delay = next_delay(self.poll, entry.step, hint=hint, rand=random.random())
            entry.step += 1
            self._schedule(entry, anyio.current_time() + delay)

    def _in_live_group(self, entry: _Entry) -> bool:
        listing = getattr(entry.ref, "listing", None)
        group = self._groups.get(listing.key) if listing is not None else None
        return group is not None and not group.fallback and entry.ref.key in group.entries

    async def _group_loop(self, group: _Group) -> None:
        while True:
            if not group.entries:
                await group.wake.wait()
                group.wake = anyio.Event()
                continue
            hint: float | None = None
            changed = False
            try:
                active = {job.id: job async for job in group.listing.list_active()}
            except FALLBACK_ERRORS as exc:
                self._fall_back(group, exc)
                return
            except MISSED_POLL_ERRORS as exc:
                hint = getattr(exc, "retry_after", None)
                logger.info("missed a listing of %s: %s", group.key, exc)
            else:
                for key, entry in list(group.entries.items()):
                    job = active.get(entry.ref.ids[-1])
                    if job is None:
                        if not entry.confirming:
                            entry.confirming = True
                            self._schedule(entry, anyio.current_time())
                    elif await self._observe(entry, job):
                        changed = True
                    if key not in self._entries:
                        group.entries.pop(key, None)
            group.step = 0 if changed else group.step + 1
            delay = next_delay(self.poll, group.step, hint=hint, rand=random.random())
            await self._group_pause(group, delay)

    async def _group_pause(self, group: _Group, delay: float) -> None:
        """Sleep ``delay``, cut to ``poll.initial`` once a new job joins the group."""
        deadline = anyio.current_time() + delay
        while (remaining := deadline - anyio.current_time()) > 0:
            with anyio.move_on_after(remaining):
                await group.wake.wait()
            if group.wake.is_set():
                group.wake = anyio.Event()
                deadline = min(deadline, anyio.current_time() + self.poll.initial)

    def _fall_back(self, group: _Group, exc: BaseException) -> None:
        logger.warning(
            "cannot list %s (%s); polling its %d jobs one by one",
            group.key,
            exc,
            len(group.entries),
        )
        group.fallback = True
        for entry in group.entries.values():
            self._schedule(entry, self._spread())
        group.entries.clear()

    # -- results ----------------------------------------------------------------------------

    async def _observe(self, entry: _Entry, job: Any) -> bool:
        """Record ``job`` for ``entry``; report a change; resolve a terminal one."""
        if entry.last is not None and job == entry.last:
            return False
        entry.last = job
        for callback in (entry.on_update, self.on_update):
            if callback is not None:
                result = callback(job)
                if inspect.isawaitable(result):
                    await result
        if job.is_terminal:
            self._resolve(entry, job)
        return True

    def _finish(self, entry: _Entry) -> None:
        key = entry.ref.key
        self._entries.pop(key, None)
        listing = getattr(entry.ref, "listing", None)
        if listing is not None and listing.key in self._groups:
            self._groups[listing.key].entries.pop(key, None)
        self._done_count += 1
        self._done_event.set()

    def _resolve(self, entry: _Entry, job: Any) -> None:
        if not entry.future.done():
            entry.future.set_result(job)
        if self.keep_completed:
            self._done.append(job)
        self._finish(entry)

    def _fail(self, entry: _Entry, exc: BaseException) -> None:
        if not entry.future.done():
            entry.future.set_exception(exc)
            entry.future.add_done_callback(_retrieve)
        self._finish(entry)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failed future's exception as seen so asyncio never logs it as lost; callers
    awaiting it still get it."""
    if not future.cancelled():
        future.exception()


class _Snapshot(msgspec.Struct):
    version: int
    jobs: Sequence[str]
