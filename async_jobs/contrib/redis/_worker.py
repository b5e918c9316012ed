"""One worker of a fleet: its lifecycle and the loops that bring watches in (read, claim) and
keep them its own (keepalive); :mod:`._settle` takes them to their end."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
from redis.asyncio import Redis

from ..._client import ApiClient
from ..._outage import Outage
from ..._policy import PollSchedule, RetryPolicy
from ..._poll import JobRef
from ..._redact import get_logger, register_secret, unregister_secret
from ..._watcher import Watcher
from ._backoff import REDIS_QUIET, _Backoff
from ._consumer import NO_MORE, Consumer
from ._held import Holding, _Held
from ._records import RecordError, WatchEntry
from ._replies import Entry, _redis_address
from ._settle import Handler, Settler

if TYPE_CHECKING:
    from ._watches import DurableWatches

logger: logging.Logger = get_logger("async_jobs.redis")


class DurableWorker:
    """One worker of :meth:`DurableWatches.run`; an async context manager.

    Counters (this worker only): ``handled``, ``dead_lettered``, ``duplicates`` (entries
    dropped because another entry watches the same job), ``claimed`` (entries taken over from
    other consumers), ``lost`` (entries another worker took over from this one),
    ``consumers_removed`` (dead consumers this worker removed from the group) and
    ``in_flight`` (watches held now).
    """

    def __init__(
        self,
        watches: DurableWatches,
        clients: Sequence[ApiClient],
        handler: Handler,
        *,
        concurrency: int,
        prefetch: int,
        poll: PollSchedule | None,
        claim_idle: float,
        keepalive: float | None,
        retry: RetryPolicy,
        block: float,
        rate_limit: float | None,
        max_deliveries: int = 10,
    ) -> None:
        if concurrency < 1 or prefetch < 1:
            raise ValueError("concurrency and prefetch must be >= 1")
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be >= 1")
        if not claim_idle > 0 or math.isinf(claim_idle):
            raise ValueError("claim_idle must be a positive number of seconds")
        keepalive = claim_idle / 4 if keepalive is None else keepalive
        if not 0 < keepalive < claim_idle:
            raise ValueError("keepalive must be > 0 and below claim_idle")
        if block < 0:
            raise ValueError("block must be >= 0")
        self.watches = watches
        self.clients: tuple[ApiClient, ...] = tuple(clients)
        self.handler = handler
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.poll = poll
        self.claim_idle = claim_idle
        self.keepalive = keepalive
        self.retry = retry
        self.block = block
        self.rate_limit = rate_limit
        self.max_deliveries = max_deliveries
        self.handled: int = 0
        self.dead_lettered: int = 0
        self.duplicates: int = 0
        self.claimed: int = 0
        self.lost: int = 0
        self.consumers_removed: int = 0
        self._held = Holding(prefetch)
        self._consumer = Consumer(watches)
        # One outage for all of this worker's loops: a WARNING when the first runs into it.
        self._health = Outage(
            f"redis at {_redis_address(watches.redis)}", logger, quiet=REDIS_QUIET
        )
        self._settler = Settler(
            watches=watches,
            holding=self._held,
            handler=handler,
            retry=retry,
            limiter=anyio.CapacityLimiter(concurrency),
            health=self._health,
            counts=self,
        )
        self._stack: AsyncExitStack | None = None
        self._reread = False  # set by the keepalive loop: read own pending entries again

    @property
    def consumer(self) -> str:
        """This worker's consumer name in the group."""
        return self.watches.consumer

    @property
    def in_flight(self) -> int:
        """Watches this worker holds now."""
        return len(self._held)

    @property
    def redis(self) -> Redis:
        """The caller's Redis connection."""
        return self.watches.redis

    def __repr__(self) -> str:
        return f"DurableWorker({self.consumer!r}, in_flight={self.in_flight})"

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> DurableWorker:
        password = self.redis.connection_pool.connection_kwargs.get("password")
        secret = password if isinstance(password, str) else None
        settler = self._settler
        async with AsyncExitStack() as stack:
            register_secret(secret)  # masked in every async_jobs log record
            stack.callback(unregister_secret, secret)
            watcher = Watcher(
                *self.clients,
                poll=self.poll,
                max_concurrency=self.concurrency,
                rate_limit=self.rate_limit,
            )
            settler.watcher = await stack.enter_async_context(watcher)
            # After the loops end and before the Watcher stops: hand the watches over.
            stack.push_async_callback(self._leave)
            tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(self._read_loop)
            tg.start_soon(self._claim_loop)
            tg.start_soon(self._keepalive_loop)
            tg.start_soon(settler.run)
            settler.tg = tg
            self._stack = stack.pop_all()
        logger.info("durable worker %s started on stream %s", self.consumer, self.watches.stream)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The body's exception is never handed to the task group: it leaves as itself.
        stack, self._stack = self._stack, None
        tg, self._settler.tg = self._settler.tg, None
        if stack is None or tg is None:
            return
        tg.cancel_scope.cancel()
        # Not under a shield of its own: the task group's scope must be the current one when
        # it exits; it waits for its cancelled tasks by itself, and _leave shields its work.
        await stack.aclose()

    async def _leave(self) -> None:
        """Hand the watches still held over to the other workers and leave the group: mark
        them idle for ``claim_idle`` already, so the others take them over at their next
        pass instead of ``claim_idle`` seconds from now."""
        held = self._held.take_all()
        # Shielded: a worker is usually stopped by cancellation (its service shutting down),
        # which would end this, and the Watcher's exit after it, early.
        with anyio.move_on_after(2.0, shield=True):
            await self._consumer.hand_over(held, int(self.claim_idle * 1000) + 1)
            await self._consumer.forget()
        logger.info(
            "durable worker %s stopped (%d handled, %d handed over)",
            self.consumer,
            self.handled,
            len(held),
        )

    # -- the loops --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """New entries with ``XREADGROUP >``; first, and after any Redis trouble, this
        consumer's own pending entries (``0``), so nothing read is ever left behind."""
        backoff = _Backoff(self.watches, "reading watches", self._health)
        cursor = "0"
        while True:
            await self._held.wait_for_room()
            if self._reread:
                self._reread, cursor = False, "0"
            count = min(100, self._held.room_left())
            new = cursor == ">"
            try:
                entries = await self._consumer.read(cursor, count, self.block)
                if not new:
                    cursor = entries[-1][0] if entries else ">"
                await self._accept(entries, new=new)
                backoff.ok()
            except Exception as exc:
                cursor = "0"
                await backoff.trouble(exc)

    async def _claim_loop(self) -> None:
        """Every ``keepalive`` seconds, take over entries idle for ``claim_idle`` (a dead
        worker's) with ``XAUTOCLAIM``; every ``claim_idle / 2`` seconds, also show this
        consumer alive first (:meth:`Consumer.touch`) and remove the consumers left with
        nothing after (:meth:`_remove_dead`)."""
        backoff = _Backoff(self.watches, "claiming abandoned watches", self._health)
        idle_ms = max(int(self.claim_idle * 1000), 1)
        first = True
        touched = -math.inf
        while True:
            if not first:  # at start at once: a restarted fleet resumes without waiting
                await anyio.sleep(self.keepalive)
            first = False
            start = NO_MORE
            try:
                now = anyio.current_time()
                tidy = now >= touched + self.claim_idle / 2
                if tidy:
                    await self._consumer.touch()
                    touched = now
                while (room := self._held.room_left()) > 0:
                    start, claimed = await self._consumer.autoclaim(start, min(room, 100), idle_ms)
                    fresh = sum(1 for entry_id, _ in claimed if entry_id not in self._held)
                    if fresh:
                        self.claimed += fresh
                        logger.info("took over %d abandoned watches", fresh)
                    await self._accept(claimed)
                    if start == NO_MORE:
                        break
                if tidy:
                    await self._remove_dead()
                backoff.ok()
            except Exception as exc:
                await backoff.trouble(exc)

    async def _remove_dead(self) -> None:
        """Remove from the group the other consumers that hold no entry and were idle for
        longer than ``claim_idle + keepalive``: dead workers whose work was taken over. A
        live worker without work is never one of them: its claim loop touches its consumer
        every ``claim_idle / 2`` seconds (its blocking reads that time out do not reset its idle
        time); one removed all the same (a worker stalled that long, which lost its entries
        to the others already) is created again by its next read or touch."""
        idle_ms = int((self.claim_idle + self.keepalive) * 1000)
        for name in await self._consumer.remove_dead(idle_ms):
            self.consumers_removed += 1
            logger.info("removed consumer %s from the group (idle, holding no watch)", name)

    async def _keepalive_loop(self) -> None:
        """Reset the idle time of the entries this worker still owns, so no live worker's
        entry is taken over; drop the ones another worker took over; have the read loop read
        its own pending entries again when some are owned but not held."""
        backoff = _Backoff(self.watches, "refreshing held watches", self._health)
        orphan_ms = int(self.keepalive * 1000)
        while True:
            await anyio.sleep(self.keepalive)
            snapshot = self._held.snapshot()
            try:
                mine = await self._consumer.own_pending()
                for entry_id, held in snapshot.items():
                    if entry_id not in mine and not held.settling:
                        self._lose(held)
                if any(
                    idle >= orphan_ms and entry_id not in self._held
                    for entry_id, idle in mine.items()
                ):
                    # Delivered to this consumer but never received: a reply lost with its
                    # connection, the command then retried by the client (redis-py does by
                    # default), so the read loop saw no error. Read them again now rather
                    # than after ``claim_idle``.
                    self._reread = True
                await self._consumer.refresh([i for i in snapshot if i in mine])
                backoff.ok()
            except Exception as exc:
                await backoff.trouble(exc)

    # -- holding ----------------------------------------------------------------------------

    async def _accept(self, entries: Sequence[Entry], *, new: bool = False) -> None:
        """Hold the entries that own their job; drop the rest (deleted or duplicates), and
        dead-letter those delivered more than ``max_deliveries`` times. ``new``: entries read
        for the first time (``XREADGROUP >``), delivered once."""
        drop: list[str] = []
        fresh: list[tuple[str, WatchEntry]] = []
        unreadable: list[tuple[_Held, str]] = []
        for entry_id, fields in entries:
            if entry_id in self._held:
                continue
            if not fields:
                drop.append(entry_id)  # deleted from the stream meanwhile: nothing to do
                continue
            try:
                fresh.append((entry_id, WatchEntry.decode(fields)))
            except RecordError:
                held = _Held(entry_id, WatchEntry.salvage(fields))
                unreadable.append((held, "unreadable entry: no watch, key or token"))
        owners = await self._consumer.owners([entry.key for _, entry in fresh])
        live: list[tuple[str, WatchEntry]] = []
        for (entry_id, entry), owner in zip(fresh, owners, strict=True):
            if entry_id in self._held:
                continue
            if owner != entry.watch:
                # Another watch of this job is the live one, or this watch just ended (it
                # was handled by a worker that took it over): nothing left to do.
                drop.append(entry_id)
                self.duplicates += owner is not None
                continue
            live.append((entry_id, entry))
        counts = {} if new else await self._consumer.deliveries([i for i, _ in live])
        for entry_id, entry in live:
            if entry_id in self._held:
                continue
            held = _Held(entry_id, entry)
            deliveries = counts.get(entry_id, 1)
            if deliveries > self.max_deliveries:
                capped = (
                    f"delivered {deliveries} times without being settled (max_deliveries="
                    f"{self.max_deliveries}): a handler that crashes its process, or a worker "
                    "killed each time"
                )
                logger.error("watch %s of %s %s; dead-lettered", entry_id, entry.key, capped)
                unreadable.append((held, capped))
                continue
            error = self._prepare(held)
            if error is not None:
                unreadable.append((held, error))
                continue
            self._held.add(held)
            self._settler.watch(held)
        if drop:
            await self._consumer.drop(drop)
        for held, error in unreadable:
            if held.entry_id not in self._held:
                self._settler.reject(held, error)

    def _prepare(self, held: _Held) -> str | None:
        """Decode the entry's token and context; the reason it cannot be watched, if any."""
        try:
            held.context = held.entry.decode_context()
        except RecordError:
            return "unreadable entry: context is not JSON"
        try:
            held.ref = JobRef.from_token(held.entry.token, *self.clients)
        except ValueError as exc:
            return f"cannot watch {held.entry.key}: {exc}"
        return None

    def _lose(self, held: _Held) -> None:
        """Another worker took ``held`` over (this one stalled past ``claim_idle``)."""
        self._held.release(held)
        self.lost += 1
        key = held.entry.key
        logger.info("watch %s of %s was taken over by another worker", held.entry_id, key)
        others = any(other.entry.key == key for other in self._held)
        watcher = self._settler.watcher
        if watcher is not None and held.ref is not None and not others:
            watcher.remove(held.ref)
