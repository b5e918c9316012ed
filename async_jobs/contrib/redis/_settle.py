"""The end of a held watch: follow its job through the worker's Watcher, call the handler on
the terminal job (retried on the watch's own poll step), then settle it (the result or
dead-letter record, then ``XACK``, ``XDEL`` and the end of the job's watch string in one
script per partition, batched with the other settles)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import TaskGroup

from ... import _clock
from ..._outage import Outage
from ..._policy import RetryPolicy, Stop
from ..._ratelimit import Slots
from ..._redact import get_logger
from ..._watcher import Watcher
from ._backoff import _Backoff
from ._held import Holding, _Held
from ._records import MAX_ERROR_CHARS, DeadRecord, HandledRecord, _Record, job_json

if TYPE_CHECKING:
    from ._watches import DurableWatches

logger: logging.Logger = get_logger("async_jobs.redis")

#: ``handler(job, context)``: called once a watched job is terminal; must be idempotent.
Handler = Callable[[Any, dict[str, Any]], Awaitable[object]]

#: Most watches settled (recorded, acked, ended) in one batch.
SETTLE_BATCH = 200
#: Settle entries of one partition: KEYS[1] is its stream, KEYS[2..] the jobs' watch
#: strings; ARGV[1] the group, then per entry its id and its watch id. Each entry is
#: acknowledged and deleted, and its job's watch string deleted if it still names it.
SETTLE_SCRIPT = """
for i = 2, #KEYS do
  local entry, watch = ARGV[2 * i - 2], ARGV[2 * i - 1]
  if redis.call('GET', KEYS[i]) == watch then
    redis.call('DEL', KEYS[i])
  end
  redis.call('XACK', KEYS[1], ARGV[1], entry)
  redis.call('XDEL', KEYS[1], entry)
end
return 0
"""


class Counts(Protocol):
    """Where a settler counts what it settled (the worker's counters)."""

    handled: int
    dead_lettered: int


class _Settle:
    """A watch waiting to be settled."""

    __slots__ = ("done", "held", "maxlen", "record", "recorded", "stream")

    def __init__(self, held: _Held, stream: str, maxlen: int, record: _Record) -> None:
        self.held = held
        self.stream = stream
        self.maxlen = maxlen
        self.record = record
        self.recorded = False  # its record is written: a retried settle does not write it again
        self.done = anyio.Event()


@dataclass(eq=False, kw_only=True)
class Settler:
    """Follows, handles and settles the watches of one worker (see the module docstring).
    ``watcher`` and ``tg`` are the worker's, set while it runs; :meth:`run` is its settle
    loop; ``counts`` (the worker) counts the watches handled and dead-lettered."""

    watches: DurableWatches
    holding: Holding
    handler: Handler
    retry: RetryPolicy
    limiter: Slots
    health: Outage
    counts: Counts
    watcher: Watcher | None = None
    tg: TaskGroup | None = None
    _to_settle: list[_Settle] = field(default_factory=list)
    _wake: anyio.Event = field(default_factory=anyio.Event)

    # -- following --------------------------------------------------------------------------

    def watch(self, held: _Held) -> None:
        """Follow ``held``'s job until it is terminal, then complete it."""
        assert self.watcher is not None and held.ref is not None
        future = self.watcher.add(held.ref)
        held.future = future
        future.add_done_callback(partial(self._on_done, held))

    def _on_done(self, held: _Held, future: Any) -> None:
        if future.cancelled() or not self.holding.holds(held) or self.tg is None:
            return
        self.tg.start_soon(self._complete, held, future)

    def reject(self, held: _Held, error: str) -> None:
        """Dead-letter ``held`` at once: no retry can help (an unreadable entry)."""
        self.holding.add(held)
        held.failed(self.retry)
        assert self.tg is not None
        self.tg.start_soon(self.dead_letter, held, error, None)

    # -- completing -------------------------------------------------------------------------

    async def _complete(self, held: _Held, future: Any) -> None:
        if not self.holding.holds(held):
            return  # taken over by another worker meanwhile
        failure = future.exception()
        if failure is not None:
            decision = held.failed(self.retry)
            error = f"watch failed: {type(failure).__name__}: {failure}"
            if decision.stop is Stop.EXHAUSTED:
                await self.dead_letter(held, error, None)
                return
            logger.warning(
                "%s for %s (attempt %d of %d); watching it again",
                error,
                held.entry.key,
                held.attempts,
                self.retry.max_attempts,
            )
            await _clock.sleep(decision.delay)
            if self.holding.holds(held):
                self.watch(held)
            return
        job = future.result()
        while True:
            try:
                async with self.limiter:
                    if not self.holding.holds(held):
                        return  # given up while waiting for its turn: its next holder handles it
                    await self.handler(job, held.context)
            except Exception as exc:
                decision = held.failed(self.retry)
                error = f"{type(exc).__name__}: {exc}"
                if decision.stop is Stop.EXHAUSTED:
                    logger.error(
                        "handler failed for %s %d times, last with %s; dead-lettered",
                        held.entry.key,
                        held.attempts,
                        error,
                    )
                    await self.dead_letter(held, error, job)
                    return
                logger.warning(
                    "handler failed for %s (attempt %d of %d): %s; retrying",
                    held.entry.key,
                    held.attempts,
                    self.retry.max_attempts,
                    error,
                )
                await _clock.sleep(decision.delay)
                if not self.holding.holds(held):
                    return  # taken over meanwhile: the new holder handles it
            else:
                break
        record = HandledRecord(
            key=held.entry.key,
            id=str(job.id),
            state=job.job_state,
            job=job_json(job),
            context=held.entry.context,
            watch=held.entry.watch,
            entry=held.entry_id,
            partition=held.partition,
            consumer=self.watches.consumer,
            handled_at=time.time(),
        )
        await self._settle(held, self.watches.results, self.watches.results_maxlen, record)
        self.counts.handled += 1

    async def dead_letter(self, held: _Held, error: str, job: Any) -> None:
        """Give ``held`` up: its record goes to the dead-letter stream."""
        record = DeadRecord(
            key=held.entry.key,
            token=held.entry.token,
            context=held.entry.context,
            error=error[:MAX_ERROR_CHARS],
            attempts=held.attempts,
            watch=held.entry.watch,
            entry=held.entry_id,
            partition=held.partition,
            consumer=self.watches.consumer,
            failed_at=time.time(),
            job=job_json(job) if job is not None else "",
        )
        w = self.watches
        await self._settle(held, w.dead_letter, w.dead_letter_maxlen, record)
        self.counts.dead_lettered += 1

    # -- settling ---------------------------------------------------------------------------

    async def _settle(self, held: _Held, stream: str, maxlen: int, record: _Record) -> None:
        """Append ``record`` to ``stream``, then ack and delete the entry and end the job's
        watch (batched with other settles); the entry is released after."""
        held.settling = True
        item = _Settle(held, stream, maxlen, record)
        self._to_settle.append(item)
        self._wake.set()
        await item.done.wait()
        self.holding.release(held)

    async def run(self) -> None:
        """Settle what accumulated while the previous batch was in flight, retried through
        Redis outages."""
        backoff = _Backoff(self.watches, "acknowledging handled watches", self.health)
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._to_settle:
                batch = self._to_settle[:SETTLE_BATCH]
                try:
                    await self._settle_batch(batch)
                except Exception as exc:
                    await backoff.trouble(exc)
                    continue
                backoff.ok()
                del self._to_settle[: len(batch)]
                for item in batch:
                    item.done.set()

    async def _settle_batch(self, batch: Sequence[_Settle]) -> None:
        """The records first (one pipeline), then one :data:`SETTLE_SCRIPT` per partition:
        ``XACK`` and ``XDEL`` of its entries, and ``DEL`` of each job's watch string that
        still names the watch being settled (so a newer watch of the same job is never ended
        by an older one). Records and entries live in different Redis Cluster slots, so a
        worker that dies between the two steps leaves a record of a watch that another
        worker will handle again: at least once, as the handler calls. A batch retried after
        its scripts failed does not write its records again."""
        watches = self.watches
        keys = watches.keys
        by_partition: dict[int, list[_Held]] = {}
        for item in batch:
            by_partition.setdefault(item.held.partition, []).append(item.held)
        unrecorded = [item for item in batch if not item.recorded]
        if unrecorded:
            async with watches.redis.pipeline(transaction=False) as pipe:
                for item in unrecorded:
                    fields = item.record.encode()
                    pipe.xadd(item.stream, fields, maxlen=item.maxlen, approximate=True)  # type: ignore[arg-type]
                await pipe.execute()
            for item in unrecorded:
                item.recorded = True
        async with watches.redis.pipeline(transaction=False) as pipe:
            for partition, held in by_partition.items():
                script_keys = [keys.stream_of(partition)]
                script_keys += [keys.job_key(partition, h.entry.key) for h in held]
                args = [watches.group]
                for h in held:
                    args += [h.entry_id, h.entry.watch]
                pipe.eval(SETTLE_SCRIPT, len(script_keys), *script_keys, *args)
            await pipe.execute()
