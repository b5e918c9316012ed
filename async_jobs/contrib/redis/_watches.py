"""The submitting side of durable watches: :class:`DurableWatches` (the stream, its group,
``submit``, ``status``) and the worker it runs."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from ..._client import ApiClient
from ..._policy import PollSchedule, RetryPolicy
from ..._poll import JobRef
from ._records import WatchEntry, encode_context
from ._replies import _is_nogroup, _str
from ._settle import Handler
from ._worker import DurableWorker

#: Default handler retry schedule: 5 tries, 1 s, 2 s, 4 s, ... (full jitter) up to 60 s.
DEFAULT_RETRY = RetryPolicy(max_attempts=5, initial=1.0, multiplier=2.0, maximum=60.0)
_SUBMIT_CHUNK = 500


def default_consumer() -> str:
    """``<hostname>-<pid>-<random>``: unique per process and per worker."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


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
    #: Consumers in the group (``XINFO CONSUMERS``): live workers, and dead ones until a
    #: live worker removed them (once their entries were taken over).
    consumers: int = 0
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
            items.append((ref.key, ref.to_token(), encode_context(context)))
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
                    entry = WatchEntry(
                        watch=watch_id, key=key, token=token, context=ctx, submitted=now
                    )
                    pipe.xadd(self.stream, entry.encode())  # type: ignore[arg-type]
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
        *clients: ApiClient,
        handler: Handler,
        concurrency: int = 16,
        prefetch: int = 10_000,
        poll: PollSchedule | None = None,
        claim_idle: float = 60.0,
        keepalive: float | None = None,
        retry: RetryPolicy | None = None,
        block: float = 1.0,
        rate_limit: float | None = None,
        max_deliveries: int = 10,
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
        it). ``max_deliveries``: a watch delivered more than this many times without being
        settled (read, or taken over from a worker that died holding it: a handler that
        crashes its process, or a worker killed each time) goes to the dead-letter stream
        instead of to its handler once more. Leaving the block stops the worker and hands the
        watches it held over to the others.
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
            max_deliveries=max_deliveries,
        )

    async def status(self) -> DurableStatus:
        """Pending watches, entries in flight per consumer, dead-lettered and result counts,
        consumers in the group."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.stream)
            pipe.xlen(self.dead_letter)
            pipe.xlen(self.results)
            length, dead, results = await pipe.execute()
        try:
            summary = await self.redis.xpending(self.stream, self.group)
            consumers = len(await self.redis.xinfo_consumers(self.stream, self.group))
        except redis_errors.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            summary, consumers = {}, 0
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
            consumers=consumers,
        )
