"""async_jobs.contrib.redis at the exact points where Redis trouble and races bite, against a
real redis-server (through a TCP proxy where the test must act between a command and its
reply): a settle that must not end a newer watch, submits racing for one job or retried
after a lost reply, a read or settle whose reply was lost, a group that vanished, and the
trimming of the results streams."""

from __future__ import annotations

import logging
import time
from collections import Counter
from functools import partial
from typing import Any

import anyio
import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer, RedisServer

from ._redis import JOBS, WATCHES, RedisProxy, clients, redis_module, restart_empty, sent, until

pytestmark = pytest.mark.anyio

POLL = aj.PollPolicy(initial=0.05, multiplier=1.5, maximum=0.2, jitter=0.2)
#: Long enough that no test here can pass through a takeover or a keepalive by accident.
NEVER = 60.0
STREAM, GROUP = WATCHES, "async_jobs"


def durable(redis: Any, **options: Any) -> Any:
    from async_jobs.contrib.redis import DurableWatches

    return DurableWatches(redis, **{"partitions": 1, **options})


async def records(redis: Any, stream: str = "async_jobs:results") -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await redis.xrange(stream)
    ]


async def reached(value: Any, target: int) -> bool:
    return bool(value() >= target)


def no_retries() -> dict[str, Any]:
    """Connection options of a client that surfaces every connection error at once."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return {"retry": Retry(NoBackoff(), 0)}


class Gated:
    """A handler whose n-th call (from 0) waits for ``gates[n]``; records each call's context."""

    def __init__(self, calls: int) -> None:
        self.gates = [anyio.Event() for _ in range(calls)]
        self.contexts: list[dict[str, Any]] = []

    async def __call__(self, job: Any, context: dict[str, Any]) -> None:
        index = len(self.contexts)
        self.contexts.append(context)
        await self.gates[index].wait()


async def test_settling_an_old_watch_leaves_the_newer_watch_of_its_job(
    server: FakeApiServer, redis_client: Any
) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    dw = durable(redis_client)
    handler = Gated(2)
    zoo, _ = clients(server)
    async with zoo, dw.run(zoo, handler=handler, poll=POLL, prefetch=1, claim_idle=NEVER) as w:
        ref = zoo.async_operation(op.id)
        key = dw.job_key(ref)
        first = await dw.submit(ref, {"n": 1})
        await until(partial(reached, lambda: len(handler.contexts), 1), 30)
        # While its handler runs, the first watch ends elsewhere (as when a worker that took
        # it over handled it) and the job is submitted again: a newer watch owns it now.
        await redis_client.delete(key)
        second = await dw.submit(ref, {"n": 2})
        assert second != first
        handler.gates[0].set()
        await until(partial(reached, lambda: w.handled, 1), 30)
        assert await redis_client.get(key) == second.encode()  # the old settle left it
        await until(partial(reached, lambda: len(handler.contexts), 2), 30)
        handler.gates[1].set()
        await until(partial(reached, lambda: w.handled, 2), 30)
    assert handler.contexts == [{"n": 1}, {"n": 2}]
    assert [r["watch"] for r in await records(redis_client)] == [first, second]
    assert await redis_client.keys(JOBS) == []
    assert (await dw.status()).pending == 0


async def test_a_settle_never_ends_a_newer_watch_made_while_it_runs(
    server: FakeApiServer, redis_server: RedisServer, redis_client: Any
) -> None:
    """A settle writes its record, then runs its partition's settle script. Between the two,
    the watch it settles ends elsewhere and the job is submitted again: the script sees the
    job's watch string name the newer watch, not its own, and leaves it (an unconditional
    ``DEL`` would end the newer watch, whose entry every worker would then drop unhandled)."""
    op = server.zoo.add_operation(timeline=[("completed", None)])
    handler = Gated(2)
    other = durable(redis_client)  # another service instance, straight to Redis
    zoo, _ = clients(server)
    async with zoo, RedisProxy(redis_server) as proxy:
        redis = redis_module().Redis(host=proxy.host, port=proxy.port, socket_timeout=10)
        dw = durable(redis)
        ref = zoo.async_operation(op.id)
        key = dw.job_key(ref)
        first = await dw.submit(ref, {"n": 1})
        second = ""
        during: list[tuple[int, int]] = []

        async def between_record_and_script(commands: bytes, reply: bytes) -> bool:
            nonlocal second
            # The first settle's record is written; its settle script comes next.
            if not during and sent(commands, "XADD", "async_jobs:results"):
                during.append((worker.handled, worker.in_flight))  # not settled yet
                assert await redis_client.get(key) == first.encode()
                await redis_client.delete(key)
                second = await other.submit(ref, {"n": 2})
            return True

        proxy.on_reply = between_record_and_script
        options = {"handler": handler, "poll": POLL, "prefetch": 1, "claim_idle": NEVER}
        async with dw.run(zoo, **options) as worker:
            await until(partial(reached, lambda: len(handler.contexts), 1), 30)
            handler.gates[0].set()
            await until(partial(reached, lambda: worker.handled, 1), 30)
            assert during == [(0, 1)] and second not in ("", first)
            # The script ended the first watch's entry and left the newer watch.
            assert await redis_client.get(key) == second.encode()
            assert [r["watch"] for r in await records(redis_client)] == [first]
            await until(partial(reached, lambda: len(handler.contexts), 2), 30)
            handler.gates[1].set()
            await until(partial(reached, lambda: worker.handled, 2), 30)
        await redis.aclose()
    assert handler.contexts == [{"n": 1}, {"n": 2}]
    assert [r["watch"] for r in await records(redis_client)] == [first, second]
    assert await redis_client.keys(JOBS) == []
    assert (await other.status()).pending == 0


@pytest.mark.parametrize("client_retries", [False, True], ids=["error", "retried"])
async def test_entries_whose_read_reply_was_lost_are_read_again(
    server: FakeApiServer, redis_server: RedisServer, redis_client: Any, client_retries: bool
) -> None:
    """Redis delivered entries (they are pending for this worker) but the connection dropped
    before the reply arrived. Without client retries the read loop sees the error; with them
    (redis-py's default) the client sent XREADGROUP again and the worker saw nothing. Either
    way the entries are read again long before ``claim_idle`` would have them taken over."""
    first = server.zoo.add_operation(timeline=[("in_progress", 600.0), ("completed", None)])
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(3)]
    handled: Counter[str] = Counter()

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled[job.id] += 1

    async def drop_first_delivery(commands: bytes, reply: bytes) -> bool:
        delivery = sent(commands, "XREADGROUP") and b"$1\r\n>\r\n" in commands
        return not (delivery and WATCHES.encode() in reply and proxy.dropped == 0)

    zoo, _ = clients(server)
    # Without retries only the read loop's own re-read can find them in time (the
    # keepalive is slower than the test's bound); with retries only the keepalive can.
    keepalive = 0.2 if client_retries else NEVER - 1
    # A read waits this long for new entries (1 s by default): the re-read after the
    # keepalive's look comes sooner, and a read loop that did not wait at all still makes
    # several times more reads than the bound below (Redis ends a 1 ms BLOCK after ~0.1 s).
    block = 0.5
    submitter = durable(redis_client)
    async with zoo, RedisProxy(redis_server) as proxy:
        options = {} if client_retries else no_retries()
        redis = redis_module().Redis(host=proxy.host, port=proxy.port, socket_timeout=10, **options)
        dw = durable(redis)
        options = {"handler": handler, "poll": POLL, "claim_idle": NEVER, "keepalive": keepalive}
        async with dw.run(zoo, block=block, **options) as worker:
            # A watch held all along: the re-read returns it first, then the lost ones.
            await submitter.submit(zoo.async_operation(first.id))
            await until(partial(reached, lambda: worker.in_flight, 1), 30)
            proxy.on_reply = drop_first_delivery
            await submitter.submit_many(zoo.async_operation(op.id) for op in ops)
            await until(partial(reached, lambda: worker.handled, 3), 30)
            server.clock.advance(600)
            await until(partial(reached, lambda: worker.handled, 4), 30)
            # Back to waiting on new entries: one read per ``block`` at most.
            await redis_client.config_resetstat()
            started = time.monotonic()
            await anyio.sleep(0.5)
            stats = await redis_client.info("commandstats")
            reads = int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))
            assert reads <= (time.monotonic() - started) / block + 2
        await redis.aclose()
    assert proxy.dropped == 1
    assert dict(handled) == {op.id: 1 for op in [first, *ops]}
    assert (worker.claimed, worker.duplicates) == (0, 0)
    assert (await submitter.status()).pending == 0


@pytest.mark.parametrize("loss", ["stream deleted", "restarted empty"])
async def test_a_worker_recreates_a_lost_group_and_goes_on(
    server: FakeApiServer,
    redis_server: RedisServer,
    redis_client: Any,
    loss: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(2)]
    handled: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled.append(job.id)

    caplog.set_level(logging.DEBUG, logger="async_jobs")
    dw = durable(redis_client)
    other = durable(redis_client)  # another service instance, that only submits
    await other.ensure_group()
    zoo, _ = clients(server)
    # Takeover and keepalive passes a minute apart: only the read loop can notice in time.
    options = {"handler": handler, "poll": POLL, "claim_idle": NEVER, "keepalive": NEVER - 1}
    async with zoo, dw.run(zoo, **options) as worker:
        await other.submit(zoo.async_operation(ops[0].id))
        await until(partial(reached, lambda: worker.handled, 1), 30)
        if loss == "stream deleted":
            await redis_client.delete(WATCHES)  # the group goes with it
        else:
            await anyio.to_thread.run_sync(restart_empty, redis_server)
        # ``other`` believes the group exists: unless the worker made it again first, its
        # XADD makes a stream with no group.
        await other.submit(zoo.async_operation(ops[1].id))
        await until(partial(reached, lambda: worker.handled, 2), 30)
    assert handled == [op.id for op in ops]
    groups = await redis_client.xinfo_groups(WATCHES)
    assert [g["name"] for g in groups] == [b"async_jobs"]
    status = await dw.status()
    assert (status.pending, status.in_flight) == (0, {})
    assert "is answering again" in caplog.text


async def test_results_and_dead_letters_are_trimmed_to_their_maxlen(
    server: FakeApiServer, redis_client: Any
) -> None:
    node = 4  # entries per stream node: approximate trimming removes whole nodes
    await redis_client.config_set("stream-node-max-entries", node)
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(40)]
    failing = {op.id for op in ops[::3]}  # 14 dead-lettered, 26 handled

    async def handler(job: Any, context: dict[str, Any]) -> None:
        if job.id in failing:
            raise RuntimeError("no")

    dw = durable(redis_client, results_maxlen=10, dead_letter_maxlen=5)
    once = aj.RetryPolicy(max_attempts=1)
    zoo, _ = clients(server)
    async with zoo, dw.run(zoo, handler=handler, poll=POLL, retry=once) as worker:
        await dw.submit_many(zoo.async_operation(op.id) for op in ops)
        await until(partial(reached, lambda: worker.handled + worker.dead_lettered, 40), 30)
    assert (worker.handled, worker.dead_lettered) == (26, 14)
    kept = [r["id"] for r in await records(redis_client)]
    dead = [r["key"] for r in await records(redis_client, "async_jobs:dead")]
    # At least maxlen records, the newest; less than a node more.
    assert 10 <= len(kept) < 10 + node and not set(kept) & failing
    assert 5 <= len(dead) < 5 + node and all(k.split(":")[-1] in failing for k in dead)
    status = await dw.status()
    assert (status.results, status.dead_lettered) == (len(kept), len(dead))


async def test_concurrent_submits_of_one_job_make_one_watch_and_one_entry(
    server: FakeApiServer, redis_server: RedisServer, redis_client: Any
) -> None:
    """Two service instances submit the same jobs at once, each on its own connection: every
    job gets one watch and one entry, and both instances get its id. First at an exact
    point: B submits the job the moment Redis answered A's first command about it (a submit
    that read the watch string, then wrote, would lose there); then many jobs, both
    instances racing."""
    free, op = (server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(2))
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(40)]
    zoo, _ = clients(server)
    b = durable(redis_client)
    ref = zoo.async_operation(op.id)
    key = b.job_key(ref)
    b_got: list[str] = []

    async def b_submits_on_the_way(commands: bytes, reply: bytes) -> bool:
        if not b_got and key.encode() in commands:
            b_got.append(await b.submit(ref))
        return True

    async with zoo, RedisProxy(redis_server) as proxy:
        redis = redis_module().Redis(host=proxy.host, port=proxy.port, socket_timeout=10)
        a = durable(redis)
        proxy.on_reply = b_submits_on_the_way
        with anyio.fail_after(30):
            mine, watch = await a.submit_many([zoo.async_operation(free.id), ref])
        proxy.on_reply = None
        assert b_got == [watch]
        entries = await redis_client.xrange(WATCHES)
        by_key = {f[b"key"].decode(): f[b"watch"].decode() for _, f in entries}
        assert len(entries) == 2
        assert by_key == {f"zoo.async_operation:{free.id}": mine, ref.key: watch}
        assert await redis_client.get(key) == watch.encode()

        refs = [zoo.async_operation(op.id) for op in ops]
        got: dict[str, list[str]] = {}

        async def submit(name: str, dw: Any, order: list[aj.JobRef[Any]]) -> None:
            got[name] = await dw.submit_many((r, {"by": name}) for r in order)
            got[name] = [got[name][order.index(r)] for r in refs]  # back in refs' order

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(submit, "a", a, refs)
                tg.start_soon(submit, "b", b, refs[::-1])
        await redis.aclose()
    assert got["a"] == got["b"]
    entries = await redis_client.xrange(WATCHES)
    assert len(entries) == 2 + len(ops)
    watches = {f[b"key"].decode(): f[b"watch"].decode() for _, f in entries}
    assert [watches[r.key] for r in refs] == got["a"]
    current = await redis_client.mget([b.job_key(r) for r in refs])
    assert [w.decode() for w in current] == got["a"]


@pytest.mark.parametrize("client_retries", [False, True], ids=["caller retries", "retried"])
async def test_a_submit_whose_reply_is_lost_makes_one_watch_when_retried(
    server: FakeApiServer, redis_server: RedisServer, redis_client: Any, client_retries: bool
) -> None:
    """The submit ran in Redis but its connection dropped before the reply came back. The
    submit is sent again, by redis-py itself (its default retries) or by the caller after
    the error: it finds the watch the first one made and returns it, with no second entry."""
    op = server.zoo.add_operation(timeline=[("completed", None)])
    zoo, _ = clients(server)
    ref = zoo.async_operation(op.id)

    async def drop_the_first_submit_reply(commands: bytes, reply: bytes) -> bool:
        return not (proxy.dropped == 0 and key.encode() in commands)

    async with zoo, RedisProxy(redis_server) as proxy:
        options = {} if client_retries else no_retries()
        redis = redis_module().Redis(host=proxy.host, port=proxy.port, socket_timeout=10, **options)
        dw = durable(redis)
        key = dw.job_key(ref)
        await dw.ensure_group()
        proxy.on_reply = drop_the_first_submit_reply
        with anyio.fail_after(30):
            if client_retries:
                watch = await dw.submit(ref)
            else:
                with pytest.raises(redis_module().ConnectionError):
                    await dw.submit(ref)
                watch = await dw.submit(ref)
        await redis.aclose()
    assert proxy.dropped == 1
    entries = await redis_client.xrange(WATCHES)
    assert [f[b"watch"].decode() for _, f in entries] == [watch]
    assert await redis_client.get(key) == watch.encode()


async def test_an_idle_worker_waits_on_redis_instead_of_polling_it(
    server: FakeApiServer, redis_client: Any
) -> None:
    """Reads block for ``block`` seconds; takeover and keepalive passes come every
    ``keepalive`` seconds, and a watch held all along is no reason to read again. A slow
    machine makes fewer calls, never more."""
    dw = durable(redis_client)
    op = server.zoo.add_operation(timeline=[("in_progress", 600.0), ("completed", None)])

    async def handler(job: Any, context: dict[str, Any]) -> None:
        raise AssertionError("nothing to handle")

    zoo, _ = clients(server)
    async with zoo, dw.run(zoo, handler=handler, block=0.2, claim_idle=2.0, keepalive=0.1) as w:
        await dw.submit(zoo.async_operation(op.id))
        await until(partial(reached, lambda: w.in_flight, 1), 30)
        await redis_client.config_resetstat()
        started = time.monotonic()
        await anyio.sleep(1.0)
        stats = await redis_client.info("commandstats")
        elapsed = time.monotonic() - started

    def calls(command: str) -> int:
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    assert 1 <= calls("xreadgroup") <= elapsed / 0.2 + 2
    assert calls("xautoclaim") <= elapsed / 0.1 + 2
    # A keepalive pass: one XPENDING of this consumer's list, then one per held entry (here 1)
    # in the script that refreshes only the entries still its own.
    assert calls("evalsha") <= elapsed / 0.1 + 2
    assert calls("xpending") <= 2 * (elapsed / 0.1 + 2)


async def test_an_entry_taken_over_is_dropped_by_its_former_holder(
    server: FakeApiServer, redis_client: Any
) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", 600.0), ("completed", None)])
    handled: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled.append(job.id)

    zoo, _ = clients(server)
    a, b = durable(redis_client, consumer="a"), durable(redis_client, consumer="b")
    options = {"handler": handler, "poll": POLL, "claim_idle": NEVER}
    async with zoo:
        async with a.run(zoo, keepalive=0.05, **options) as first:
            await a.submit(zoo.async_operation(op.id))
            await until(partial(reached, lambda: first.in_flight, 1), 30)
            # b took it over (as after a stall of a longer than claim_idle, its lease lost).
            ((entry, _),) = await redis_client.xrange(WATCHES)
            await redis_client.xclaim(WATCHES, "async_jobs", "b", 0, [entry], justid=True)
            await until(partial(reached, lambda: first.lost, 1), 30)
            assert first.in_flight == 0
        server.clock.advance(600)
        # b takes the partition a gave up, and resumes its own entry at once.
        async with b.run(zoo, **options) as second:
            await until(partial(reached, lambda: second.handled, 1), 30)
    assert handled == [op.id]
    assert (first.handled, first.lost, second.handled, second.claimed) == (0, 1, 1, 0)


async def test_a_keepalive_never_takes_back_an_entry_claimed_during_its_pass(
    server: FakeApiServer, redis_server: RedisServer, redis_client: Any
) -> None:
    """Another worker claims an entry between this worker's XPENDING and its refresh: the
    refresh leaves it to its new owner (a plain XCLAIM would take it back, and both workers
    would go on watching and handling the job)."""
    op = server.zoo.add_operation(timeline=[("in_progress", 600.0), ("completed", None)])
    handled: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled.append(job.id)

    zoo, _ = clients(server)
    async with zoo, RedisProxy(redis_server) as proxy:
        redis = redis_module().Redis(host=proxy.host, port=proxy.port, socket_timeout=10)
        a = durable(redis, consumer="a")
        taken: list[bytes] = []

        async def claim_during_the_pass(commands: bytes, reply: bytes) -> bool:
            if not taken and first.in_flight == 1 and sent(commands, "XPENDING", STREAM, GROUP):
                ((entry, _),) = await redis_client.xrange(STREAM)
                await redis_client.xclaim(STREAM, GROUP, "b", 0, [entry], justid=True)
                taken.append(entry)
            return True

        options = {"handler": handler, "poll": POLL, "claim_idle": NEVER}
        async with a.run(zoo, keepalive=0.05, **options) as first:
            await a.submit(zoo.async_operation(op.id))
            await until(partial(reached, lambda: first.in_flight, 1), 30)
            proxy.on_reply = claim_during_the_pass
            await until(partial(reached, lambda: first.lost, 1), 30)
            owners = await redis_client.xpending_range(STREAM, GROUP, min="-", max="+", count=10)
        await redis.aclose()
    assert [(o["message_id"], o["consumer"]) for o in owners] == [(taken[0], b"b")]
    assert first.in_flight == 0 and handled == []


async def test_a_worker_with_one_free_slot_takes_over(
    server: FakeApiServer, redis_client: Any
) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    handled: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled.append(job.id)

    dw = durable(redis_client)
    zoo, _ = clients(server)
    async with zoo:
        await dw.submit(zoo.async_operation(op.id))
        await redis_client.xreadgroup("async_jobs", "ghost", {WATCHES: ">"})
        async with dw.run(zoo, handler=handler, poll=POLL, prefetch=1, claim_idle=0.3) as w:
            await until(partial(reached, lambda: w.handled, 1), 30)
    assert handled == [op.id] and w.claimed == 1


async def test_a_deleted_entry_left_pending_is_acknowledged(
    server: FakeApiServer, redis_client: Any
) -> None:
    """An entry deleted from the stream while a dead consumer held it: the worker that takes
    it over (Redis 6.2 returns it as a nil, without its id; 7 drops it from the pending list
    itself) finds no fields, and acknowledges it so that it leaves the pending list."""
    op = server.zoo.add_operation(timeline=[("completed", None)])
    handled: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled.append(job.id)

    dw = durable(redis_client)
    zoo, _ = clients(server)
    async with zoo:
        await dw.submit_many([zoo.async_operation(op.id)])
        await redis_client.xreadgroup("async_jobs", "ghost", {WATCHES: ">"})
        ((entry, _),) = await redis_client.xrange(WATCHES)
        await redis_client.xdel(WATCHES, entry)

        async def acknowledged() -> bool:
            summary = await redis_client.xpending(WATCHES, "async_jobs")
            return bool(summary["pending"] == 0)

        # The keepalive sees it pending but not held; the next read (block: 0.1 s away at
        # most) reads it again and acknowledges it.
        options = {"handler": handler, "poll": POLL, "claim_idle": 0.2, "block": 0.1}
        async with dw.run(zoo, **options) as worker:
            await until(acknowledged, 30)
    assert handled == [] and worker.handled + worker.dead_lettered == 0


@pytest.mark.parametrize("step", ["record", "script"])
async def test_a_settle_whose_connection_drops_is_retried(
    server: FakeApiServer,
    redis_server: RedisServer,
    redis_client: Any,
    caplog: pytest.LogCaptureFixture,
    step: str,
) -> None:
    """The connection drops during a settle: before its record reaches Redis, or once its
    settle script ran there (the reply lost). The settle waits the trouble out and runs
    again; the watch ends once, with one record."""
    from async_jobs.contrib.redis._settle import SETTLE_SCRIPT

    op = server.zoo.add_operation(timeline=[("completed", None)])
    handled: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled.append(job.id)

    async def drop_the_first_settle_reply(commands: bytes, reply: bytes) -> bool:
        return not (proxy.dropped == 0 and SETTLE_SCRIPT.encode() in commands)

    caplog.set_level(logging.DEBUG, logger="async_jobs")
    zoo, _ = clients(server)
    async with zoo, RedisProxy(redis_server) as proxy:
        redis = redis_module().Redis(
            host=proxy.host, port=proxy.port, socket_timeout=10, **no_retries()
        )
        if step == "record":
            proxy.cut_before = b"$4\r\nXADD\r\n$18\r\nasync_jobs:results\r\n"
        else:
            proxy.on_reply = drop_the_first_settle_reply
        dw = durable(redis)
        async with dw.run(zoo, handler=handler, poll=POLL, claim_idle=NEVER) as worker:
            await dw.submit(zoo.async_operation(op.id))
            await until(partial(reached, lambda: worker.handled, 1), 30)
        await redis.aclose()
    assert proxy.dropped == 1 and handled == [op.id]
    assert "redis trouble while acknowledging handled watches" in caplog.text
    assert [r["id"] for r in await records(redis_client)] == [op.id]
    assert await redis_client.keys(JOBS) == []
    assert (await durable(redis_client).status()).pending == 0


async def test_a_worker_holding_more_than_a_page_keeps_them_all(
    server: FakeApiServer, redis_client: Any
) -> None:
    """The keepalive reads this worker's pending list 1,000 entries a page: with 1,001 held,
    every pass must see the last one too, or the worker would think it taken over."""
    ops = [
        server.zoo.add_operation(timeline=[("in_progress", 600.0), ("completed", None)])
        for _ in range(1001)
    ]

    async def handler(job: Any, context: dict[str, Any]) -> None:
        raise AssertionError("nothing ends")

    async def passes() -> int:
        stats = await redis_client.info("commandstats")
        return int(stats.get("cmdstat_xpending", {}).get("calls", 0))

    dw = durable(redis_client)
    zoo, _ = clients(server)
    async with zoo, dw.run(zoo, handler=handler, poll=POLL, claim_idle=NEVER, keepalive=0.05) as w:
        await dw.submit_many(zoo.async_operation(op.id) for op in ops)
        await until(partial(reached, lambda: w.in_flight, 1001), 30)
        await redis_client.config_resetstat()
        await until(lambda: _more(passes, 6), 30)  # 3 passes of 2 pages at least
        assert (w.in_flight, w.lost) == (1001, 0)
    assert (await dw.status()).in_flight == {w.consumer: 1001}


async def _more(value: Any, target: int) -> bool:
    return bool(await value() >= target)
