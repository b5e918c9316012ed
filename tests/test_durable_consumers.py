"""The consumer group of a fleet stays clean and poison watches end: a SIGKILLed worker's
consumer is removed once a survivor took its entries over (a live worker without work never
is), and a watch whose handler kills its worker every time goes to the dead-letter stream
after ``max_deliveries`` deliveries. Real redis-server, real worker processes
(``tests/redis_worker.py``) where a process must die."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio.lowlevel
import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer, RedisServer

from ._redis import JOBS, WATCHES, clients, until
from .test_durable_fleet import WorkerProcess

pytestmark = pytest.mark.anyio

STREAM, GROUP = WATCHES, "async_jobs"
POLL = aj.PollPolicy(initial=0.05, multiplier=1.5, maximum=0.2, jitter=0.2)
#: Small enough that a takeover, and the removal of a dead consumer after it, take a second.
CLAIM_IDLE, KEEPALIVE = 0.4, 0.1
#: Fake seconds the jobs stay queued: the clock moves on by this once the test is ready.
HOLD = 3600.0


async def consumers(redis: Any) -> set[str]:
    return {c["name"].decode() for c in await redis.xinfo_consumers(STREAM, GROUP)}


def removed_names(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage().split()[2]
        for r in caplog.records
        if r.name == "async_jobs.redis" and r.getMessage().startswith("removed consumer ")
    ]


async def test_a_killed_workers_consumer_is_removed_once_taken_over_and_live_ones_stay(
    server: FakeApiServer,
    redis_server: RedisServer,
    redis_client: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from async_jobs.contrib.redis import DurableWatches

    caplog.set_level(logging.INFO, logger="async_jobs.redis")
    ops = [
        server.zoo.add_operation(timeline=[("queued", HOLD), ("completed", None)])
        for _ in range(20)
    ]
    handled: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled.append(job.id)

    dw = DurableWatches(redis_client, partitions=1)
    zoo, _ = clients(server)
    args = ("--claim-idle", str(CLAIM_IDLE), "--partitions", "1")
    doomed = WorkerProcess("w0", redis_server, server.url, tmp_path, *args)
    try:
        await until(lambda: _ready(doomed), 60)
        async with zoo:
            await dw.submit_many(zoo.async_operation(op.id) for op in ops)

            async def w0_holds_all() -> bool:
                return (await dw.status()).in_flight.get("w0", 0) == len(ops)

            await until(w0_holds_all, 30)
            doomed.kill()
            assert "w0" in await consumers(redis_client)
            # The survivor, alone holding the partition's lease, has room for half of w0's
            # entries: the other half stays w0's for a while. The understudy, live too, waits
            # for a partition (its fair share of one, with the survivor sorted first, is none):
            # it never joins the group nor takes anything over.
            options: dict[str, Any] = {
                "handler": handler,
                "poll": POLL,
                "claim_idle": CLAIM_IDLE,
                "keepalive": KEEPALIVE,
                "block": 0.2,
                "prefetch": len(ops) // 2,
            }
            survivor = DurableWatches(redis_client, partitions=1, consumer="survivor").run(
                zoo, **options
            )
            understudy = DurableWatches(redis_client, partitions=1, consumer="understudy").run(
                zoo, **options
            )
            async with survivor, understudy:
                await until(lambda: _claimed(survivor, understudy, len(ops) // 2), 30)
                # A dead consumer still holding entries stays (removing it would drop them),
                # however long it has been idle: once a pass removed a fresh ghost, w0 is
                # still there with its half.
                await ghost_removed(redis_client, "ghost0")
                assert "w0" in await consumers(redis_client)
                assert (await dw.status()).in_flight["w0"] == len(ops) // 2

                server.clock.advance(HOLD)
                await until(lambda: _done(handled, len(ops)), 30)

                async def w0_gone() -> bool:
                    return "w0" not in await consumers(redis_client)

                await until(w0_gone, 30)
                # Removed once nothing was left to it: its entries were all taken over.
                assert (survivor.claimed, understudy.claimed) == (len(ops), 0)
                assert removed_names(caplog) == ["ghost0", "w0"]
                assert (survivor.consumers_removed, understudy.consumers_removed) == (2, 0)

                # The survivor now holds nothing. Each dead consumer made next is removed by a
                # takeover pass, and the live holder, idle but reading, never is.
                for round in range(1, 4):
                    await ghost_removed(redis_client, f"ghost{round}")
                    assert await consumers(redis_client) == {"survivor"}
                status = await dw.status()
                assert (status.pending, status.in_flight, status.consumers) == (0, {}, 1)
                assert status.owned() == {"survivor": [0]}
                assert (survivor.partitions, understudy.partitions) == ([0], [])
            names = removed_names(caplog)
            assert sorted(names) == ["ghost0", "ghost1", "ghost2", "ghost3", "w0"]
    finally:
        doomed.kill()
    assert sorted(handled) == sorted(op.id for op in ops)


async def test_a_watch_whose_handler_kills_its_worker_is_dead_lettered_after_max_deliveries(
    server: FakeApiServer, redis_server: RedisServer, redis_client: Any, tmp_path: Path
) -> None:
    from async_jobs.contrib.redis import DurableWatches

    max_deliveries = 3
    poison = server.zoo.add_operation(timeline=[("completed", None)])
    fine = server.zoo.add_operation(timeline=[("completed", None)])
    dw = DurableWatches(redis_client, partitions=1)
    zoo, _ = clients(server)
    async with zoo:
        await dw.submit(zoo.async_operation(poison.id), {"id": poison.id, "crash": True})
    args = ("--claim-idle", str(CLAIM_IDLE), "--max-deliveries", str(max_deliveries))
    args += ("--partitions", "1")
    workers: list[WorkerProcess] = []
    try:
        # One worker at a time: each reads or takes the poison watch over and dies of it,
        # until one finds it delivered more than max_deliveries times.
        while not await redis_client.xlen("async_jobs:dead"):
            assert len(workers) <= max_deliveries + 1, "never dead-lettered"
            worker = WorkerProcess(f"w{len(workers)}", redis_server, server.url, tmp_path, *args)
            workers.append(worker)

            async def died_or_dead_lettered(worker: WorkerProcess = worker) -> bool:
                if worker.proc.poll() is not None:
                    return True
                return bool(await redis_client.xlen("async_jobs:dead"))

            await until(died_or_dead_lettered, 60, every=0.05)
        last = workers[-1]
        assert last.proc.poll() is None  # the one that dead-lettered it lives on
        async with zoo:
            await dw.submit(zoo.async_operation(fine.id), {"id": fine.id})
        await until(lambda: _hashed(redis_client, fine.id), 30)
        stats = last.stop()
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.kill()
    crashes = int(await redis_client.hget("t:crashes", poison.id) or 0)
    assert crashes == max_deliveries
    assert len(workers) == max_deliveries + 1
    assert stats["dead_lettered"] == 1
    [(_, fields)] = await redis_client.xrange("async_jobs:dead")
    record = {k.decode(): v.decode() for k, v in fields.items()}
    assert record["key"] == zoo.async_operation(poison.id).key
    assert record["consumer"] == last.name
    assert record["error"].startswith(
        f"delivered {max_deliveries + 1} times without being settled "
        f"(max_deliveries={max_deliveries}): a handler that crashes its process"
    )
    assert '"crash":true' in record["context"]
    assert await redis_client.hget("t:count", poison.id) is None  # never handled
    assert await redis_client.hget("t:count", fine.id) == b"1"
    status = await dw.status()
    assert (status.pending, status.dead_lettered) == (0, 1)
    assert await redis_client.keys(JOBS) == []


async def ghost_removed(redis: Any, ghost: str) -> None:
    """Make a consumer that holds nothing, as a dead worker leaves one; wait until a takeover
    pass removed it."""
    await redis.xgroup_createconsumer(STREAM, GROUP, ghost)

    async def gone() -> bool:
        return ghost not in await consumers(redis)

    await until(gone, 30)


async def _claimed(a: Any, b: Any, count: int) -> bool:
    return bool(a.claimed + b.claimed >= count)


async def _ready(worker: WorkerProcess) -> bool:
    return worker.ready()


async def _done(handled: list[str], count: int) -> bool:
    return len(handled) >= count


async def _hashed(redis: Any, job_id: str) -> bool:
    return bool(await redis.hexists("t:count", job_id))


async def test_max_deliveries_must_be_positive(redis_client: Any, server: FakeApiServer) -> None:
    from async_jobs.contrib.redis import DurableWatches

    zoo, _ = clients(server)
    async with zoo:
        with pytest.raises(ValueError, match="max_deliveries"):
            DurableWatches(redis_client, partitions=1).run(zoo, handler=_done, max_deliveries=0)
    await anyio.lowlevel.checkpoint()


async def test_clean_stops_do_not_count_against_max_deliveries(
    server: FakeApiServer, redis_server: RedisServer, redis_client: Any
) -> None:
    """A rolling deploy: four workers in turn hold a long watch and stop cleanly. With
    ``max_deliveries=2`` the watch is still watched by the fourth, and handled once its job
    ends: a hand-over costs nothing, only a crash does."""
    from async_jobs.contrib.redis import DurableWatches

    op = server.zoo.add_operation(timeline=[("in_progress", HOLD), ("completed", None)])
    handled: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled.append(job.status)

    zoo, _ = clients(server)
    options: dict[str, Any] = dict(
        handler=handler, poll=POLL, claim_idle=CLAIM_IDLE, keepalive=KEEPALIVE, max_deliveries=2
    )
    async with zoo:
        dw = DurableWatches(redis_client, partitions=1)
        await dw.submit(zoo.async_operation(op.id))
        for turn in range(4):
            async with DurableWatches(redis_client, partitions=1, consumer=f"w{turn}").run(
                zoo, **options
            ) as worker:
                await until(lambda w=worker: _holds(w), 10)
                if turn == 3:
                    server.clock.advance(HOLD)
                    await until(lambda: _true(bool(handled)), 10)
        status = await dw.status()
    assert handled == ["completed"]
    assert status.dead_lettered == 0


async def _holds(worker: Any) -> bool:
    return bool(worker.in_flight)


async def _true(value: bool) -> bool:
    return value
