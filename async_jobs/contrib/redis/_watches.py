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

from ..._client import ApiClient
from ..._policy import PollSchedule, RetryPolicy
from ..._poll import JobRef
from ._partitions import DEFAULT_PARTITIONS, PartitionKeys, worker_ages
from ._records import WatchEntry, encode_context
from ._replies import RedisClient, _is_nogroup, _str
from ._settle import Handler
from ._worker import DurableWorker

#: Default handler retry schedule: 5 tries, 1 s, 2 s, 4 s, ... (full jitter) up to 60 s.
DEFAULT_RETRY = RetryPolicy(max_attempts=5, initial=1.0, multiplier=2.0, maximum=60.0)
_SUBMIT_CHUNK = 500
#: Watch the jobs of one partition: KEYS[1] is its stream, KEYS[2..] the jobs' watch strings;
#: ARGV per job: a new watch id, the number of entry fields and values, then those. A job
#: already watched keeps its watch; the others get an entry and their watch string together.
#: The watch ids, in order.
SUBMIT_SCRIPT = """
redis.replicate_commands()
local out, a = {}, 1
for i = 2, #KEYS do
  local watch, n = ARGV[a], tonumber(ARGV[a + 1])
  local current = redis.call('GET', KEYS[i])
  if current then
    out[#out + 1] = current
  else
    redis.call('XADD', KEYS[1], '*', unpack(ARGV, a + 2, a + 1 + n))
    redis.call('SET', KEYS[i], watch)
    out[#out + 1] = watch
  end
  a = a + 2 + n
end
return out
"""


def default_consumer() -> str:
    """``<hostname>-<pid>-<random>``: unique per process and per worker."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class PartitionStatus:
    """One partition in :attr:`DurableStatus.partitions`."""

    #: Its number, ``0 <= index < partitions``.
    index: int
    #: Its stream (``{<stream>:<index>}``).
    stream: str
    #: The worker holding its lease (the only one reading it and listing its groups), or
    #: None while no live worker does.
    owner: str | None
    #: Watches in it, submitted and not yet handled or dead-lettered.
    pending: int
    #: Of those, the ones no worker has read yet (its lag).
    undelivered: int
    #: Consumer name -> entries of it that consumer holds.
    in_flight: dict[str, int] = field(default_factory=dict)


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
    #: Consumers in the partitions' groups (``XINFO CONSUMERS``, each name once): live
    #: workers, and dead ones until a live worker removed them (once their entries were
    #: taken over).
    consumers: int = 0
    #: Records in the dead-letter stream.
    dead_lettered: int = 0
    #: Records in the (trimmed) results stream.
    results: int = 0
    #: Each partition: its owner, its watches, its lag and who holds its entries (left out
    #: of the repr, which would be a screen long; see :meth:`owned`).
    partitions: tuple[PartitionStatus, ...] = field(default=(), repr=False)
    #: Live workers -> seconds since their last heartbeat.
    workers: dict[str, float] = field(default_factory=dict)

    def owned(self) -> dict[str, list[int]]:
        """Worker -> the partitions whose lease it holds."""
        owned: dict[str, list[int]] = {}
        for partition in self.partitions:
            if partition.owner is not None:
                owned.setdefault(partition.owner, []).append(partition.index)
        return owned


class DurableWatches:
    """Watches kept in Redis streams, shared by every instance of a service.

    ``redis`` is the caller's ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``
    (never closed here). ``consumer`` names this instance's worker in the consumer groups
    (default ``<hostname>-<pid>-<random>``; pass a stable name, such as a pod name, to resume
    its own entries at once after a restart). ``partitions``: how many streams the watches are
    spread over (by group: every job of one dataset or project goes to the same one), each
    read by one live worker at a time; every process of a fleet must pass the same number
    (a mismatch raises ``ValueError``). See the module docstring for what is stored where.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        stream: str = "async_jobs:watches",
        group: str = "async_jobs",
        consumer: str | None = None,
        results: str = "async_jobs:results",
        results_maxlen: int = 100_000,
        dead_letter: str = "async_jobs:dead",
        dead_letter_maxlen: int = 100_000,
        partitions: int = DEFAULT_PARTITIONS,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer: str = consumer or default_consumer()
        self.results = results
        self.results_maxlen = results_maxlen
        self.dead_letter = dead_letter
        self.dead_letter_maxlen = dead_letter_maxlen
        #: The key names of the partitions (see :mod:`._partitions`).
        self.keys: PartitionKeys = PartitionKeys(stream, partitions)
        self._ready: set[int] = set()
        self._checked = False

    @property
    def partitions(self) -> int:
        """How many partitions the watches are spread over."""
        return self.keys.count

    def partition_of(self, ref: JobRef[Any]) -> int:
        """The partition ``ref``'s watch goes to: that of its group (its listing), so that
        one worker lists each group, or of the job itself if it is polled alone."""
        return self.keys.partition_of(ref.listing.name if ref.listing is not None else ref.key)

    def job_key(self, ref: JobRef[Any]) -> str:
        """The Redis key holding the watch id of ``ref``'s job while it is watched."""
        return self.keys.job_key(self.partition_of(ref), ref.key)

    def __repr__(self) -> str:
        return (
            f"DurableWatches(stream={self.stream!r}, group={self.group!r}, "
            f"consumer={self.consumer!r}, partitions={self.partitions})"
        )

    async def ensure_group(self, partition: int | None = None) -> None:
        """Create the stream of ``partition`` (default: every one) and its consumer group if
        missing (from the stream's start, so entries submitted before any worker ran are
        delivered too). The first call checks the partition count against the one the
        streams were made with."""
        if not self._checked:
            await self._check_partitions()
        todo = range(self.partitions) if partition is None else (partition,)
        for index in todo:
            if index in self._ready:
                continue
            try:
                await self.redis.xgroup_create(
                    self.keys.stream_of(index), self.group, id="0", mkstream=True
                )
            except redis_errors.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._ready.add(index)

    def forget_groups(self) -> None:
        """The groups may be gone (Redis lost its data): check them again before use."""
        self._ready.clear()
        self._checked = False

    async def stored_partitions(self) -> int | None:
        """The number of partitions the streams were made with, None if none were made yet."""
        made = await self.redis.get(self.keys.meta)
        return None if made is None else int(made)

    async def _check_partitions(self) -> None:
        meta = self.keys.meta
        await self.redis.set(meta, self.partitions, nx=True)
        made = int(await self.redis.get(meta) or self.partitions)
        if made != self.partitions:
            raise ValueError(
                f"the durable watches on {self.stream!r} were made with {made} partitions, "
                f"not {self.partitions}: pass partitions={made}"
            )
        self._checked = True

    async def submit(self, ref: JobRef[Any], context: Mapping[str, Any] | None = None) -> str:
        """Watch ``ref`` durably; ``context`` (a small JSON-serialisable dict, at most 64 KiB)
        is handed to the handler with the terminal job. Returns the watch id: the existing
        one if the job is already watched (submitting a job twice while it is watched makes
        one watch; once it was handled or dead-lettered, a new submit watches it again)."""
        return (await self.submit_many([(ref, context)]))[0]

    async def submit_many(
        self, jobs: Iterable[JobRef[Any] | tuple[JobRef[Any], Mapping[str, Any] | None]]
    ) -> list[str]:
        """:meth:`submit` each ref (or ``(ref, context)`` pair), one script per partition and
        chunk; the watch ids in the same order."""
        items: list[tuple[int, str, str, str]] = []
        for job in jobs:
            ref, context = job if isinstance(job, tuple) else (job, None)
            items.append((self.partition_of(ref), ref.key, ref.to_token(), encode_context(context)))
        first: dict[str, tuple[int, str, str, str]] = {}
        for item in items:
            first.setdefault(item[1], item)  # one watch per job: the first context wins
        by_partition: dict[int, list[tuple[int, str, str, str]]] = {}
        for item in first.values():
            by_partition.setdefault(item[0], []).append(item)
        owners: dict[str, str] = {}
        for partition, chunk_items in sorted(by_partition.items()):
            await self.ensure_group(partition)
            for start in range(0, len(chunk_items), _SUBMIT_CHUNK):
                chunk = chunk_items[start : start + _SUBMIT_CHUNK]
                owners.update(await self._submit_chunk(partition, chunk))
        return [owners[key] for _, key, _, _ in items]

    async def _submit_chunk(
        self, partition: int, chunk: Sequence[tuple[int, str, str, str]]
    ) -> dict[str, str]:
        """One :data:`SUBMIT_SCRIPT`: a job already watched keeps its watch, the others get a
        new entry and watch string together."""
        now = f"{time.time():.6f}"
        args: list[str | bytes] = []
        for _, key, token, ctx in chunk:
            watch = secrets.token_hex(8)
            entry = WatchEntry(watch=watch, key=key, token=token, context=ctx, submitted=now)
            fields = [part for pair in entry.encode().items() for part in pair]
            args += [watch, str(len(fields)), *fields]
        keys = [self.keys.stream_of(partition)]
        keys += [self.keys.job_key(partition, key) for _, key, _, _ in chunk]
        watch_ids = await self.redis.eval(SUBMIT_SCRIPT, len(keys), *keys, *args)
        return {key: _str(w) for (_, key, _, _), w in zip(chunk, watch_ids, strict=True)}

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
        """Pending watches and lag per partition and in all, each partition's owner, entries
        in flight per consumer, live workers, dead-lettered and result counts."""
        keys = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.dead_letter)
            pipe.xlen(self.results)
            for index in range(self.partitions):
                pipe.xlen(keys.stream_of(index))
                pipe.xpending(keys.stream_of(index), self.group)
                pipe.xinfo_consumers(keys.stream_of(index), self.group)
                pipe.get(keys.lease(index))
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and not _is_no_stream(reply):
                raise reply
        dead, results = (int(reply) for reply in replies[:2])
        parts: list[PartitionStatus] = []
        names: set[str] = set()
        in_flight: dict[str, int] = {}
        for index in range(self.partitions):
            length, summary, consumers, owner = replies[2 + 4 * index : 6 + 4 * index]
            length = 0 if isinstance(length, Exception) else int(length)
            summary = {} if isinstance(summary, Exception) else summary
            if not isinstance(consumers, Exception):
                names.update(_str(consumer["name"]) for consumer in consumers)
            held = {
                _str(consumer["name"]): int(consumer["pending"])
                for consumer in summary.get("consumers") or ()
            }
            for name, count in held.items():
                in_flight[name] = in_flight.get(name, 0) + count
            delivered = int(summary.get("pending") or 0)
            parts.append(
                PartitionStatus(
                    index=index,
                    stream=keys.stream_of(index),
                    owner=None if owner is None else _str(owner),
                    pending=length,
                    undelivered=max(length - delivered, 0),
                    in_flight=held,
                )
            )
        return DurableStatus(
            pending=sum(p.pending for p in parts),
            undelivered=sum(p.undelivered for p in parts),
            in_flight=in_flight,
            dead_lettered=dead,
            results=results,
            consumers=len(names),
            partitions=tuple(parts),
            workers=await worker_ages(self.redis, keys),
        )


def _is_no_stream(exc: Exception) -> bool:
    """Whether ``exc`` says a partition's stream or group does not exist (yet)."""
    return _is_nogroup(exc) or "no such key" in str(exc).lower()
