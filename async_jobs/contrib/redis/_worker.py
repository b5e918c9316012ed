"""One worker of a fleet: its lifecycle, the lease loop that gives it its share of the
partitions, and per partition the loops that bring watches in (read, claim) and keep them its
own (keepalive); :mod:`._settle` takes them to their end."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from ... import _clock
from ..._client import ApiClient
from ..._outage import Outage
from ..._policy import PollSchedule, RetryPolicy
from ..._poll import JobRef
from ..._ratelimit import Slots
from ..._redact import get_logger, register_secret, unregister_secret
from ..._watcher import Watcher
from ._backoff import RECOVERABLE_ERRORS, REDIS_QUIET, _Backoff
from ._consumer import NO_MORE, Consumer
from ._held import Holding, _Held
from ._partitions import Leases, fair_share, preference
from ._records import RecordError, WatchEntry
from ._replies import Entry, RedisClient, _redis_address, connection_kwargs
from ._settle import Handler, Settler

if TYPE_CHECKING:
    from ._watches import DurableWatches

logger: logging.Logger = get_logger("async_jobs.redis")

#: Seconds between two looks at the fleet (heartbeat, lease renewals, rebalance), at most:
#: how soon a worker that joins gets partitions and one that stops cleanly gives them up.
LEASE_EVERY = 1.0


class _Partition:
    """A partition whose lease this worker holds: its consumer and the scope of its loops."""

    __slots__ = ("consumer", "done", "index", "reread", "scope")

    def __init__(self, watches: DurableWatches, index: int) -> None:
        self.index = index
        self.consumer = Consumer(watches, index)
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.reread = False  # set by the keepalive loop: read own pending entries again


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
        #: Partitions taken (their lease acquired) and given up (released on a rebalance or
        #: a stop, or lost to another worker) so far.
        self.partitions_taken: int = 0
        self.partitions_given_up: int = 0
        self._held = Holding(prefetch)
        self._partitions: dict[int, _Partition] = {}
        self._leases = Leases(watches.redis, watches.keys, watches.consumer, claim_idle)
        self._lease_every = min(self.keepalive, LEASE_EVERY)
        # One outage for all of this worker's loops: a WARNING when the first runs into it.
        self._health = Outage(_redis_address(watches.redis), logger, quiet=REDIS_QUIET)
        self._settler = Settler(
            watches=watches,
            holding=self._held,
            handler=handler,
            retry=retry,
            limiter=Slots(concurrency),
            health=self._health,
            counts=self,
        )
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None

    @property
    def consumer(self) -> str:
        """This worker's consumer name in the group."""
        return self.watches.consumer

    @property
    def in_flight(self) -> int:
        """Watches this worker holds now."""
        return len(self._held)

    @property
    def partitions(self) -> list[int]:
        """The partitions whose lease this worker holds now (it alone reads them)."""
        return sorted(self._partitions)

    @property
    def redis(self) -> RedisClient:
        """The caller's Redis connection."""
        return self.watches.redis

    def __repr__(self) -> str:
        return (
            f"DurableWorker({self.consumer!r}, partitions={self.partitions}, "
            f"in_flight={self.in_flight})"
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> DurableWorker:
        password = connection_kwargs(self.redis).get("password")
        secret = password if isinstance(password, str) else None
        settler = self._settler
        # Early, so that a wrong partition count fails here rather than in a loop; if Redis
        # is not there yet, the loops wait for it.
        with suppress(*RECOVERABLE_ERRORS):
            await self.watches.ensure_group()
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
            self._tg = settler.tg = tg
            tg.start_soon(self._lease_loop)
            tg.start_soon(settler.run)
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
        self._tg = None
        if stack is None or tg is None:
            return
        tg.cancel_scope.cancel()
        # Not under a shield of its own: the task group's scope must be the current one when
        # it exits; it waits for its cancelled tasks by itself, and _leave shields its work.
        await stack.aclose()

    async def _leave(self) -> None:
        """Hand the watches still held over and give the partitions up: mark the entries
        idle for ``claim_idle`` already and release the leases, so that the workers taking
        the partitions next (at their next look at the fleet) take the entries over at once,
        not ``claim_idle`` seconds from now."""
        held = self._held.take_all()
        partitions, self._partitions = list(self._partitions.values()), {}
        # Shielded: a worker is usually stopped by cancellation (its service shutting down),
        # which would end this, and the Watcher's exit after it, early.
        with anyio.move_on_after(2.0, shield=True):
            try:
                await self._hand_over(held)
                for part in partitions:
                    await part.consumer.forget()
                await self._leases.release([part.index for part in partitions])
                await self._leases.leave()
            except Exception as exc:
                logger.debug("could not give the partitions up: %s", exc)
        logger.info(
            "durable worker %s stopped (%d handled, %d handed over)",
            self.consumer,
            self.handled,
            len(held),
        )

    async def _hand_over(self, held: Sequence[_Held]) -> None:
        """Mark ``held`` idle for ``claim_idle`` already (see :meth:`Consumer.hand_over`)."""
        by_partition: dict[int, list[str]] = {}
        for one in held:
            by_partition.setdefault(one.partition, []).append(one.entry_id)
        idle_ms = int(self.claim_idle * 1000) + 1
        for index, entry_ids in by_partition.items():
            await Consumer(self.watches, index).hand_over(entry_ids, idle_ms)

    # -- partitions -------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Every ``min(keepalive, 1 s)``: look at the fleet and take this worker's share of
        the partitions (:meth:`_rebalance`)."""
        backoff = _Backoff(self.watches, "renewing partition leases", self._health)
        while True:
            try:
                await self._rebalance()
                backoff.ok()
            except Exception as exc:
                await backoff.trouble(exc)
                continue
            await _clock.sleep(self._lease_every)

    async def _rebalance(self) -> None:
        """Show this worker alive, renew its leases (a partition whose lease another worker
        took is stopped), then give up the partitions above its fair share (those it prefers
        least) or take free ones up to it (those it prefers most)."""
        await self.watches.ensure_group()
        live = await self._leases.heartbeat()
        target = fair_share(self.consumer, live, self.watches.partitions)
        held = sorted(self._partitions)
        kept = await self._leases.take(held)
        for index in held:
            if index not in kept:
                logger.warning("partition %d was taken over by another worker", index)
                await self._stop_partition(index, release=False)
        mine = sorted(kept, key=self._preference)
        if len(mine) > target:
            for index in mine[: len(mine) - target]:
                await self._stop_partition(index, release=True)
        elif len(mine) < target:
            others = [i for i in range(self.watches.partitions) if i not in kept]
            free = sorted(await self._leases.free(others), key=self._preference, reverse=True)
            for index in sorted(await self._leases.take(free[: target - len(mine)])):
                self._start_partition(index)

    def _preference(self, index: int) -> int:
        return preference(self.consumer, index)

    def _start_partition(self, index: int) -> None:
        """Run the loops of ``index``, whose lease this worker just took."""
        assert self._tg is not None
        part = self._partitions[index] = _Partition(self.watches, index)
        self.partitions_taken += 1
        logger.info("took partition %d", index)
        self._tg.start_soon(self._run_partition, part)

    async def _run_partition(self, part: _Partition) -> None:
        try:
            with part.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._read_loop, part)
                    tg.start_soon(self._claim_loop, part)
                    tg.start_soon(self._keepalive_loop, part)
        finally:
            part.done.set()

    async def _stop_partition(self, index: int, *, release: bool) -> None:
        """Stop reading ``index``; drop its watches not being settled from the Watcher and
        hand them over; with ``release``, give its lease up (a rebalance: the worker taking
        it next takes the entries over at once)."""
        part = self._partitions.pop(index)
        part.scope.cancel()
        await part.done.wait()
        # A watch whose job was found terminal stays: its handler runs (or is about to), and
        # it is settled here; the next holder takes it over only if that takes claim_idle.
        dropped = [held for held in self._held.snapshot(index).values() if not held.finishing]
        for held in dropped:
            self._drop(held)
        self.partitions_given_up += 1
        logger.info(
            "gave partition %d up (%d watches handed over)%s",
            index,
            len(dropped),
            "" if release else ": its lease was lost",
        )
        await self._hand_over(dropped)
        await part.consumer.forget()
        if release:
            await self._leases.release([index])

    # -- the loops of a partition -----------------------------------------------------------

    async def _read_loop(self, part: _Partition) -> None:
        """New entries with ``XREADGROUP >``; first, and after any Redis trouble, this
        consumer's own pending entries (``0``), so nothing read is ever left behind."""
        backoff = _Backoff(self.watches, "reading watches", self._health)
        cursor = "0"
        while True:
            await self._held.wait_for_room()
            if part.reread:
                part.reread, cursor = False, "0"
            count = min(100, self._held.room_left())
            new = cursor == ">"
            try:
                entries = await part.consumer.read(cursor, count, self.block)
                if not new:
                    cursor = entries[-1][0] if entries else ">"
                await self._accept(part, entries, new=new)
                backoff.ok()
            except Exception as exc:
                cursor = "0"
                await backoff.trouble(exc)

    async def _claim_loop(self, part: _Partition) -> None:
        """Every ``keepalive`` seconds, take over entries idle for ``claim_idle`` (a dead
        worker's, or those a worker handed over) with ``XAUTOCLAIM``; every ``claim_idle /
        2`` seconds, also show this consumer alive first (:meth:`Consumer.touch`) and remove
        the consumers left with nothing after (:meth:`_remove_dead`)."""
        backoff = _Backoff(self.watches, "claiming abandoned watches", self._health)
        idle_ms = max(int(self.claim_idle * 1000), 1)
        first = True
        touched = -math.inf
        while True:
            if not first:  # at once when the partition is taken: hand-overs move at once
                await _clock.sleep(self.keepalive)
            first = False
            start = NO_MORE
            try:
                now = _clock.now()
                tidy = now >= touched + self.claim_idle / 2
                if tidy:
                    await part.consumer.touch()
                    touched = now
                while (room := self._held.room_left()) > 0:
                    start, claimed = await part.consumer.autoclaim(start, min(room, 100), idle_ms)
                    fresh = sum(
                        1 for entry_id, _ in claimed if (part.index, entry_id) not in self._held
                    )
                    if fresh:
                        self.claimed += fresh
                        logger.info("took over %d abandoned watches", fresh)
                    await self._accept(part, claimed)
                    if start == NO_MORE:
                        break
                if tidy:
                    await self._remove_dead(part)
                backoff.ok()
            except Exception as exc:
                await backoff.trouble(exc)

    async def _remove_dead(self, part: _Partition) -> None:
        """Remove from the partition's group the other consumers that hold no entry and were
        idle for longer than ``claim_idle + keepalive``: dead workers whose work was taken
        over, and workers that held the partition before. The holder is never one of them:
        its claim loop touches its consumer every ``claim_idle / 2`` seconds (its blocking
        reads that time out do not reset its idle time); one removed all the same is
        created again by its next read or touch."""
        idle_ms = int((self.claim_idle + self.keepalive) * 1000)
        for name in await part.consumer.remove_dead(idle_ms):
            self.consumers_removed += 1
            logger.info(
                "removed consumer %s from partition %d (idle, holding no watch)", name, part.index
            )

    async def _keepalive_loop(self, part: _Partition) -> None:
        """Reset the idle time of the entries this worker still owns, so no live worker's
        entry is taken over; drop the ones another worker took over; have the read loop read
        its own pending entries again when some are owned but not held."""
        backoff = _Backoff(self.watches, "refreshing held watches", self._health)
        orphan_ms = int(self.keepalive * 1000)
        while True:
            await _clock.sleep(self.keepalive)
            snapshot = self._held.snapshot(part.index)
            try:
                mine = await part.consumer.own_pending()
                for entry_id, held in snapshot.items():
                    if entry_id not in mine and not held.settling:
                        self._lose(held)
                if any(
                    idle >= orphan_ms and (part.index, entry_id) not in self._held
                    for entry_id, idle in mine.items()
                ):
                    # Delivered to this consumer but never received: a reply lost with its
                    # connection, the command then retried by the client (redis-py does by
                    # default), so the read loop saw no error. Read them again now rather
                    # than after ``claim_idle``.
                    part.reread = True
                await part.consumer.refresh([i for i in snapshot if i in mine])
                backoff.ok()
            except Exception as exc:
                await backoff.trouble(exc)

    # -- holding ----------------------------------------------------------------------------

    async def _accept(
        self, part: _Partition, entries: Sequence[Entry], *, new: bool = False
    ) -> None:
        """Hold the entries that own their job; drop the rest (deleted or duplicates), and
        dead-letter those delivered more than ``max_deliveries`` times. ``new``: entries read
        for the first time (``XREADGROUP >``), delivered once."""
        drop: list[str] = []
        fresh: list[tuple[str, WatchEntry]] = []
        unreadable: list[tuple[_Held, str]] = []
        for entry_id, fields in entries:
            if (part.index, entry_id) in self._held:
                continue
            if not fields:
                drop.append(entry_id)  # deleted from the stream meanwhile: nothing to do
                continue
            try:
                fresh.append((entry_id, WatchEntry.decode(fields)))
            except RecordError:
                held = _Held(part.index, entry_id, WatchEntry.salvage(fields))
                unreadable.append((held, "unreadable entry: no watch, key or token"))
        owners = await part.consumer.owners([entry.key for _, entry in fresh])
        live: list[tuple[str, WatchEntry]] = []
        for (entry_id, entry), owner in zip(fresh, owners, strict=True):
            if (part.index, entry_id) in self._held:
                continue
            if owner != entry.watch:
                # Another watch of this job is the live one, or this watch just ended (it
                # was handled by a worker that took it over): nothing left to do.
                drop.append(entry_id)
                self.duplicates += owner is not None
                continue
            live.append((entry_id, entry))
        counts = {} if new else await part.consumer.deliveries([i for i, _ in live])
        for entry_id, entry in live:
            if (part.index, entry_id) in self._held:
                continue
            held = _Held(part.index, entry_id, entry)
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
            await part.consumer.drop(drop)
        for held, error in unreadable:
            if held.ident not in self._held:
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
        self.lost += 1
        key = held.entry.key
        logger.info("watch %s of %s was taken over by another worker", held.entry_id, key)
        self._drop(held)

    def _drop(self, held: _Held) -> None:
        """Stop holding ``held`` and following its job (unless another held watch follows
        it)."""
        self._held.release(held)
        key = held.entry.key
        others = any(other.entry.key == key for other in self._held)
        watcher = self._settler.watcher
        if watcher is not None and held.ref is not None and not others:
            watcher.remove(held.ref)
