"""RedisCluster: a 3-master Redis Cluster of real redis-servers, formed by ``redis-cli --cluster
create``, that a client can use, and whose masters come back with their slots and keys.

Why durable keys will need hash tags: a MULTI/EXEC (or one command over several keys) must stay
in one hash slot on a cluster. Keys ``{t}:a`` and ``{t}:b`` share the slot of ``t``; keys ``a``
and ``b`` do not, and a transaction over them is refused (by redis-py before it is sent, by
the server, CROSSSLOT, if it is sent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from async_jobs.testing import RedisCluster

from ._redis import redis_module

pytestmark = pytest.mark.anyio

SLOTS = 16384


@asynccontextmanager
async def node_client(cluster: RedisCluster, index: int) -> AsyncIterator[Any]:
    """A plain (non-cluster) ``redis.asyncio.Redis`` on master ``index`` alone."""
    node = cluster.nodes[index]
    client = redis_module().Redis(host=node.host, port=node.port, socket_timeout=10)
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_cluster_forms_with_every_slot_served(redis_cluster: RedisCluster) -> None:
    served: list[int] = []
    for index in range(3):
        async with node_client(redis_cluster, index) as node:
            info = (await node.execute_command("CLUSTER", "INFO")).decode()
            assert "cluster_state:ok" in info
            assert f"cluster_slots_ok:{SLOTS}" in info
            assert "cluster_known_nodes:3" in info and "cluster_size:3" in info
            table = (await node.execute_command("CLUSTER", "NODES")).decode().splitlines()
            assert len(table) == 3 and all("master" in line.split()[2] for line in table)
            # The slots this node itself serves (its own line, flagged "myself").
            (mine,) = (line.split() for line in table if "myself" in line.split()[2])
            for served_range in mine[8:]:
                first, _, last = served_range.partition("-")
                served.extend(range(int(first), int(last or first) + 1))
    assert sorted(served) == list(range(SLOTS))  # every slot, each on exactly one master


async def test_keys_land_on_every_master(
    redis_cluster: RedisCluster, redis_cluster_client: Any
) -> None:
    keys = [f"key-{i}" for i in range(30)]
    for key in keys:
        await redis_cluster_client.set(key, key.upper())
    owners = {key: redis_cluster.master_of(key) for key in keys}
    assert set(owners.values()) == {0, 1, 2}
    for key in keys:  # master_of agrees with the slot the client computed
        slot = await redis_cluster_client.cluster_keyslot(key)
        assert slot == redis_cluster_client.keyslot(key)
    for index in range(3):  # each master holds its keys, and only those
        async with node_client(redis_cluster, index) as node:
            held = {key.decode() for key in await node.keys("*")}
            assert held == {key for key, owner in owners.items() if owner == index}
    assert await redis_cluster_client.mget_nonatomic(keys) == [k.upper().encode() for k in keys]

    redis_cluster.flush()  # what the fixture does before each test: every master empty
    for index in range(3):
        async with node_client(redis_cluster, index) as node:
            assert await node.dbsize() == 0


async def test_a_transaction_stays_in_one_slot(
    redis_cluster: RedisCluster, redis_cluster_client: Any
) -> None:
    from redis.exceptions import ClusterCrossSlotError, CrossSlotTransactionError

    client = redis_cluster_client
    assert client.keyslot("{t}:a") == client.keyslot("{t}:b")
    async with client.pipeline(transaction=True) as pipe:
        pipe.set("{t}:a", "1").incr("{t}:b", 5).get("{t}:a")
        assert await pipe.execute() == [True, 5, b"1"]
    assert await client.get("{t}:b") == b"5"

    # No hash tag: two slots. redis-py refuses the transaction before sending anything...
    assert client.keyslot("a") != client.keyslot("b")
    with pytest.raises(CrossSlotTransactionError):
        async with client.pipeline(transaction=True) as pipe:
            pipe.set("a", "1").set("b", "2")
            await pipe.execute()
    assert await client.exists("a", "b") == 0

    # ... and so does the server: a MULTI over two slots of the same master, sent directly.
    index = redis_cluster.master_of("a")
    other = next(
        key for key in (f"k{i}" for i in range(1000)) if redis_cluster.master_of(key) == index
    )
    assert client.keyslot(other) != client.keyslot("a")
    async with node_client(redis_cluster, index) as node:
        with pytest.raises(ClusterCrossSlotError):
            async with node.pipeline(transaction=True) as pipe:
                pipe.set("a", "1").set(other, "2")
                await pipe.execute()
        assert await node.exists("a") == await node.exists(other) == 0  # nothing was written


async def test_a_killed_master_comes_back_with_its_slots_and_keys(
    redis_cluster: RedisCluster, redis_cluster_client: Any
) -> None:
    client = redis_cluster_client
    keys = [f"key-{i}" for i in range(30)]
    for key in keys:
        await client.set(key, key.upper())
    index = redis_cluster.master_of("key-0")
    on_it = [key for key in keys if redis_cluster.master_of(key) == index]
    assert on_it, "no key on the master restarted"

    redis_cluster.restart(index, kill=True)  # SIGKILL: only the AOF saves its keys

    # restart() returned: the cluster is ok on every node, the restarted master serves at once.
    for other in range(3):
        async with node_client(redis_cluster, other) as node:
            assert b"cluster_state:ok" in await node.execute_command("CLUSTER", "INFO")
    assert redis_cluster.master_of("key-0") == index  # its slots, from its nodes.conf
    async with node_client(redis_cluster, index) as node:  # its keys, from its AOF
        assert sorted(key.decode() for key in await node.keys("*")) == sorted(on_it)
        assert await node.get(on_it[0]) == on_it[0].upper().encode()  # no CLUSTERDOWN
    # The cluster client's connection to it broke: it reconnects and reads and writes.
    assert await client.mget_nonatomic(keys) == [key.upper().encode() for key in keys]
    await client.set("key-0", "again")
    assert await client.get("key-0") == b"again"
