"""Durable watches shared by many service instances, on Redis Streams consumer groups.

Install the extra: ``pip install 'async-jobs[redis]'``; bring your own
``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` (this module never opens a
connection itself, so it never sees a URL or a password it could log)::

    dw = DurableWatches(redis)
    await dw.submit(zoo.async_operation(op_id), {"order": 42})      # any instance, any time

    async def handler(job, context):                              # must be idempotent
        await save_result(job.id, job.job_state, context["order"])

    async with dw.run(zoo, mf, handler=handler, concurrency=16):  # every instance
        await anyio.sleep_forever()

What lives in Redis (names are options of :class:`DurableWatches`; ``S`` is ``stream``,
``async_jobs:watches`` by default). Every key a script touches carries its partition's hash
tag, so the same code runs on one Redis and on a Redis Cluster (``redis.asyncio.RedisCluster``):

- ``partitions`` (default 16) partition streams ``{S:<i>}``, each with the consumer group
  ``async_jobs``: one entry per watch, fields ``watch`` (the watch id), ``key`` (the ref's
  :attr:`~async_jobs.JobRef.key`), ``token`` (its resume token: kind and ids, never a
  credential), ``context`` (the caller's JSON) and ``submitted`` (epoch seconds). A job goes
  to the partition of its group (crc32 of its listing's name: a dataset's conversions, a
  project's jobs, the Zoo operations), so one partition holds every job of a group. An entry
  is acknowledged (``XACK``) and deleted (``XDEL``) only once its handler succeeded or it was
  dead-lettered, so a stream holds exactly the unfinished watches and its group's pending
  list says which worker holds which.
- one string per watched job, ``{S:<i>}:job:<key>`` = its watch id: what makes ``submit``
  idempotent. ``submit`` runs one script per partition that keeps a job's existing watch, or
  adds its entry and its string together. The string is deleted when the watch ends, by the
  script that acks the entry, only if it still names that watch.
- ``{S:<i>}:lease``: the consumer name of the worker holding partition ``i``, with a time to
  live of ``claim_idle``. Every ``min(keepalive, 1 s)`` each worker records its heartbeat in
  the sorted set ``S:workers`` (in the Redis server's time; workers silent for ``claim_idle``
  are dropped), renews its leases, then gives up the partitions above its fair share of the
  live workers (``partitions // workers``, one more for the first ``partitions % workers``
  by name) or takes free ones up to it, preferring partitions by rendezvous hashing so that a
  change of the fleet moves few. Only a partition's holder reads its stream and lists its
  groups, so each group is listed once per interval whatever the fleet size. ``S:partitions``
  records the partition count; a process passing another count gets a ``ValueError``.
- the results stream (``async_jobs:results``, trimmed with ``MAXLEN ~``): one record per
  handled job: ``key``, ``id``, ``state``, ``job`` (the terminal job as JSON), ``context``,
  ``watch``, ``entry``, ``partition``, ``consumer``, ``handled_at``. It is written just before
  the entry is acknowledged (they live in different cluster slots): a worker that dies between
  the two leaves a record of a watch that is handled again.
- the dead-letter stream (``async_jobs:dead``): watches given up after ``retry.max_attempts``
  tries (a handler that keeps raising, a job whose GET ends its wait with 400/401/403/404 on
  every try; an unreadable entry at once; a 429, 5xx or lost connection only costs a poll)
  or delivered more than ``max_deliveries`` times without being settled:
  ``key``, ``token``, ``context``, ``error``, ``attempts``, ``watch``, ``entry``,
  ``partition``, ``consumer``, ``failed_at`` and ``job`` (the terminal job as JSON, or empty).

Delivery is **at least once**: a worker that dies after its handler ran but before the ack, or
one that stalls longer than ``claim_idle`` while another takes its entries over, means a
handler runs twice for one job. Handlers must be idempotent: dedupe on ``job.id`` (unique per
API; the results stream also carries the ref's ``key``, unique across APIs).

A live worker keeps its entries from being taken over: every ``keepalive`` seconds it claims
the entries it still owns again (``XCLAIM ... JUSTID``, in a script that checks the owner
first), which resets their idle time; only entries idle for ``claim_idle`` seconds, those of a
dead or stalled worker, or handed over by a worker that gave the partition up, are taken
over with ``XAUTOCLAIM`` (at once when a worker takes a partition). After a takeover pass (every
``claim_idle / 2`` seconds) a worker removes from the group (``XGROUP DELCONSUMER``) the other
consumers that hold no pending entry and were idle longer than ``claim_idle + keepalive``: dead
workers whose entries were taken over (checked and removed in one script, so no consumer loses
an entry given to it meanwhile; one INFO line each). A live worker without work resets its idle
time at the same pace (``XREADGROUP`` of its own pending entries after the last possible id: it
reads nothing, but a blocking read that times out does not count as activity), so it is never
removed; one removed all the same would be created again by its next read. An entry delivered
more than ``max_deliveries`` times (``XPENDING``'s times-delivered: each read and each
``XAUTOCLAIM`` counts, but a clean stop's hand-over takes one off, so a rolling deploy costs
nothing) is dead-lettered when read or taken over, with the number of deliveries as its
error: a handler that crashes its process, or a worker killed each time it holds it, ends
there instead of crashing the fleet forever. An entry found taken over is dropped by its
former holder; one found delivered to this worker but never received (a reply lost with its
connection, the command retried by the client) is read again. A worker that stops cleanly marks
the entries it still holds as idle (``XCLAIM ... IDLE``) and releases its leases, so the
workers taking its partitions take the entries over at once; a worker giving a partition up
on a rebalance does the same for it (a watch whose job was found terminal stays with it until
settled). Lost Redis connections (a restart, a failover, a cluster master down; redis-py's
asyncio client sometimes lets a lost connection out as an ``AttributeError`` or
``TypeError`` from its transport, waited out too) are retried with backoff in every loop;
nothing is acked before the handler succeeded. Scripts are sent with ``EVAL``: a restarted
node has lost its script cache.

The package's modules, along its seams: ``_records`` (the stream records as msgspec Structs),
``_replies`` (Redis replies as plain Python), ``_watches`` (:class:`DurableWatches`: submit,
status), ``_partitions`` (key names, fair shares, leases), ``_worker``
(:class:`DurableWorker`: lifecycle, the lease loop, and per partition the read, claim and
keepalive loops),
``_consumer`` (the stream commands of one consumer), ``_held`` (the watches a worker holds),
``_settle`` (handler calls, dead letters, the batched settle loop) and ``_backoff`` (waiting
out Redis trouble on the shared poll step).
"""

from __future__ import annotations

# Every name of the module this package was (``X as X``: re-exported on purpose).
from ._backoff import FATAL_ERRORS as FATAL_ERRORS
from ._backoff import RECOVERABLE_ERRORS as RECOVERABLE_ERRORS
from ._backoff import REDIS_BACKOFF as REDIS_BACKOFF
from ._backoff import REDIS_QUIET as REDIS_QUIET
from ._backoff import logger as logger
from ._consumer import REFRESH_OWN_SCRIPT as REFRESH_OWN_SCRIPT
from ._partitions import DEFAULT_PARTITIONS as DEFAULT_PARTITIONS
from ._records import MAX_CONTEXT_BYTES as MAX_CONTEXT_BYTES
from ._replies import _entries as _entries
from ._replies import _fields as _fields
from ._replies import _is_nogroup as _is_nogroup
from ._replies import _redis_address as _redis_address
from ._replies import _str as _str
from ._settle import SETTLE_BATCH as SETTLE_BATCH
from ._settle import Handler
from ._watches import DEFAULT_RETRY as DEFAULT_RETRY
from ._watches import DurableStatus, DurableWatches, PartitionStatus
from ._watches import default_consumer as default_consumer
from ._worker import DurableWorker

__all__ = ["DurableStatus", "DurableWatches", "DurableWorker", "Handler", "PartitionStatus"]
