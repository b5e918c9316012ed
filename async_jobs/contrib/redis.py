"""Durable watches shared by many service instances, on Redis Streams consumer groups.

Install the extra: ``pip install 'async-jobs[redis]'``; bring your own
``redis.asyncio.Redis`` (this module never opens a connection itself, so it never sees a URL
or a password it could log)::

    dw = DurableWatches(redis)
    await dw.submit(zoo.async_operation(op_id), {"order": 42})      # any instance, any time

    async def handler(job, context):                              # must be idempotent
        await save_result(job.id, job.job_state, context["order"])

    async with dw.run(zoo, mf, handler=handler, concurrency=16):  # every instance
        await anyio.sleep_forever()

What lives in Redis (names are options of :class:`DurableWatches`):

- the watches stream (``async_jobs:watches``): one entry per watch, fields ``watch`` (the
  watch id), ``key`` (the ref's :attr:`~async_jobs.JobRef.key`), ``token`` (its resume token:
  kind and ids, never a credential), ``context`` (the caller's JSON) and ``submitted`` (epoch
  seconds). Workers read it through the consumer group ``async_jobs`` with ``XREADGROUP``; an
  entry is acknowledged (``XACK``) and deleted (``XDEL``) only once its handler succeeded or
  it was dead-lettered, so the stream holds exactly the unfinished watches and the group's
  pending list says which worker holds which.
- one string per watched job, ``<stream>:job:<key>`` = its watch id: what makes ``submit``
  idempotent. ``submit`` sets it with ``SET NX`` in the same ``MULTI`` as its ``XADD``, so the
  two happen together or not at all; an entry whose watch id is not the job's current one (the
  loser of a race between two submits) is deleted by its submitter, or dropped by the worker
  that reads it. The string is deleted when the watch ends, in the ``MULTI`` that acks the
  entry, under ``WATCH`` so that only the watch it names can delete it.
- the results stream (``async_jobs:results``, trimmed with ``MAXLEN ~``): one record per
  handled job: ``key``, ``id``, ``state``, ``job`` (the terminal job as JSON), ``context``,
  ``watch``, ``entry``, ``consumer``, ``handled_at``.
- the dead-letter stream (``async_jobs:dead``): watches given up after ``retry.max_attempts``
  tries (a handler that keeps raising, a job whose GET ends its wait with 400/401/403/404 on
  every try; an unreadable entry at once; a 429, 5xx or lost connection only costs a poll):
  ``key``, ``token``, ``context``, ``error``, ``attempts``, ``watch``, ``entry``,
  ``consumer``, ``failed_at`` and ``job`` (the terminal job as JSON, or empty).

Delivery is **at least once**: a worker that dies after its handler ran but before the ack, or
one that stalls longer than ``claim_idle`` while another takes its entries over, means a
handler runs twice for one job. Handlers must be idempotent: dedupe on ``job.id`` (unique per
API; the results stream also carries the ref's ``key``, unique across APIs).

A live worker keeps its entries from being taken over: every ``keepalive`` seconds it claims
the entries it still owns again (``XCLAIM ... JUSTID``, in a script that checks the owner
first), which resets their idle time; only
entries idle for ``claim_idle`` seconds, those of a dead or stalled worker, are taken over
with ``XAUTOCLAIM``. An entry found taken over is dropped by its former holder; one found
delivered to this worker but never received (a reply lost with its connection, the command
retried by the client) is read again. A worker that stops cleanly marks the entries it still
holds as idle (``XCLAIM ... IDLE``), so the others take them over at their next pass. Lost
Redis connections (a restart, a failover) are retried with backoff in every loop; nothing is
acked before the handler succeeded.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from .._client import BaseClient
from .._outage import Outage
from .._policy import Decision, Outcome, PollPolicy, PollStep, RetryPolicy, Stop
from .._poll import JobRef
from .._redact import get_logger, register_secret, unregister_secret
from .._watcher import Watcher

__all__ = ["DurableStatus", "DurableWatches", "DurableWorker", "Handler"]

logger: logging.Logger = get_logger("async_jobs.redis")

#: ``handler(job, context)``: called once a watched job is terminal; must be idempotent.
Handler = Callable[[Any, dict[str, Any]], Awaitable[object]]

#: Largest context accepted by :meth:`DurableWatches.submit`, encoded as JSON.
MAX_CONTEXT_BYTES = 64 * 1024
#: Default handler retry schedule: 5 tries, 1 s, 2 s, 4 s, ... (full jitter) up to 60 s.
DEFAULT_RETRY = RetryPolicy(max_attempts=5, initial=1.0, multiplier=2.0, maximum=60.0)
#: Reset the idle time of the given entries that the pending list still gives to ARGV[2]
#: (``XCLAIM JUSTID``), atomically: a plain XPENDING then XCLAIM would take back an entry that
#: another worker claimed in between (both workers would then handle it).
REFRESH_OWN_SCRIPT = """
for i = 3, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if entry and entry[2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
"""

#: How the worker loops back off while Redis is unreachable.
#: Seconds after a Redis outage's end during which new trouble counts as part of it.
REDIS_QUIET = 5.0
REDIS_BACKOFF = PollPolicy(initial=0.1, multiplier=2.0, maximum=5.0, jitter=0.2)
#: Redis errors a worker waits out (a restart, a failover, a dropped connection).
RECOVERABLE_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    OSError,
)
#: Redis errors that waiting cannot fix: a wrong password or missing permissions.
FATAL_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.NoPermissionError,
)
_SUBMIT_CHUNK = 500
#: Most watches settled (recorded, acked, ended) in one MULTI.
SETTLE_BATCH = 200
_NO_MORE = "0-0"


def default_consumer() -> str:
    """``<hostname>-<pid>-<random>``: unique per process and per worker."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _str(value: Any) -> str:
    """A Redis reply as text, whether the connection decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _fields(raw: Any) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in (raw or {}).items()}


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """``(id, fields)`` pairs of an ``XREADGROUP`` reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    groups: Iterable[Any] = (
        reply.values() if isinstance(reply, Mapping) else (entries for _, entries in reply)
    )
    out: list[tuple[str, dict[str, str]]] = []
    for entries in groups:
        if entries and isinstance(entries[0], list):  # RESP3 nests one more level
            entries = [entry for inner in entries for entry in inner]
        out.extend((_str(entry_id), _fields(raw)) for entry_id, raw in entries)
    return out


def _is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, redis_errors.ResponseError) and str(exc).startswith("NOGROUP")


def _encode_context(context: Mapping[str, Any] | None) -> str:
    if context is None:
        return "{}"
    if not isinstance(context, Mapping):
        raise TypeError(f"context must be a dict or None, got {type(context).__name__}")
    try:
        raw = msgspec.json.encode(dict(context))
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"context must be JSON-serialisable: {exc}") from None
    if len(raw) > MAX_CONTEXT_BYTES:
        raise ValueError(f"context is {len(raw)} bytes as JSON; at most {MAX_CONTEXT_BYTES}")
    return raw.decode()


@dataclass(frozen=True)
class DurableStatus:
    """What :meth:`DurableWatches.status` reports."""

    #: Watches submitted and not yet handled or dead-lettered.
    pending: int
    #: Of those, the ones no worker has read yet.
    undelivered: int
    #: Consumer name -> entries it holds (read, not yet acknowledged); a dead consumer's
    #: entries stay here until another worker takes them over.
    in_flight: dict[str, int] = field(default_factory=dict)
    #: Records in the dead-letter stream.
    dead_lettered: int = 0
    #: Records in the (trimmed) results stream.
    results: int = 0


class DurableWatches:
    """Watches kept in a Redis stream, shared by every instance of a service.

    ``redis`` is the caller's ``redis.asyncio.Redis`` (never closed here). ``consumer`` names
    this instance's worker in the consumer group (default ``<hostname>-<pid>-<random>``; pass
    a stable name, such as a pod name, to resume its own entries at once after a restart).
    See the module docstring for what is stored where.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        stream: str = "async_jobs:watches",
        group: str = "async_jobs",
        consumer: str | None = None,
        results: str = "async_jobs:results",
        results_maxlen: int = 100_000,
        dead_letter: str = "async_jobs:dead",
        dead_letter_maxlen: int = 100_000,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer: str = consumer or default_consumer()
        self.job_prefix: str = f"{stream}:job:"
        self.results = results
        self.results_maxlen = results_maxlen
        self.dead_letter = dead_letter
        self.dead_letter_maxlen = dead_letter_maxlen
        self._group_ready = False

    def job_key(self, key: str) -> str:
        """The Redis key holding the watch id of the job whose ref key is ``key``."""
        return self.job_prefix + key

    def __repr__(self) -> str:
        return (
            f"DurableWatches(stream={self.stream!r}, group={self.group!r}, "
            f"consumer={self.consumer!r})"
        )

    async def ensure_group(self, *, force: bool = False) -> None:
        """Create the stream and its consumer group if missing (from the stream's start, so
        entries submitted before any worker ran are delivered too)."""
        if self._group_ready and not force:
            return
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def submit(self, ref: JobRef[Any], context: Mapping[str, Any] | None = None) -> str:
        """Watch ``ref`` durably; ``context`` (a small JSON-serialisable dict, at most 64 KiB)
        is handed to the handler with the terminal job. Returns the watch id: the existing
        one if the job is already watched (submitting a job twice while it is watched makes
        one watch; once it was handled or dead-lettered, a new submit watches it again)."""
        return (await self.submit_many([(ref, context)]))[0]

    async def submit_many(
        self, jobs: Iterable[JobRef[Any] | tuple[JobRef[Any], Mapping[str, Any] | None]]
    ) -> list[str]:
        """:meth:`submit` each ref (or ``(ref, context)`` pair), pipelined; the watch ids in
        the same order."""
        items: list[tuple[str, str, str]] = []
        for job in jobs:
            ref, context = job if isinstance(job, tuple) else (job, None)
            items.append((ref.key, ref.to_token(), _encode_context(context)))
        await self.ensure_group()
        first: dict[str, tuple[str, str, str]] = {}
        for item in items:
            first.setdefault(item[0], item)  # one watch per job: the first context wins
        unique = list(first.values())
        owners: dict[str, str] = {}
        for start in range(0, len(unique), _SUBMIT_CHUNK):
            owners.update(await self._submit_chunk(unique[start : start + _SUBMIT_CHUNK]))
        return [owners[key] for key, _, _ in items]

    async def _submit_chunk(self, chunk: Sequence[tuple[str, str, str]]) -> dict[str, str]:
        owners: dict[str, str] = {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, _, _ in chunk:
                pipe.get(self.job_key(key))
            existing = await pipe.execute()
        todo = []
        for item, owner in zip(chunk, existing, strict=True):
            if owner is None:
                todo.append(item)
            else:
                owners[item[0]] = _str(owner)
        while todo:
            # SET NX and XADD in one MULTI: both happen or neither; the loser's entry goes.
            watch_ids = [secrets.token_hex(8) for _ in todo]
            now = f"{time.time():.6f}"
            async with self.redis.pipeline(transaction=True) as pipe:
                for (key, token, ctx), watch_id in zip(todo, watch_ids, strict=True):
                    pipe.set(self.job_key(key), watch_id, nx=True)
                    fields = {
                        "v": "1",
                        "watch": watch_id,
                        "key": key,
                        "token": token,
                        "context": ctx,
                        "submitted": now,
                    }
                    pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
                replies = await pipe.execute()
            losers: list[tuple[str, str, str]] = []
            loser_entries: list[str] = []
            for index, (item, watch_id) in enumerate(zip(todo, watch_ids, strict=True)):
                if replies[2 * index]:
                    owners[item[0]] = watch_id
                else:
                    losers.append(item)
                    loser_entries.append(_str(replies[2 * index + 1]))
            if not losers:
                break
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(self.stream, self.group, *loser_entries)
                pipe.xdel(self.stream, *loser_entries)
                for key, _, _ in losers:
                    pipe.get(self.job_key(key))
                current = (await pipe.execute())[2:]
            todo = []
            for item, owner in zip(losers, current, strict=True):
                if owner is None:
                    todo.append(item)  # that watch ended meanwhile: submit again
                else:
                    owners[item[0]] = _str(owner)
        return owners

    def run(
        self,
        *clients: BaseClient,
        handler: Handler,
        concurrency: int = 16,
        prefetch: int = 10_000,
        poll: PollPolicy | None = None,
        claim_idle: float = 60.0,
        keepalive: float | None = None,
        retry: RetryPolicy | None = None,
        block: float = 1.0,
        rate_limit: float | None = None,
    ) -> DurableWorker:
        """One worker of the fleet, an async context manager: while its block runs it reads
        watches, follows their jobs through one :class:`~async_jobs.Watcher` over ``clients``
        and calls ``await handler(job, context)`` for each terminal job, then acks it.

        ``concurrency``: handler calls at once, and API requests in flight. ``prefetch``: at
        most this many watches held at once (the rest stay for other workers). ``claim_idle``:
        seconds after which a dead worker's entries are taken over (``XAUTOCLAIM``);
        ``keepalive`` (default ``claim_idle / 4``): how often this worker refreshes its own.
        ``retry``: tries and backoff of a failing handler (or of a watch whose GET answers
        400/401/403/404) before the watch goes to the dead-letter stream. ``block``: seconds one
        ``XREADGROUP`` waits for new entries (keep the connection's ``socket_timeout`` above
        it). Leaving the block stops the worker and hands the watches it held over to the
        others.
        """
        return DurableWorker(
            self,
            clients,
            handler,
            concurrency=concurrency,
            prefetch=prefetch,
            poll=poll,
            claim_idle=claim_idle,
            keepalive=keepalive,
            retry=retry or DEFAULT_RETRY,
            block=block,
            rate_limit=rate_limit,
        )

    async def status(self) -> DurableStatus:
        """Pending watches, entries in flight per consumer, dead-lettered and result counts."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.stream)
            pipe.xlen(self.dead_letter)
            pipe.xlen(self.results)
            length, dead, results = await pipe.execute()
        try:
            summary = await self.redis.xpending(self.stream, self.group)
        except redis_errors.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            summary = {}
        in_flight = {
            _str(consumer["name"]): int(consumer["pending"])
            for consumer in summary.get("consumers") or ()
        }
        delivered = int(summary.get("pending") or 0)
        return DurableStatus(
            pending=int(length),
            undelivered=max(int(length) - delivered, 0),
            in_flight=in_flight,
            dead_lettered=int(dead),
            results=int(results),
        )


class _Held:
    """One watch this worker holds."""

    __slots__ = (
        "context",
        "entry_id",
        "future",
        "key",
        "raw_context",
        "ref",
        "settling",
        "step",
        "token",
        "watch_id",
    )

    def __init__(self, entry_id: str, fields: Mapping[str, str]) -> None:
        self.entry_id = entry_id
        self.key = fields.get("key", "")
        self.token = fields.get("token", "")
        self.watch_id = fields.get("watch", "")
        self.raw_context = fields.get("context", "{}")
        self.context: dict[str, Any] = {}
        self.ref: JobRef[Any] | None = None
        self.future: Any = None
        self.step: PollStep | None = None  # the failures of its watch and handler so far
        self.settling = False

    @property
    def attempts(self) -> int:
        """Failed attempts (of the watch or the handler) so far."""
        return self.step.misses if self.step is not None else 0

    def failed(self, retry: RetryPolicy) -> Decision:
        """Count one more failed attempt: how long until the next one, or EXHAUSTED."""
        if self.step is None:
            self.step = PollStep(retry)
        return self.step.record(Outcome.MISSED, anyio.current_time(), rand=random.random())


def _redis_address(redis: Any) -> str:
    """``host:port`` of a Redis client, for log lines (never its password)."""
    kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


class _Backoff:
    """Waits out Redis trouble in one loop, on the library's one poll step; the worker's
    :class:`~async_jobs._outage.Outage` logs the start and the end of an outage."""

    def __init__(self, watches: DurableWatches, what: str, health: Outage) -> None:
        self.watches = watches
        self.what = what
        self.health = health
        self.step = PollStep(REDIS_BACKOFF)

    async def trouble(self, exc: Exception) -> None:
        """Wait out ``exc`` if it is a passing Redis problem; re-raise anything else."""
        if isinstance(exc, FATAL_ERRORS):
            raise exc
        if _is_nogroup(exc):
            self.watches._group_ready = False  # the group is gone (data lost): make it again
        elif not isinstance(exc, RECOVERABLE_ERRORS):
            raise exc
        now = anyio.current_time()
        decision = self.step.record(Outcome.MISSED, now, rand=random.random())
        self.health.failed(f"{type(exc).__name__}: {exc}, while {self.what}", now)
        logger.debug(
            "redis trouble while %s (%s: %s); retry %d in %.2f s",
            self.what,
            type(exc).__name__,
            exc,
            self.step.misses,
            decision.delay,
        )
        await anyio.sleep(decision.delay)

    def ok(self) -> None:
        if self.step.misses or self.health.failures:
            now = anyio.current_time()
            if self.step.misses:
                self.step.record(Outcome.CHANGED, now)
            self.health.answered(now)


class DurableWorker:
    """One worker of :meth:`DurableWatches.run`; an async context manager.

    Counters (this worker only): ``handled``, ``dead_lettered``, ``duplicates`` (entries
    dropped because another entry watches the same job), ``claimed`` (entries taken over from
    other consumers), ``lost`` (entries another worker took over from this one), and
    ``in_flight`` (watches held now).
    """

    def __init__(
        self,
        watches: DurableWatches,
        clients: Sequence[BaseClient],
        handler: Handler,
        *,
        concurrency: int,
        prefetch: int,
        poll: PollPolicy | None,
        claim_idle: float,
        keepalive: float | None,
        retry: RetryPolicy,
        block: float,
        rate_limit: float | None,
    ) -> None:
        if concurrency < 1 or prefetch < 1:
            raise ValueError("concurrency and prefetch must be >= 1")
        if not claim_idle > 0 or math.isinf(claim_idle):
            raise ValueError("claim_idle must be a positive number of seconds")
        keepalive = claim_idle / 4 if keepalive is None else keepalive
        if not 0 < keepalive < claim_idle:
            raise ValueError("keepalive must be > 0 and below claim_idle")
        if block < 0:
            raise ValueError("block must be >= 0")
        self.watches = watches
        self.clients: tuple[BaseClient, ...] = tuple(clients)
        self.handler = handler
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.poll = poll
        self.claim_idle = claim_idle
        self.keepalive = keepalive
        self.retry = retry
        self.block = block
        self.rate_limit = rate_limit
        self.handled: int = 0
        self.dead_lettered: int = 0
        self.duplicates: int = 0
        self.claimed: int = 0
        self.lost: int = 0
        self._held: dict[str, _Held] = {}
        self._room = anyio.Event()
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._to_settle: list[_Settle] = []
        self._settle_wake = anyio.Event()
        self._watcher: Watcher | None = None
        self._tg: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._secret: str | None = None
        self._reread = False  # set by the keepalive loop: read own pending entries again
        self._refresh_own = watches.redis.register_script(REFRESH_OWN_SCRIPT)
        # One outage for all of this worker's loops: a WARNING when the first runs into it.
        self._health = Outage(
            f"redis at {_redis_address(watches.redis)}", logger, quiet=REDIS_QUIET
        )

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
        self._secret = password if isinstance(password, str) else None
        async with AsyncExitStack() as stack:
            register_secret(self._secret)  # masked in every async_jobs log record
            stack.callback(unregister_secret, self._secret)
            watcher = Watcher(
                *self.clients,
                poll=self.poll,
                max_concurrency=self.concurrency,
                rate_limit=self.rate_limit,
            )
            self._watcher = await stack.enter_async_context(watcher)
            # After the loops end and before the Watcher stops: hand the watches over.
            stack.push_async_callback(self._leave)
            tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(self._read_loop)
            tg.start_soon(self._claim_loop)
            tg.start_soon(self._keepalive_loop)
            tg.start_soon(self._settle_loop)
            self._tg = tg
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
        tg, self._tg = self._tg, None
        if stack is None or tg is None:
            return
        tg.cancel_scope.cancel()
        # Not under a shield of its own: the task group's scope must be the current one when
        # it exits; it waits for its cancelled tasks by itself, and _leave shields its work.
        await stack.aclose()

    async def _leave(self) -> None:
        """Hand the watches still held over to the other workers and leave the group."""
        held, self._held = list(self._held), {}
        # Shielded: a worker is usually stopped by cancellation (its service shutting down),
        # which would end this, and the Watcher's exit after it, early.
        with anyio.move_on_after(2.0, shield=True):
            await self._hand_over(held)
            await self._forget_consumer()
        logger.info(
            "durable worker %s stopped (%d handled, %d handed over)",
            self.consumer,
            self.handled,
            len(held),
        )

    async def _hand_over(self, entry_ids: Sequence[str]) -> None:
        """Mark the entries this worker still holds as idle for ``claim_idle`` already
        (``XCLAIM ... IDLE``), so the other workers take them over at their next pass instead
        of ``claim_idle`` seconds from now (best effort: otherwise they wait that long)."""
        idle_ms = int(self.claim_idle * 1000) + 1
        try:
            for start in range(0, len(entry_ids), 1000):
                await self.redis.xclaim(
                    self.watches.stream,
                    self.watches.group,
                    self.consumer,
                    min_idle_time=0,
                    message_ids=list[Any](entry_ids[start : start + 1000]),
                    idle=idle_ms,
                    justid=True,
                )
        except redis_errors.RedisError as exc:
            logger.debug("could not hand over %d watches: %s", len(entry_ids), exc)

    async def _forget_consumer(self) -> None:
        """Leave the group's consumer list if this worker holds nothing (best effort)."""
        try:
            mine = await self.redis.xpending_range(
                self.watches.stream,
                self.watches.group,
                min="-",
                max="+",
                count=1,
                consumername=self.consumer,
            )
            if not mine:
                await self.redis.xgroup_delconsumer(
                    self.watches.stream, self.watches.group, self.consumer
                )
        except redis_errors.RedisError as exc:
            logger.debug("could not remove consumer %s: %s", self.consumer, exc)

    # -- room -------------------------------------------------------------------------------

    def _room_left(self) -> int:
        return self.prefetch - len(self._held)

    async def _wait_for_room(self) -> None:
        while self._room_left() <= 0:
            event = self._room
            await event.wait()
            if self._room is event:
                self._room = anyio.Event()

    def _release(self, held: _Held) -> None:
        if self._held.get(held.entry_id) is held:
            del self._held[held.entry_id]
            self._room.set()

    # -- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """New entries with ``XREADGROUP >``; first, and after any Redis trouble, this
        consumer's own pending entries (``0``), so nothing read is ever left behind."""
        backoff = _Backoff(self.watches, "reading watches", self._health)
        watches = self.watches
        cursor = "0"
        while True:
            await self._wait_for_room()
            if self._reread:
                self._reread, cursor = False, "0"
            count = min(100, self._room_left())
            try:
                await watches.ensure_group()
                if cursor == ">":
                    reply = await self.redis.xreadgroup(
                        watches.group,
                        self.consumer,
                        {watches.stream: ">"},
                        count=count,
                        block=max(int(self.block * 1000), 1),
                    )
                else:
                    reply = await self.redis.xreadgroup(
                        watches.group, self.consumer, {watches.stream: cursor}, count=count
                    )
                entries = _entries(reply)
                if cursor != ">":
                    cursor = entries[-1][0] if entries else ">"
                await self._accept(entries)
                backoff.ok()
            except Exception as exc:
                cursor = "0"
                await backoff.trouble(exc)

    async def _claim_loop(self) -> None:
        """Take over entries idle for ``claim_idle`` (a dead worker's) with ``XAUTOCLAIM``."""
        backoff = _Backoff(self.watches, "claiming abandoned watches", self._health)
        watches = self.watches
        idle_ms = max(int(self.claim_idle * 1000), 1)
        first = True
        while True:
            if not first:  # at start at once: a restarted fleet resumes without waiting
                await anyio.sleep(self.keepalive)
            first = False
            start = _NO_MORE
            try:
                while (room := self._room_left()) > 0:
                    await watches.ensure_group()
                    reply = await self.redis.xautoclaim(
                        watches.stream,
                        watches.group,
                        self.consumer,
                        min_idle_time=idle_ms,
                        start_id=start,
                        count=min(room, 100),
                    )
                    # Redis 6.2 claims an entry deleted while pending as a nil, without its
                    # id: it is this consumer's now, and the next re-read of its own pending
                    # entries (the keepalive sees it) acknowledges it.
                    claimed = [(_str(i), _fields(raw)) for i, raw in reply[1] if i is not None]
                    fresh = sum(1 for entry_id, _ in claimed if entry_id not in self._held)
                    if fresh:
                        self.claimed += fresh
                        logger.info("took over %d abandoned watches", fresh)
                    await self._accept(claimed)
                    start = _str(reply[0])
                    if start == _NO_MORE:
                        break
                backoff.ok()
            except Exception as exc:
                await backoff.trouble(exc)

    async def _keepalive_loop(self) -> None:
        """Reset the idle time of the entries this worker still owns
        (:data:`REFRESH_OWN_SCRIPT`), so no live worker's entry is taken over; drop the ones
        another worker took over; have the read loop read its own pending entries again when
        some are owned but not held."""
        backoff = _Backoff(self.watches, "refreshing held watches", self._health)
        orphan_ms = int(self.keepalive * 1000)
        while True:
            await anyio.sleep(self.keepalive)
            snapshot = dict(self._held)
            try:
                mine = await self._own_pending()
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
                ids = [entry_id for entry_id in snapshot if entry_id in mine]
                for start in range(0, len(ids), 1000):
                    await self._refresh_own(
                        keys=[self.watches.stream],
                        args=[self.watches.group, self.consumer, *ids[start : start + 1000]],
                    )
                backoff.ok()
            except Exception as exc:
                await backoff.trouble(exc)

    async def _own_pending(self) -> dict[str, int]:
        """Every entry the group's pending list attributes to this consumer: its id and how
        long ago (ms) it was delivered or last claimed."""
        ids: dict[str, int] = {}
        start = "-"
        while True:
            page = await self.redis.xpending_range(
                self.watches.stream,
                self.watches.group,
                min=start,
                max="+",
                count=1000,
                consumername=self.consumer,
            )
            ids.update(
                (_str(item["message_id"]), int(item["time_since_delivered"])) for item in page
            )
            if len(page) < 1000:
                return ids
            start = "(" + _str(page[-1]["message_id"])

    # -- holding ----------------------------------------------------------------------------

    async def _accept(self, entries: Sequence[tuple[str, dict[str, str]]]) -> None:
        """Hold the entries that own their job; drop the rest (deleted or duplicates)."""
        watches = self.watches
        drop: list[str] = []
        fresh: list[tuple[str, dict[str, str]]] = []
        unreadable: list[tuple[_Held, str]] = []
        for entry_id, fields in entries:
            if entry_id in self._held:
                continue
            if not fields:
                drop.append(entry_id)  # deleted from the stream meanwhile: nothing to do
            elif not all(fields.get(name) for name in ("key", "token", "watch")):
                held = _Held(entry_id, fields)
                unreadable.append((held, "unreadable entry: no watch, key or token"))
            else:
                fresh.append((entry_id, fields))
        owners: list[Any] = []
        if fresh:
            owners = await self.redis.mget([watches.job_key(f["key"]) for _, f in fresh])
        for (entry_id, fields), owner in zip(fresh, owners, strict=True):
            if entry_id in self._held:
                continue
            if owner is None or _str(owner) != fields["watch"]:
                # Another watch of this job is the live one, or this watch just ended (it
                # was handled by a worker that took it over): nothing left to do.
                drop.append(entry_id)
                self.duplicates += owner is not None
                continue
            held = _Held(entry_id, fields)
            error = self._prepare(held)
            if error is not None:
                unreadable.append((held, error))
                continue
            self._held[entry_id] = held
            self._watch(held)
        if drop:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(watches.stream, watches.group, *drop)
                pipe.xdel(watches.stream, *drop)
                await pipe.execute()
        for held, error in unreadable:
            if held.entry_id in self._held:
                continue
            self._held[held.entry_id] = held
            held.failed(self.retry)
            assert self._tg is not None
            self._tg.start_soon(self._dead_letter, held, error, None)

    def _prepare(self, held: _Held) -> str | None:
        """Decode the entry's token and context; the reason it cannot be watched, if any."""
        try:
            context = msgspec.json.decode(held.raw_context)
        except msgspec.DecodeError:
            return "unreadable entry: context is not JSON"
        held.context = context if isinstance(context, dict) else {}
        try:
            held.ref = JobRef.from_token(held.token, *self.clients)
        except ValueError as exc:
            return f"cannot watch {held.key}: {exc}"
        return None

    def _watch(self, held: _Held) -> None:
        assert self._watcher is not None and held.ref is not None
        future = self._watcher.add(held.ref)
        held.future = future
        future.add_done_callback(partial(self._on_done, held))

    def _on_done(self, held: _Held, future: Any) -> None:
        if future.cancelled() or self._held.get(held.entry_id) is not held or self._tg is None:
            return
        self._tg.start_soon(self._complete, held, future)

    def _lose(self, held: _Held) -> None:
        """Another worker took ``held`` over (this one stalled past ``claim_idle``)."""
        self._release(held)
        self.lost += 1
        logger.info("watch %s of %s was taken over by another worker", held.entry_id, held.key)
        others = any(other.key == held.key for other in self._held.values())
        if self._watcher is not None and held.ref is not None and not others:
            self._watcher.remove(held.ref)

    # -- results ----------------------------------------------------------------------------

    async def _complete(self, held: _Held, future: Any) -> None:
        if self._held.get(held.entry_id) is not held:
            return  # taken over by another worker meanwhile
        failure = future.exception()
        if failure is not None:
            decision = held.failed(self.retry)
            error = f"watch failed: {type(failure).__name__}: {failure}"
            if decision.stop is Stop.EXHAUSTED:
                await self._dead_letter(held, error, None)
                return
            logger.warning(
                "%s for %s (attempt %d of %d); watching it again",
                error,
                held.key,
                held.attempts,
                self.retry.max_attempts,
            )
            await anyio.sleep(decision.delay)
            if self._held.get(held.entry_id) is held:
                self._watch(held)
            return
        job = future.result()
        while True:
            try:
                async with self._limiter:
                    await self.handler(job, held.context)
            except Exception as exc:
                decision = held.failed(self.retry)
                error = f"{type(exc).__name__}: {exc}"
                if decision.stop is Stop.EXHAUSTED:
                    logger.error(
                        "handler failed for %s %d times, last with %s; dead-lettered",
                        held.key,
                        held.attempts,
                        error,
                    )
                    await self._dead_letter(held, error, job)
                    return
                logger.warning(
                    "handler failed for %s (attempt %d of %d): %s; retrying",
                    held.key,
                    held.attempts,
                    self.retry.max_attempts,
                    error,
                )
                await anyio.sleep(decision.delay)
                if self._held.get(held.entry_id) is not held:
                    return  # taken over meanwhile: the new holder handles it
            else:
                break
        record = {
            "key": held.key,
            "id": str(job.id),
            "state": job.job_state.value,
            "job": msgspec.json.encode(job),
            "context": held.raw_context,
            "watch": held.watch_id,
            "entry": held.entry_id,
            "consumer": self.consumer,
            "handled_at": f"{time.time():.6f}",
        }
        await self._settle(held, self.watches.results, self.watches.results_maxlen, record)
        self.handled += 1

    async def _dead_letter(self, held: _Held, error: str, job: Any) -> None:
        record = {
            "key": held.key,
            "token": held.token,
            "context": held.raw_context,
            "error": error[:4000],
            "attempts": str(held.attempts),
            "watch": held.watch_id,
            "entry": held.entry_id,
            "consumer": self.consumer,
            "failed_at": f"{time.time():.6f}",
            "job": msgspec.json.encode(job) if job is not None else b"",
        }
        await self._settle(held, self.watches.dead_letter, self.watches.dead_letter_maxlen, record)
        self.dead_lettered += 1

    async def _settle(
        self, held: _Held, stream: str, maxlen: int, record: Mapping[Any, Any]
    ) -> None:
        """Append ``record`` to ``stream``, ack and delete the entry and end the job's watch,
        all in one ``MULTI`` (batched with other settles); the entry is released after."""
        held.settling = True
        item = _Settle(held, stream, maxlen, record)
        self._to_settle.append(item)
        self._settle_wake.set()
        await item.done.wait()
        self._release(held)

    async def _settle_loop(self) -> None:
        """Settle what accumulated while the previous batch was in flight, retried through
        Redis outages."""
        backoff = _Backoff(self.watches, "acknowledging handled watches", self._health)
        while True:
            await self._settle_wake.wait()
            self._settle_wake = anyio.Event()
            while self._to_settle:
                batch = self._to_settle[:SETTLE_BATCH]
                try:
                    await self._settle_batch(batch)
                except redis_errors.WatchError:
                    continue  # a job's watch changed between WATCH and EXEC: look again
                except Exception as exc:
                    await backoff.trouble(exc)
                    continue
                backoff.ok()
                del self._to_settle[: len(batch)]
                for item in batch:
                    item.done.set()

    async def _settle_batch(self, batch: Sequence[_Settle]) -> None:
        """One ``MULTI``: the records, ``XACK`` and ``XDEL`` of the entries, and ``DEL`` of each
        job's watch string that still names the watch being settled (checked under
        ``WATCH``, so a newer watch of the same job is never ended by an older one)."""
        watches = self.watches
        keys = [watches.job_key(item.held.key) for item in batch if item.held.key]
        entry_ids = [item.held.entry_id for item in batch]
        async with self.redis.pipeline(transaction=True) as pipe:
            ended: list[str] = []
            if keys:
                await pipe.watch(*keys)
                current = dict(zip(keys, await pipe.mget(keys), strict=True))
                pipe.multi()  # type: ignore[no-untyped-call]
                for item in batch:
                    key = watches.job_key(item.held.key) if item.held.key else ""
                    value = current.get(key)
                    if value is not None and _str(value) == item.held.watch_id:
                        ended.append(key)
            for item in batch:
                pipe.xadd(item.stream, dict(item.record), maxlen=item.maxlen, approximate=True)
            pipe.xack(watches.stream, watches.group, *entry_ids)
            pipe.xdel(watches.stream, *entry_ids)
            if ended:
                pipe.delete(*ended)
            await pipe.execute()


class _Settle:
    """A watch waiting to be settled."""

    __slots__ = ("done", "held", "maxlen", "record", "stream")

    def __init__(self, held: _Held, stream: str, maxlen: int, record: Mapping[Any, Any]) -> None:
        self.held = held
        self.stream = stream
        self.maxlen = maxlen
        self.record = record
        self.done = anyio.Event()
