"""How watches are spread over partitions and partitions over live workers: the key names
(hash-tagged, so that what one script touches lives in one Redis Cluster slot), which
partition a job goes to, each worker's fair share, and the leases that give each partition to
one live worker.

A partition ``i`` of the watches stream ``S`` is the stream ``{S:i}``; its jobs' watch strings
are ``{S:i}:job:<key>`` and its lease ``{S:i}:lease`` (the holder's consumer name, with a
time to live). The live workers are the sorted set ``S:workers`` (scored by their last
heartbeat, in the Redis server's time), and ``S:partitions`` records the number of
partitions the stream was made with.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._replies import _str

if TYPE_CHECKING:
    from ._replies import RedisClient

#: Default number of partitions: with up to 16 workers each holds at least one.
DEFAULT_PARTITIONS = 16

#: Take the lease KEYS[1] for ARGV[1] for ARGV[2] ms if it is free or already ARGV[1]'s
#: (renewing it); 1 if it is ARGV[1]'s now, 0 if another worker holds it.
LEASE_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] or not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
#: Give the lease KEYS[1] up if ARGV[1] holds it.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"""
#: Record that worker ARGV[1] is alive now (the server's time, so that hosts' clocks do not
#: matter), forget the workers silent for more than ARGV[2] ms, and return the live ones.
HEARTBEAT_SCRIPT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
#: The live workers (ZRANGE ... WITHSCORES) and the server's time, in ms.
WORKERS_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
"""


class PartitionKeys:
    """The key names of one watches stream ``stream`` split into ``count`` partitions."""

    def __init__(self, stream: str, count: int) -> None:
        if count < 1:
            raise ValueError("partitions must be >= 1")
        self.stream = stream
        self.count = count
        #: The live workers' sorted set.
        self.workers = f"{stream}:workers"
        #: The number of partitions the stream was made with.
        self.meta = f"{stream}:partitions"

    def stream_of(self, partition: int) -> str:
        """The stream of ``partition``; its hash tag is the whole name."""
        return f"{{{self.stream}:{partition}}}"

    def job_key(self, partition: int, key: str) -> str:
        """The string holding the watch id of the job whose ref key is ``key``."""
        return f"{self.stream_of(partition)}:job:{key}"

    def lease(self, partition: int) -> str:
        """The lease of ``partition``: its holder's consumer name."""
        return f"{self.stream_of(partition)}:lease"

    def partition_of(self, group: str) -> int:
        """The partition of a job in ``group`` (its listing's name, or its own key for a job
        polled alone): the same in every process."""
        return zlib.crc32(group.encode()) % self.count


def fair_share(worker: str, live: Sequence[str], partitions: int) -> int:
    """How many partitions ``worker`` should hold when ``live`` (sorted) are the live workers:
    ``partitions // len(live)``, one more for the first ``partitions % len(live)`` of them, so
    that the shares add up to ``partitions`` and differ by at most one."""
    workers = sorted(set(live) | {worker})
    share, extra = divmod(partitions, len(workers))
    return share + (1 if workers.index(worker) < extra else 0)


def preference(worker: str, partition: int) -> int:
    """How much ``worker`` prefers ``partition`` (rendezvous hashing): workers take the free
    partitions they prefer most and give up those they prefer least, so that a change of the
    fleet moves few partitions."""
    return zlib.crc32(f"{worker}/{partition}".encode())


class Leases:
    """The lease commands of one worker (``consumer``) on ``keys``, lasting ``ttl`` seconds."""

    def __init__(self, redis: RedisClient, keys: PartitionKeys, consumer: str, ttl: float) -> None:
        self.redis = redis
        self.keys = keys
        self.consumer = consumer
        self.ttl_ms = max(int(ttl * 1000), 1)

    async def heartbeat(self) -> list[str]:
        """Show this worker alive; the live workers (itself included), sorted."""
        live = await self.redis.eval(
            HEARTBEAT_SCRIPT, 1, self.keys.workers, self.consumer, self.ttl_ms
        )
        return sorted(_str(name) for name in live)

    async def leave(self) -> None:
        """No longer count this worker as live."""
        await self.redis.zrem(self.keys.workers, self.consumer)

    async def take(self, partitions: Sequence[int]) -> set[int]:
        """Take or renew the leases of ``partitions``; those this worker holds now."""
        if not partitions:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                key = self.keys.lease(partition)
                pipe.eval(LEASE_SCRIPT, 1, key, self.consumer, self.ttl_ms)
            replies = await pipe.execute()
        return {p for p, held in zip(partitions, replies, strict=True) if int(held)}

    async def free(self, partitions: Sequence[int]) -> list[int]:
        """Those of ``partitions`` no other worker holds (a lease still this worker's, of a
        partition it stopped reading during Redis trouble, counts as free)."""
        if not partitions:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                pipe.get(self.keys.lease(partition))
            replies = await pipe.execute()
        return [
            p
            for p, owner in zip(partitions, replies, strict=True)
            if owner is None or _str(owner) == self.consumer
        ]

    async def release(self, partitions: Sequence[int]) -> None:
        """Give up the leases of ``partitions`` (those this worker still holds)."""
        if not partitions:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in partitions:
                pipe.eval(RELEASE_SCRIPT, 1, self.keys.lease(partition), self.consumer)
            await pipe.execute()


async def worker_ages(redis: RedisClient, keys: PartitionKeys) -> dict[str, float]:
    """The workers counted as live (until one silent for a lease's time to live is pruned by
    another's heartbeat): name -> seconds since their last heartbeat."""
    now, flat = await redis.eval(WORKERS_SCRIPT, 1, keys.workers)
    pairs: list[Any] = list(flat)
    return {
        _str(name): round(max((int(now) - float(score)) / 1000, 0.0), 3)
        for name, score in zip(pairs[::2], pairs[1::2], strict=True)
    }
