"""Partitions of the durable watches: how jobs are spread (pure), how partitions are shared by
the live workers of a fleet (real redis-server, workers in this process): a worker that joins
gets its share, one that stops cleanly hands its partitions and watches over at once."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_jobs.contrib.redis._partitions import PartitionKeys, fair_share, preference
from async_jobs.testing import FakeApiServer, RedisServer

from ._redis import clients, until

pytestmark = pytest.mark.anyio

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@given(st.sets(NAMES, min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_fair_shares_add_up_and_differ_by_at_most_one(live: set[str], partitions: int) -> None:
    shares = [fair_share(worker, sorted(live), partitions) for worker in live]
    assert sum(shares) == partitions
    assert max(shares) - min(shares) <= 1


def test_a_worker_not_yet_in_the_live_set_counts_itself() -> None:
    assert fair_share("new", ["a", "b"], 16) == 5
    assert fair_share("a", [], 16) == 16


def test_keys_of_a_partition_share_its_hash_tag() -> None:
    keys = PartitionKeys("async_jobs:watches", 16)
    assert keys.stream_of(3) == "{async_jobs:watches:3}"
    assert (
        keys.job_key(3, "zoo.async_operation:x")
        == "{async_jobs:watches:3}:job:zoo.async_operation:x"
    )
    assert keys.lease(3) == "{async_jobs:watches:3}:lease"
    # One group, one partition, in every process (crc32, not Python's salted hash).
    assert keys.partition_of("zoo.dataset_conversions:d1") == keys.partition_of(
        "zoo.dataset_conversions:d1"
    )
    assert {keys.partition_of(f"metafold.jobs:p{i}") for i in range(200)} == set(range(16))
    with pytest.raises(ValueError):
        PartitionKeys("s", 0)


def test_preference_spreads_partitions_over_workers() -> None:
    favourites = {max(range(16), key=lambda p: preference(f"w{i}", p)) for i in range(40)}
    assert len(favourites) > 8


async def test_every_job_of_a_group_goes_to_one_partition(
    server: FakeApiServer, redis_client: Any
) -> None:
    from async_jobs.contrib.redis import DurableWatches

    datasets = [server.conversions.add_dataset() for _ in range(3)]
    zoo, mf = clients(server)
    async with zoo, mf:
        refs = [zoo.dataset_conversion(d, f"c{i}") for d in datasets for i in range(20)]
        refs += [mf.job(f"job-{i}", project_id=f"p{i % 2}") for i in range(40)]
        dw = DurableWatches(redis_client)
        await dw.submit_many(refs)
        streams: dict[str, set[str]] = {}
        for index in range(dw.partitions):
            for _, fields in await redis_client.xrange(dw.keys.stream_of(index)):
                group = fields[b"key"].decode().rsplit("/", 1)[0]
                streams.setdefault(group, set()).add(dw.keys.stream_of(index))
        assert len(streams) == 5 and all(len(where) == 1 for where in streams.values())
        assert sum(s.pending for s in (await dw.status()).partitions) == 100


async def test_a_stream_refuses_another_partition_count(redis_client: Any) -> None:
    from async_jobs.contrib.redis import DurableWatches

    await DurableWatches(redis_client, partitions=8).ensure_group()
    other = DurableWatches(redis_client, partitions=16)
    assert await other.stored_partitions() == 8
    with pytest.raises(ValueError, match="made with 8 partitions, not 16: pass partitions=8"):
        await other.ensure_group()


async def _noop(job: Any, context: dict[str, Any]) -> None:
    return None


async def test_a_joining_worker_gets_partitions_and_a_clean_stop_hands_over_at_once(
    server: FakeApiServer, redis_server: RedisServer, redis_client: Any
) -> None:
    """``claim_idle`` is a minute: what moves here moves by the leases, at the next look at
    the fleet (``keepalive``, 0.2 s), never by a takeover of idle entries."""
    from async_jobs.contrib.redis import DurableWatches

    projects = [f"p{i}" for i in range(12)]
    jobs = [
        (p, server.metafold.add_job(p, timeline=[("started", 3600.0), ("success", None)]).id)
        for p in projects
        for _ in range(5)
    ]
    zoo, mf = clients(server)
    options: dict[str, Any] = {"claim_idle": 60.0, "keepalive": 0.2, "block": 0.1}
    async with zoo, mf:
        dw = DurableWatches(redis_client)
        await dw.submit_many(mf.job(job, project_id=project) for project, job in jobs)
        submitted = (await dw.status()).pending
        assert submitted == 60

        def worker(name: str) -> Any:
            return DurableWatches(redis_client, consumer=name).run(mf, handler=_noop, **options)

        async def shares() -> list[int]:
            return sorted(len(held) for held in (await dw.status()).owned().values())

        async def held_in_all(workers: list[Any]) -> bool:
            return sum(w.in_flight for w in workers) == submitted

        async with worker("a") as a, worker("b") as b, worker("c") as c:

            async def three_share() -> bool:
                return await shares() == [5, 5, 6] and await held_in_all([a, b, c])

            await until(three_share, 10)
            assert {len(w.partitions) for w in (a, b, c)} == {5, 6}
            before = sum(w.partitions_given_up for w in (a, b, c))
            async with worker("d") as d:

                async def four_share() -> bool:
                    return await shares() == [4, 4, 4, 4] and await held_in_all([a, b, c, d])

                await until(four_share, 10)
                assert len(d.partitions) == 4 and d.claimed > 0  # taken over at once
                moved = sum(w.partitions_given_up for w in (a, b, c)) - before
                assert moved == 4  # only what the newcomer takes moves
            # d stopped cleanly: its partitions and watches are back with a, b and c.
            await until(three_share, 10)
            status = await dw.status()
            assert "d" not in status.workers and "d" not in status.in_flight
            assert sum(w.lost for w in (a, b, c)) == 0
            server.clock.advance(3600)

            async def all_handled() -> bool:
                return sum(w.handled for w in (a, b, c)) == submitted

            await until(all_handled, 20)
        status = await dw.status()
    assert status.pending == 0 and status.workers == {}
    assert all(part.owner is None for part in status.partitions)


async def test_a_worker_with_another_partition_count_fails_at_start(
    server: FakeApiServer, redis_client: Any
) -> None:
    from async_jobs.contrib.redis import DurableWatches

    await DurableWatches(redis_client, partitions=4).ensure_group()
    zoo, _ = clients(server)
    async with zoo:
        worker = DurableWatches(redis_client, partitions=16).run(zoo, handler=_noop)
        with pytest.raises(ValueError, match="pass partitions=4"):
            async with worker:
                pass  # pragma: no cover


async def test_durable_status_reads_a_redis_cluster(
    server: FakeApiServer,
    redis_cluster: Any,
    redis_cluster_client: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from async_jobs import cli
    from async_jobs.contrib.redis import DurableWatches

    ops = [server.zoo.add_operation(timeline=[("queued", None)]) for _ in range(3)]
    zoo, _ = clients(server)
    async with zoo:
        await DurableWatches(redis_cluster_client).submit_many(
            zoo.async_operation(op.id) for op in ops
        )
    argv = ["durable", "status", "--cluster", "--redis-url", redis_cluster.url, "--json"]
    assert await anyio.to_thread.run_sync(cli.main, argv) == 0
    (status,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (status["pending"], status["undelivered"]) == (3, 3)
    assert len(status["partitions"]) == 16 and status["workers"] == {}
