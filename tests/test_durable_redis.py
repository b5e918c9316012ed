"""async_jobs.contrib.redis in one process, against a real redis-server: idempotent submit,
results, retries and the dead-letter stream, takeover of abandoned entries, keepalive,
unreadable entries, duplicates and Redis trouble."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections import Counter
from functools import partial
from typing import Any

import anyio
import msgspec
import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer, RedisServer

from ._redis import JOBS, WATCHES, clients, redis_module, script_jobs, until
from .conftest import TOKEN

pytestmark = pytest.mark.anyio

POLL = aj.PollPolicy(initial=0.05, multiplier=1.5, maximum=0.2, jitter=0.2)
QUICK_RETRY = aj.RetryPolicy(max_attempts=3, initial=0.01, multiplier=2.0, maximum=0.05)


def durable(redis: Any, **options: Any) -> Any:
    from async_jobs.contrib.redis import DurableWatches

    return DurableWatches(redis, **{"partitions": 1, **options})


async def results(redis: Any, stream: str = "async_jobs:results") -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in await redis.xrange(stream)
    ]


def test_core_does_not_import_redis() -> None:
    code = "import sys, async_jobs, async_jobs.testing; assert 'redis' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_submit_is_idempotent_per_job(server: FakeApiServer, redis_client: Any) -> None:
    dw = durable(redis_client)
    op = server.zoo.add_operation(timeline=[("in_progress", 60.0), ("completed", None)])
    other = server.zoo.add_operation(timeline=[("in_progress", 60.0), ("completed", None)])
    zoo, _ = clients(server)
    async with zoo:
        first = await dw.submit(zoo.async_operation(op.id), {"order": 1})
        assert await dw.submit(zoo.async_operation(op.id), {"order": 2}) == first
        ids: list[str] = []

        async def submit() -> None:
            ids.append(await dw.submit(zoo.async_operation(other.id)))

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(submit)
        assert len(set(ids)) == 1
        many = await dw.submit_many(
            [zoo.async_operation(op.id), (zoo.async_operation(other.id), None)]
        )
        assert many == [first, ids[0]]
        assert await redis_client.xlen(WATCHES) == 2
        # One entry written per watch, none added and taken back.
        info = await redis_client.xinfo_stream(WATCHES)
        assert info["last-generated-id"] == info["last-entry"][0]
        assert sorted(await redis_client.keys(JOBS)) == sorted(
            dw.job_key(zoo.async_operation(one.id)).encode() for one in (op, other)
        )
        status = await dw.status()
        assert (status.pending, status.undelivered) == (2, 2)
        with pytest.raises(ValueError, match="at most"):
            await dw.submit(zoo.async_operation(op.id), {"blob": "x" * 70_000})
        with pytest.raises(TypeError, match="JSON"):
            await dw.submit(zoo.async_operation(op.id), {"when": object()})
    # The token in the entry names the job and never a credential.
    (_, fields), _ = await redis_client.xrange(WATCHES)
    assert TOKEN not in repr(fields)
    assert (
        aj.JobRef.from_token(fields[b"token"].decode(), zoo).key == f"zoo.async_operation:{op.id}"
    )


async def test_worker_handles_jobs_and_records_results(
    server: FakeApiServer, redis_client: Any
) -> None:
    script = script_jobs(server, 60, lead=0.05, window=0.4)
    dw = durable(redis_client, results_maxlen=1000)
    seen: Counter[str] = Counter()
    contexts: dict[str, Any] = {}

    async def handler(job: Any, context: dict[str, Any]) -> None:
        seen[job.id] += 1
        contexts[job.id] = context

    zoo, mf = clients(server)
    async with zoo, mf:
        refs = script.refs(zoo, mf)
        await dw.submit_many((ref, {"id": ref.ids[-1]}) for ref in refs)
        async with dw.run(zoo, mf, handler=handler, poll=POLL, claim_idle=5) as worker:
            await until(lambda: _count(worker.handled, 60), 30)
            status = await dw.status()
        assert worker.handled == 60 and worker.duplicates == 0 and worker.claimed == 0
    assert {job_id: contexts[job_id]["id"] for job_id in seen} == {j: j for j in script.truth}
    assert set(seen.values()) == {1}
    records = await results(redis_client)
    assert {r["id"]: r["state"] for r in records} == script.truth
    assert all(msgspec.json.decode(r["job"])["id"] == r["id"] for r in records)
    assert status.pending == 0 and status.results == 60
    assert await redis_client.keys(JOBS) == []
    assert await redis_client.xlen(WATCHES) == 0
    # The worker left the group's consumer list on exit (it held nothing).
    assert (await dw.status()).in_flight == {}
    assert await redis_client.xinfo_consumers(WATCHES, "async_jobs") == []


async def _count(value: int, target: int) -> bool:
    return value >= target


async def test_resubmitting_a_handled_job_watches_it_again(
    server: FakeApiServer, redis_client: Any
) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    dw = durable(redis_client)
    handled: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled.append(job.id)

    zoo, _ = clients(server)
    async with zoo, dw.run(zoo, handler=handler, poll=POLL, claim_idle=5) as worker:
        first = await dw.submit(zoo.async_operation(op.id))
        await until(lambda: _count(worker.handled, 1), 30)
        second = await dw.submit(zoo.async_operation(op.id))
        assert second != first
        await until(lambda: _count(worker.handled, 2), 30)
    assert handled == [op.id, op.id]


async def test_failing_handler_is_retried_then_dead_lettered(
    server: FakeApiServer, redis_client: Any
) -> None:
    flaky = server.zoo.add_operation(timeline=[("in_progress", 0.1), ("completed", None)])
    broken = server.zoo.add_operation(timeline=[("in_progress", 0.1), ("failed", None)])
    dw = durable(redis_client)
    calls: Counter[str] = Counter()
    unacked_while_failing: list[int] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        calls[job.id] += 1
        summary = await redis_client.xpending(WATCHES, "async_jobs")
        unacked_while_failing.append(summary["pending"])
        if job.id == broken.id:
            raise RuntimeError(f"boom {calls[job.id]}")
        if calls[job.id] <= 2:
            raise ConnectionError("flaky downstream")

    zoo, _ = clients(server)
    async with zoo:
        await dw.submit(zoo.async_operation(flaky.id), {"n": 1})
        await dw.submit(zoo.async_operation(broken.id), {"n": 2})
        async with dw.run(zoo, handler=handler, poll=POLL, retry=QUICK_RETRY) as worker:
            await until(lambda: _count(worker.handled + worker.dead_lettered, 2), 30)
    assert (worker.handled, worker.dead_lettered) == (1, 1)
    assert calls == {flaky.id: 3, broken.id: 3}
    assert min(unacked_while_failing) >= 1  # nothing acked before its handler succeeded
    assert [r["id"] for r in await results(redis_client)] == [flaky.id]
    ((_, dead),) = await redis_client.xrange("async_jobs:dead")
    dead = {k.decode(): v.decode() for k, v in dead.items()}
    assert dead["key"] == f"zoo.async_operation:{broken.id}"
    assert dead["error"] == "RuntimeError: boom 3"
    assert dead["attempts"] == "3"
    assert msgspec.json.decode(dead["context"]) == {"n": 2}
    assert msgspec.json.decode(dead["job"])["status"] == "failed"
    status = await dw.status()
    assert (status.pending, status.dead_lettered) == (0, 1)
    assert await redis_client.keys(JOBS) == []


async def test_job_that_cannot_be_fetched_is_dead_lettered(
    server: FakeApiServer, redis_client: Any
) -> None:
    dw = durable(redis_client)
    zoo, _ = clients(server, poll=POLL)

    async def handler(job: Any, context: dict[str, Any]) -> None:
        raise AssertionError("never terminal")

    async with zoo:
        await dw.submit(zoo.async_operation(str(uuid.uuid4())))  # no such operation
        async with dw.run(zoo, handler=handler, poll=POLL, retry=QUICK_RETRY) as worker:
            await until(lambda: _count(worker.dead_lettered, 1), 30)
    ((_, dead),) = await redis_client.xrange("async_jobs:dead")
    assert dead[b"error"].startswith(b"watch failed: NotFoundError")
    assert dead[b"job"] == b""
    assert dead[b"attempts"] == b"3"  # QUICK_RETRY.max_attempts
    assert worker.dead_lettered == 1


async def test_unreadable_entries_are_dead_lettered(
    server: FakeApiServer, redis_client: Any
) -> None:
    dw = durable(redis_client)
    zoo, mf = clients(server)
    project_job = server.metafold.add_job("p", timeline=[("success", None)])
    op = server.zoo.add_operation(timeline=[("completed", None)])
    handled: list[str] = []
    async with zoo, mf:
        await redis_client.xadd(WATCHES, {"key": "x", "context": "{}"})
        await dw.submit(mf.job(project_job.id, project_id="p"))  # no Metafold client below
        await dw.submit(zoo.async_operation(op.id))  # in the same batch, after them

        async def handler(job: Any, context: dict[str, Any]) -> None:
            handled.append(job.id)

        options = {"handler": handler, "poll": POLL, "claim_idle": 60, "keepalive": 59}
        async with dw.run(zoo, **options) as worker:
            await until(lambda: _count(worker.dead_lettered + worker.handled, 3), 30)
    assert handled == [op.id] and worker.dead_lettered == 2
    dead = sorted(
        (f[b"error"].decode(), f[b"attempts"])
        for _, f in await redis_client.xrange("async_jobs:dead")
    )
    assert dead[0][0].startswith("cannot watch metafold.job:p/")
    assert "none of the given clients serves 'metafold.job'" in dead[0][0]
    assert dead[1][0] == "unreadable entry: no watch, key or token"
    assert [attempts for _, attempts in dead] == [b"1", b"1"]  # no retry can help
    assert (await dw.status()).pending == 0


async def test_abandoned_entries_are_taken_over(server: FakeApiServer, redis_client: Any) -> None:
    script = script_jobs(server, 90, lead=0.1, window=0.5)
    dw = durable(redis_client)
    zoo, mf = clients(server)
    handled: Counter[str] = Counter()

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled[job.id] += 1

    async with zoo, mf:
        await dw.submit_many(script.refs(zoo, mf))
        # A consumer that reads everything and dies without acking anything.
        await dw.ensure_group()
        await redis_client.xreadgroup("async_jobs", "ghost", {WATCHES: ">"})
        assert (await dw.status()).in_flight == {"ghost": 90}
        options = {"handler": handler, "poll": POLL, "claim_idle": 0.5}
        async with dw.run(zoo, mf, **options) as worker:
            await until(lambda: _count(worker.handled, 90), 30)
        assert worker.claimed == 90
    assert dict(handled) == dict.fromkeys(script.truth, 1)
    assert (await dw.status()).in_flight == {}  # the ghost holds nothing any more


async def test_live_worker_keeps_its_long_running_entries(
    server: FakeApiServer, redis_client: Any
) -> None:
    """Worker ``a`` holds the partition and 5 watches whose handlers run until the test lets
    them go. Should the partition pass to ``b`` (``a``'s lease lost in a stall), ``b`` would
    take over whatever is idle for its ``claim_idle``, here 1 s: the test runs ``b``'s
    takeover pass (``XAUTOCLAIM``) by hand, ``a`` holding the lease all along. A canary
    entry, read by a consumer that then dies *after* ``a`` read its 5, is taken over by the
    first pass that takes anything: that pass ran when ``a``'s entries, had nothing
    refreshed them, were idle longer still and would have gone too (the same pass scans every
    entry in id order). So it takes the canary and nothing of ``a``'s, whatever the
    machine's speed; ``a`` never takes anything over itself. Once ``a`` stops, ``b`` takes
    the partition and handles the canary, its own pending entry."""
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(5)]
    canary = server.zoo.add_operation(timeline=[("completed", None)])
    release = anyio.Event()
    handled: Counter[str] = Counter()

    async def handler(job: Any, context: dict[str, Any]) -> None:
        if job.id != canary.id:
            await release.wait()
        handled[job.id] += 1

    zoo, _ = clients(server)
    a, b = durable(redis_client, consumer="a"), durable(redis_client, consumer="b")
    keeping = {"claim_idle": 60, "keepalive": 0.05, "prefetch": 5}  # holds its 5, no more
    taken: list[list[bytes]] = []

    async def takeover_pass() -> bool:
        _, claimed, *_ = await redis_client.xautoclaim(
            WATCHES, "async_jobs", "b", min_idle_time=1000, start_id="0-0", count=100
        )
        if claimed:
            taken.append([entry for entry, _ in claimed])
        return bool(claimed)

    async with zoo:
        async with a.run(zoo, handler=handler, poll=POLL, **keeping) as first:
            await a.submit_many(zoo.async_operation(op.id) for op in ops)
            await until(lambda: _count(first.in_flight, 5), 30)
            await a.submit(zoo.async_operation(canary.id))
            ((_, ((canary_entry, _),)),) = await redis_client.xreadgroup(
                "async_jobs", "ghost", {WATCHES: ">"}
            )
            assert (await a.status()).in_flight == {"a": 5, "ghost": 1}
            await until(takeover_pass, 30)
            assert taken == [[canary_entry]]
            assert (await a.status()).in_flight == {"a": 5, "b": 1}
            release.set()
            await until(lambda: _count(first.handled, 5), 30)
        assert first.partitions == [] and (await a.status()).owned() == {}
        async with b.run(zoo, handler=handler, poll=POLL, claim_idle=60) as second:
            await until(lambda: _count(second.handled, 1), 30)
    assert dict(handled) == dict.fromkeys([op.id for op in ops] + [canary.id], 1)
    assert (first.claimed, first.lost, second.claimed, second.handled) == (0, 0, 0, 1)


async def test_duplicate_entry_for_a_watched_job_is_dropped(
    server: FakeApiServer, redis_client: Any
) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", 0.3), ("completed", None)])
    dw = durable(redis_client)
    handled: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled.append(job.id)

    zoo, _ = clients(server)
    async with zoo:
        # An entry of a watch that ended already (its job handled), read in the same batch
        # before the others.
        for _ in range(2):
            done = server.zoo.add_operation(timeline=[("completed", None)])
            gone = zoo.async_operation(done.id)
            await redis_client.xadd(
                WATCHES,
                {"v": "1", "watch": "ended", "key": gone.key, "token": gone.to_token()},
            )
        ref = zoo.async_operation(op.id)
        await dw.submit(ref)
        # The loser of a race between two submits, not deleted yet by its submitter.
        await redis_client.xadd(
            WATCHES,
            {"v": "1", "watch": "other", "key": ref.key, "token": ref.to_token()},
        )
        # No keepalive pass in the test's time: the first read must do it all.
        options = {"handler": handler, "poll": POLL, "claim_idle": 60, "keepalive": 59}
        async with dw.run(zoo, **options) as worker:
            await until(lambda: _count(worker.handled + worker.duplicates, 2), 30)
        assert (worker.handled, worker.duplicates) == (1, 1)
    assert handled == [op.id]
    assert await redis_client.xlen(WATCHES) == 0
    assert (await dw.status()).in_flight == {}  # dropped entries are acknowledged too


async def test_redis_outage_is_waited_out_and_the_password_never_logged(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    password = "pw-" + "5e" * 12
    with RedisServer(password=password) as secured:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        redis = redis_module().Redis(  # no retries of its own: the worker's backoff is tested
            host=secured.host,
            port=secured.port,
            password=password,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )
        dw = durable(redis)
        assert password not in repr(dw)
        ops = [  # under way until the test moves the fake's clock, after the restart
            server.zoo.add_operation(timeline=[("in_progress", 3600), ("completed", None)])
            for _ in range(10)
        ]
        handled: Counter[str] = Counter()

        async def handler(job: Any, context: dict[str, Any]) -> None:
            handled[job.id] += 1

        zoo, _ = clients(server)
        caplog.set_level(logging.DEBUG, logger="async_jobs")
        async with zoo:
            await dw.submit_many(zoo.async_operation(op.id) for op in ops)
            async with dw.run(zoo, handler=handler, poll=POLL, claim_idle=3) as worker:
                await until(lambda: _count(worker.in_flight, 10), 30)
                await anyio.to_thread.run_sync(partial(secured.restart, down_for=0.5))
                server.clock.advance(3600)
                await until(lambda: _count(worker.handled, 10), 30)
        await redis.aclose()
    assert set(handled) == {op.id for op in ops}
    text = caplog.text
    assert "redis trouble" in text  # each retry, at DEBUG
    assert password not in text
    # The outage itself: one WARNING naming the server when it starts, one INFO at its end,
    # whichever of the worker's loops ran into it.
    redis_records = [r for r in caplog.records if r.name == "async_jobs.redis"]
    warnings = [r.getMessage() for r in redis_records if r.levelno == logging.WARNING]
    back = [r.getMessage() for r in redis_records if "answering again" in r.getMessage()]
    assert len(warnings) == 1 and f"{secured.host}:{secured.port}" in warnings[0], warnings
    assert len(back) == 1


@pytest.mark.parametrize("protocol", [2, 3])
async def test_connections_that_decode_responses_work_too(
    server: FakeApiServer, redis_server: RedisServer, protocol: int
) -> None:
    redis = redis_module().Redis(
        host=redis_server.host, port=redis_server.port, decode_responses=True, protocol=protocol
    )
    script = script_jobs(server, 12, lead=0.05, window=0.3)
    dw = durable(redis)
    seen: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        seen.append(job.id)

    zoo, mf = clients(server)
    async with zoo, mf:
        ids = await dw.submit_many(script.refs(zoo, mf))
        assert ids == await dw.submit_many(script.refs(zoo, mf))
        async with dw.run(zoo, mf, handler=handler, poll=POLL) as worker:
            await until(lambda: _count(worker.handled, 12), 30)
        status = await dw.status()
    records = await redis.xrange("async_jobs:results")
    await redis.aclose()
    assert sorted(seen) == sorted(script.truth)
    assert {fields["id"]: fields["state"] for _, fields in records} == script.truth
    assert status.pending == 0 and status.in_flight == {}


@pytest.mark.parametrize("stop", ["block ends", "cancelled"])
async def test_a_stopping_worker_hands_its_watches_over_at_once(
    server: FakeApiServer, redis_client: Any, stop: str
) -> None:
    # Under way until the test moves the fake's clock, once the watches were handed over.
    ops = [
        server.zoo.add_operation(timeline=[("in_progress", 3600), ("completed", None)])
        for _ in range(20)
    ]
    handled: Counter[str] = Counter()

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled[job.id] += 1

    zoo, _ = clients(server)
    # claim_idle is far longer than the test: only the hand-over can move the watches, and
    # only b's first takeover pass, at its start (the next one is a minute away).
    options = {"handler": handler, "poll": POLL, "claim_idle": 60}
    async with zoo:
        a, b = durable(redis_client, consumer="a"), durable(redis_client, consumer="b")
        with anyio.CancelScope() as scope:  # a service stopped by cancellation, as most are
            async with a.run(zoo, keepalive=0.1, **options) as first:
                await a.submit_many(zoo.async_operation(op.id) for op in ops)
                await until(lambda: _count(first.in_flight, 20), 30)
                if stop == "cancelled":
                    scope.cancel()
                    await anyio.sleep_forever()
        assert (await a.status()).in_flight == {"a": 20}
        consumers = await redis_client.xinfo_consumers(WATCHES, "async_jobs")
        assert [c["name"] for c in consumers] == [b"a"]  # it still holds entries: kept
        async with b.run(zoo, keepalive=59, **options) as second:
            await until(lambda: _count(second.in_flight, 20), 30)
            server.clock.advance(3600)
            await until(lambda: _count(second.handled, 20), 30)
    assert dict(handled) == {op.id: 1 for op in ops}
    assert second.claimed == 20 and (await b.status()).in_flight == {}
