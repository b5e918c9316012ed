"""Watcher: follow many jobs at once with few requests, inside a service that runs for months.

Jobs whose API can list its active jobs (``JobRef.listing``) are grouped and polled through
that listing: one paged request stream per group per interval instead of one request per job.
A watched job missing from its group's listing is confirmed with one GET before it is reported,
so a lagging list or a job finishing between two pages never yields a wrong result. A group
whose listing answers 400/401/403/404 falls back to per-job polling. Per-job polling runs on a
fixed pool of workers with jittered schedules. Every loop drives the one poll step
(:class:`~async_jobs._poll.Poller`), and every request the watcher sends stays within its own
``max_concurrency`` and ``rate_limit`` (its clients' own limits are never changed).

What a service can rely on (DESIGN.md "Services: what a Watcher promises"): each ``add()``
gives its caller an awaitable of its own; a raising ``on_update`` is logged and the job stays
watched; exceptions leave ``async with`` as themselves; a finished job is kept only while
someone can still take it. Per watched job the watcher keeps its ref, its poll bookkeeping
(the last job seen) and its callers' futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import _clock, events
from ._client import ApiClient
from ._errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    WaitTimeout,
)
from ._policy import Decision, PollPolicy, PollSchedule, Stop, check_schedule, policy_for
from ._poll import MISSED_POLL_ERRORS, ActiveListing, J, JobRef, OnUpdate, Poller, outcome_of
from ._ratelimit import REQUEST_LIMITS, RequestLimits
from ._redact import get_logger

__all__ = ["Watcher"]

logger = get_logger("async_jobs.watcher")

#: Listing errors after which a group is polled job by job instead (a 400: the server refuses
#: the listing as sent, e.g. a page size above its own cap; retrying cannot help).
FALLBACK_ERRORS: tuple[type[Exception], ...] = (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
)
SNAPSHOT_VERSION = 1
#: How often a group's listing is sent when the watcher has no ``poll=``: every 0.8 s while
#: its jobs change, then every 15% of the time the listing has looked the same (at most every
#: 15 s). A listing costs one request for all of the group's jobs, so it looks a little more
#: often than one running job's default schedule (:data:`~async_jobs.DEFAULT_POLL`): a job
#: that finishes is reported within about a second (the listing, then one confirming GET).
DEFAULT_LISTING_POLL = PollPolicy(initial=0.8, multiplier=1.0, maximum=15.0, age_fraction=0.15)


class _Entry:
    """One watched job."""

    __slots__ = ("busy", "confirming", "group", "poller", "ref", "waiters")

    def __init__(self, ref: JobRef[Any], poller: Poller[Any], group: _Group | None) -> None:
        self.ref = ref
        self.poller = poller
        self.group = group  # polled through this group's listing unless it fell back
        # Each caller's future and its own on_update (None for none).
        self.waiters: dict[asyncio.Future[Any], OnUpdate[Any] | None] = {}
        self.busy = False  # scheduled for a per-job poll, or being polled
        self.confirming = False  # its per-job poll confirms a job missing from the listing


class _Group:
    """Jobs polled through one listing."""

    __slots__ = ("entries", "fallback", "listing", "name", "poller", "wake")

    def __init__(self, listing: ActiveListing[Any], poller: Poller[Any]) -> None:
        self.listing = listing
        self.name = listing.name
        self.poller = poller
        self.entries: dict[str, _Entry] = {}
        self.fallback = False
        self.wake = anyio.Event()


class Watcher:
    """Follow many jobs at once; an async context manager, for one task group's lifetime.

    ``Watcher(*clients, poll=..., max_concurrency=16, rate_limit=None, stall_timeout=None)``:
    ``clients`` are the API clients whose jobs will be added (needed by :meth:`restore`). The
    watcher's own requests stay within ``max_concurrency`` in flight and ``rate_limit`` per
    second, on top of (never instead of) each client's own limits.

    ``w.add(ref)`` returns a new awaitable of the terminal job for each call; ``w.last(ref)``
    the last job seen; ``as_completed()`` yields jobs as they finish; ``wait_all()`` waits for
    every one. Failed and canceled jobs are results; a 400/401/403/404 on a job's own GET fails
    that job's awaitables with the typed error, and with ``stall_timeout`` a job none of whose
    polls (nor its group's listings) succeeded for that long fails with
    :class:`~async_jobs.PollStalled`.

    A finished job is kept for :meth:`as_completed` only while one is running, or always with
    ``keep_completed=True``; a service that only awaits futures keeps nothing.
    """

    def __init__(
        self,
        *clients: ApiClient,
        poll: PollSchedule | None = None,
        max_concurrency: int = 16,
        rate_limit: float | None = None,
        on_update: OnUpdate[Any] | None = None,
        coalesce: bool = True,
        keep_completed: bool = False,
        stall_timeout: float | None = None,
        listeners: Sequence[events.Listener] = (),
    ) -> None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if stall_timeout is not None and not stall_timeout > 0:
            raise ValueError("stall_timeout must be > 0 or None")
        self.clients: tuple[ApiClient, ...] = clients
        #: The schedule of every job: one PollPolicy, or one per JobState.
        self.schedule: PollSchedule | None = check_schedule(poll)
        #: The policy before a job's state is known (the first poll's spread, a group's pace).
        self.poll: PollPolicy = policy_for(None, self.schedule)
        self.max_concurrency: int = max_concurrency
        self.rate_limit: float | None = rate_limit
        self.on_update: OnUpdate[Any] | None = on_update
        self.coalesce: bool = coalesce
        self.keep_completed: bool = keep_completed
        self.stall_timeout: float | None = stall_timeout
        self.listeners: tuple[events.Listener, ...] = tuple(listeners)
        self._limits = RequestLimits(rate_limit, max_concurrency)
        self._entries: dict[str, _Entry] = {}
        self._groups: dict[Hashable, _Group] = {}
        self._heap: list[tuple[float, int, _Entry]] = []
        self._counter = itertools.count()
        self._wake = anyio.Event()
        self._done: deque[Any] = deque()
        self._done_event = anyio.Event()
        self._done_count = 0
        self._consumers = 0
        self._stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        self._restored: list[JobRef[Any]] = []
        self._failure: Exception | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between entering and leaving ``async with``."""
        return self._task_group is not None

    @property
    def pending(self) -> int:
        """Jobs watched and not yet terminal."""
        return len(self._entries)

    @property
    def done(self) -> int:
        """Jobs that reached a terminal state (or failed with an error) so far."""
        return self._done_count

    def add(self, ref: JobRef[J], *, on_update: OnUpdate[J] | None = None) -> asyncio.Future[J]:
        """Watch ``ref``; returns a new future of its terminal job, this caller's own.

        Adding a job already watched shares its polls (one request stream per job, whatever
        the number of callers). Cancelling the future (e.g. a caller's ``asyncio.wait_for``
        timing out) touches no other caller's and leaves the job watched. ``on_update`` gets
        this job's changes until the future is done. Raises ``RuntimeError`` unless the
        watcher is running.
        """
        if self._task_group is None:
            raise RuntimeError("this Watcher is not running: add() inside `async with watcher:`")
        if self._failure is not None:
            raise RuntimeError("this Watcher stopped after an internal error") from self._failure
        entry = self._entries.get(ref.key)
        if entry is None:
            entry = self._watch(ref)
        future: asyncio.Future[J] = asyncio.get_running_loop().create_future()
        entry.waiters[future] = on_update
        future.add_done_callback(partial(_forget_waiter, entry))
        return future

    def add_many(self, refs: Iterable[JobRef[J]]) -> list[asyncio.Future[J]]:
        """:meth:`add` each ref; the futures in the same order."""
        return [self.add(ref) for ref in refs]

    def last(self, ref: JobRef[J]) -> J | None:
        """The last job observed for ``ref`` while it is watched (its last known progress
        kept); None if not seen yet, or not watched (a finished job's result is its
        future's)."""
        entry = self._entries.get(ref.key)
        return entry.poller.last if entry is not None else None

    def remove(self, ref: JobRef[Any]) -> bool:
        """Stop watching ``ref`` (every caller's future is cancelled); False if it was not
        watched."""
        entry = self._entries.pop(ref.key, None)
        if entry is None:
            return False
        if entry.group is not None:
            entry.group.entries.pop(ref.key, None)
        for future in list(entry.waiters):
            future.cancel()
        entry.poller.done_event("interrupted")
        return True

    async def as_completed(self) -> AsyncIterator[Any]:
        """Yield terminal jobs as they finish (each once, to one consumer), until none is
        pending. Jobs that finish while no consumer runs are kept only with
        ``keep_completed=True``."""
        self._consumers += 1
        try:
            while True:
                while self._done:
                    yield self._done.popleft()
                if not self._entries:
                    return
                event = self._done_event
                await event.wait()
                if self._done_event is event:
                    self._done_event = anyio.Event()
        finally:
            self._consumers -= 1

    async def wait_all(self, timeout: float | None = None) -> list[Any]:
        """Wait until every watched job is terminal; their final states in the order added.

        Raises :class:`~async_jobs.WaitTimeout` (``.last`` = the last jobs seen of those still
        pending) past ``timeout``, or the typed error of a job whose wait failed for good."""
        entries = list(self._entries.values())
        futures: list[asyncio.Future[Any]] = [self.add(entry.ref) for entry in entries]
        if not futures:
            return []
        try:
            with anyio.move_on_after(timeout) as scope:
                await asyncio.wait(futures)
            if scope.cancelled_caught:
                pending = [
                    e.poller.last for e, f in zip(entries, futures, strict=True) if not f.done()
                ]
                raise WaitTimeout(
                    f"{len(pending)} jobs not terminal after {timeout}s", last=pending
                )
            self._done.clear()
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()

    def snapshot(self) -> bytes:
        """The pending jobs as resume tokens (never a credential), for :meth:`restore`."""
        return msgspec.json.encode(
            {
                "version": SNAPSHOT_VERSION,
                "jobs": [entry.ref.to_token() for entry in self._entries.values()],
            }
        )

    @classmethod
    def restore(cls, data: bytes, *clients: ApiClient, **options: Any) -> Watcher:
        """A new watcher over the jobs of a :meth:`snapshot`, rebuilt with ``clients``; they
        are watched once it is entered (use :meth:`as_completed` or :meth:`wait_all`)."""
        try:
            decoded = msgspec.json.decode(data, type=_Snapshot)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"not a Watcher snapshot: {exc}") from None
        if decoded.version != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported Watcher snapshot version {decoded.version}")
        watcher = cls(*clients, **options)
        watcher._restored = [JobRef.from_token(token, *clients) for token in decoded.jobs]
        return watcher

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Watcher:
        if self._stack is not None:
            raise RuntimeError("this Watcher is already running")
        async with AsyncExitStack() as stack:
            send, receive = anyio.create_memory_object_stream[_Entry](self.max_concurrency)
            stack.enter_context(send)
            stack.enter_context(receive)
            tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(self._guarded, self._schedule_loop, send)
            for _ in range(self.max_concurrency):
                tg.start_soon(self._guarded, self._worker, receive)
            self._task_group = tg
            self._stack = stack.pop_all()
        self._failure = None
        restored, self._restored = self._restored, []
        for ref in restored:
            self._watch(ref)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The body's exception is never handed to the task group: it leaves as itself, never
        # inside an ExceptionGroup. The loops only end by this cancellation.
        stack, self._stack = self._stack, None
        tg, self._task_group = self._task_group, None
        if stack is None or tg is None:
            return
        tg.cancel_scope.cancel()
        try:
            # Not under a shield of its own: the task group's scope must be the current one
            # when it exits; it waits for its cancelled tasks by itself.
            await stack.aclose()
        finally:
            entries = list(self._entries.values())
            self._entries.clear()
            self._groups.clear()
            self._heap.clear()
            for entry in entries:
                for future in list(entry.waiters):
                    future.cancel()
                entry.poller.done_event("interrupted")
            self._done_event.set()

    async def _guarded(self, loop: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run one of the watcher's loops; a bug in it fails the waits it serves, never the
        caller's ``async with``."""
        REQUEST_LIMITS.set(self._limits)
        try:
            await loop(*args)
        except Exception as exc:
            logger.exception("watcher loop %s failed; failing its jobs", loop.__name__)
            self._failure = exc  # later add()s raise instead of waiting on a dead loop
            for entry in list(self._entries.values()):
                self._settle(entry, error=exc)

    # -- scheduling -------------------------------------------------------------------------

    def _watch(self, ref: JobRef[Any]) -> _Entry:
        listing = ref.listing
        group: _Group | None = None
        if self.coalesce and listing is not None:
            group = self._groups.get(listing.key)
            if group is None:
                group = self._start_group(listing)
        listeners = self.listeners
        if ref.listeners:
            listeners = tuple(dict.fromkeys((*self.listeners, *ref.listeners)))  # each once
        poller: Poller[Any] = Poller(
            ref.key, self.schedule, stall_timeout=self.stall_timeout, listeners=listeners
        )
        entry = _Entry(ref, poller, group)
        self._entries[ref.key] = entry
        poller.started_event()
        if group is not None and not group.fallback:
            if not group.entries:
                # The group's stall clock starts with its first job: idle time is no stall.
                group.poller = self._group_poller(group.listing)
            group.entries[ref.key] = entry
            group.wake.set()
        else:
            self._schedule(entry, self._spread())
        return entry

    def _spread(self) -> float:
        """A first poll spread over the initial interval: no thundering herd."""
        return _clock.now() + random.random() * self.poll.initial

    def _schedule(self, entry: _Entry, when: float) -> None:
        """Poll ``entry`` on its own at ``when`` (once: a job is never queued twice)."""
        if entry.busy:
            return
        entry.busy = True
        heapq.heappush(self._heap, (when, next(self._counter), entry))
        self._wake.set()

    def _group_poller(self, listing: ActiveListing[Any]) -> Poller[Any]:
        return Poller(
            listing.name,
            self._listing_policy(),
            stall_timeout=self.stall_timeout,
            listeners=self.listeners,
        )

    def _listing_policy(self) -> PollPolicy:
        """A group's pace before its jobs are seen: the watcher's own policy, or with no
        ``poll=`` :data:`DEFAULT_LISTING_POLL`."""
        return DEFAULT_LISTING_POLL if self.schedule is None else self.poll

    def _start_group(self, listing: ActiveListing[Any]) -> _Group:
        group = self._groups[listing.key] = _Group(listing, self._group_poller(listing))
        assert self._task_group is not None
        self._task_group.start_soon(self._guarded, self._group_loop, group)
        return group

    async def _schedule_loop(self, send: MemoryObjectSendStream[_Entry]) -> None:
        # Loop variables live in helper methods: a loop's last entry (and the job it holds)
        # must not stay referenced once its wait ended (memory stays flat in a service).
        while True:
            await self._send_due(send)
            delay = self._heap[0][0] - _clock.now() if self._heap else math.inf
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wake.wait()
                self._wake = anyio.Event()

    async def _send_due(self, send: MemoryObjectSendStream[_Entry]) -> None:
        """Hand the entries whose time has come to the workers."""
        now = _clock.now()
        while self._heap and self._heap[0][0] <= now:
            _, _, entry = heapq.heappop(self._heap)
            if self._entries.get(entry.ref.key) is entry:
                # Without the checkpoint send() takes first: this loop yields when it waits.
                try:
                    send.send_nowait(entry)
                except anyio.WouldBlock:
                    await send.send(entry)
            else:
                entry.busy = False

    async def _worker(self, receive: MemoryObjectReceiveStream[_Entry]) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            while True:
                await self._work_one(receive)

    async def _work_one(self, receive: MemoryObjectReceiveStream[_Entry]) -> None:
        """Take the next due entry and poll it."""
        try:
            entry = receive.receive_nowait()  # a loop turn (receive()'s checkpoint) saved
        except anyio.WouldBlock:
            entry = await receive.receive()
        if entry is self._entries.get(entry.ref.key):
            await self._poll_one(entry)

    async def _poll_one(self, entry: _Entry) -> None:
        """One per-job poll of ``entry``, then its next one scheduled (or its wait ended)."""
        poller = entry.poller
        confirming, entry.confirming = entry.confirming, False
        try:
            job = await poller.fetch(entry.ref.fetch)
        except MISSED_POLL_ERRORS as exc:
            decision = poller.missed(exc)
            if decision.stop is Stop.FATAL:
                self._settle(entry, error=exc)
                return
            if decision.stop is Stop.STALLED:
                self._stall(entry)
                return
        except Exception as exc:  # a fetch that is not ours: it fails its own job only
            self._settle(entry, error=exc)
            return
        else:
            previous = poller.last
            # A job still under way, only missing from one listing: the GET's body has more
            # fields than a listing's, so it is a change only if what it says changed.
            if (
                confirming
                and previous is not None
                and not job.is_terminal
                and (job.job_state, job.progress) == (previous.job_state, previous.progress)
            ):
                job = previous
            _, decision = await self._observe(entry, job)
        if self._entries.get(entry.ref.key) is not entry:
            return
        entry.busy = False
        if confirming and entry.group is not None and not entry.group.fallback:
            return  # its group's listing takes over again
        self._schedule(entry, _clock.now() + decision.delay)

    async def _group_loop(self, group: _Group) -> None:
        while True:
            if not group.entries:
                await group.wake.wait()
                group.wake = anyio.Event()
                continue
            group.wake = anyio.Event()  # the jobs added so far are in this sweep
            decision = await self._sweep(group)
            if decision is None:
                return  # fell back to per-job polling
            await self._group_pause(group, decision.delay)

    async def _sweep(self, group: _Group) -> Decision | None:
        """List the group's active jobs once and report each watched job; None once the
        group fell back to per-job polling."""
        try:
            active = await group.poller.fetch(partial(_collect, group.listing))
        except FALLBACK_ERRORS as exc:
            self._fall_back(group, exc)
            return None
        except MISSED_POLL_ERRORS as exc:
            decision = group.poller.missed(exc)
            if decision.stop is Stop.STALLED:
                for entry in list(group.entries.values()):
                    self._stall(entry, group)
                group.poller = self._group_poller(group.listing)
                return Decision(0.0, None)
            return decision
        changed = False
        now = _clock.now()
        for entry in list(group.entries.values()):
            job = active.get(entry.ref.ids[-1])
            if job is not None and job == entry.poller.last:
                entry.poller.unchanged(now)  # most of a listing, most of the time: kept cheap
            elif job is None:
                # Gone from the active listing: a visible change of the group (the listing
                # keeps its pace while jobs are finishing).
                changed = True
                entry.confirming = True
                self._schedule(entry, now)
            else:
                seen_change, _ = await self._observe(entry, job)
                changed = changed or seen_change
        if self.schedule is not None and not isinstance(self.schedule, PollPolicy):
            group.poller.step.policy = self._group_policy(group)
        return group.poller.listed(changed)

    def _group_policy(self, group: _Group) -> PollPolicy:
        """A group's listing goes at the pace of its most urgent job: the policy with the
        shortest initial interval among its jobs' states."""
        policies = (
            policy_for(entry.poller.last.job_state if entry.poller.last else None, self.schedule)
            for entry in group.entries.values()
        )
        return min(policies, key=lambda policy: policy.initial, default=self.poll)

    async def _group_pause(self, group: _Group, delay: float) -> None:
        """Sleep ``delay``, cut to the listing's initial interval once a new job joins."""
        deadline = _clock.now() + delay
        while (remaining := deadline - _clock.now()) > 0:
            with anyio.move_on_after(remaining):
                await group.wake.wait()
            if group.wake.is_set():
                group.wake = anyio.Event()
                deadline = min(deadline, _clock.now() + group.poller.step.policy.initial)

    def _fall_back(self, group: _Group, exc: Exception) -> None:
        logger.warning(
            "cannot list %s (%s); polling its %d jobs one by one",
            group.name,
            exc,
            len(group.entries),
        )
        if events.enabled(self.listeners):
            status = exc.status if isinstance(exc, ApiError) else None
            events.emit(events.ListingFallback(group=group.name, status=status), self.listeners)
        group.fallback = True
        for entry in group.entries.values():
            self._schedule(entry, self._spread())
        group.entries.clear()

    # -- results ----------------------------------------------------------------------------

    async def _observe(self, entry: _Entry, job: Any) -> tuple[bool, Decision]:
        """Record a look at ``entry``'s job: report a change to the callbacks, resolve a
        terminal job. Whether it changed, and the poll step's decision."""
        job, changed, decision = entry.poller.seen(job)
        if changed:
            callbacks = [callback for callback in entry.waiters.values() if callback is not None]
            if self.on_update is not None:
                callbacks.append(self.on_update)
            for callback in callbacks:
                await self._notify(entry, callback, job)
            if job.is_terminal and self._entries.get(entry.ref.key) is entry:
                self._settle(entry, job=job)
        return changed, decision

    async def _notify(self, entry: _Entry, callback: OnUpdate[Any], job: Any) -> None:
        """Call one ``on_update``; one that raises is logged and emitted, and changes nothing
        else."""
        try:
            result = callback(job)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            logger.error(
                "on_update callback %r raised for %s; the job stays watched",
                callback,
                entry.ref.key,
                exc_info=True,
            )
            if events.enabled(self.listeners):
                failed = events.CallbackFailed(key=entry.ref.key, error=type(exc).__name__)
                events.emit(failed, self.listeners)

    def _stall(self, entry: _Entry, group: _Group | None = None) -> None:
        """End ``entry``'s wait with PollStalled: its own polls (or its group's listings)
        stopped succeeding."""
        error = entry.poller.stalled()
        if group is not None:
            error.args = (f"no listing of {group.name} succeeded for {self.stall_timeout}s",)
            error.__cause__ = group.poller.error
        self._settle(entry, error=error)

    def _settle(
        self, entry: _Entry, *, job: Any = None, error: BaseException | None = None
    ) -> None:
        """End ``entry``'s wait with its terminal ``job`` or ``error``."""
        key = entry.ref.key
        if self._entries.get(key) is entry:
            del self._entries[key]
        if entry.group is not None:
            entry.group.entries.pop(key, None)
        for future in list(entry.waiters):
            if future.done():
                continue
            if error is None:
                future.set_result(job)
            else:
                future.set_exception(error)
                future.add_done_callback(_retrieve)
        entry.waiters.clear()
        entry.poller.done_event(outcome_of(error, job))
        if error is None and (self.keep_completed or self._consumers):
            self._done.append(job)
        self._done_count += 1
        self._done_event.set()


async def _collect(listing: ActiveListing[Any]) -> dict[str, Any]:
    """One sweep of a group's listing: its active jobs by id."""
    return {job.id: job async for job in listing.list_active()}


def _forget_waiter(entry: _Entry, future: asyncio.Future[Any]) -> None:
    """A caller's future is done (or cancelled): drop it and its callback."""
    entry.waiters.pop(future, None)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failed future's exception as seen so asyncio never logs it as lost; callers
    awaiting it still get it."""
    if not future.cancelled():
        future.exception()


class _Snapshot(msgspec.Struct):
    version: int
    jobs: Sequence[str]
