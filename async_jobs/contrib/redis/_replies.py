"""Redis replies as plain Python: text whatever the connection decodes, stream entries whether
the server speaks RESP2 or RESP3, the errors a worker tells apart, and a client's address."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis, RedisCluster

#: A Redis client the durable watches work with: one server, or a Redis Cluster.
RedisClient = Redis | RedisCluster

#: One stream entry: its id and its fields.
Entry = tuple[str, dict[str, str]]


def _str(value: Any) -> str:
    """A Redis reply as text, whether the connection decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _fields(raw: Any) -> dict[str, str]:
    """A stream entry's fields as text (an empty dict for a nil: an entry deleted meanwhile)."""
    return {_str(k): _str(v) for k, v in (raw or {}).items()}


def _entries(reply: Any) -> list[Entry]:
    """``(id, fields)`` pairs of an ``XREADGROUP`` reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    groups: Iterable[Any] = (
        reply.values() if isinstance(reply, Mapping) else (entries for _, entries in reply)
    )
    out: list[Entry] = []
    for entries in groups:
        if entries and isinstance(entries[0], list):  # RESP3 nests one more level
            entries = [entry for inner in entries for entry in inner]
        out.extend((_str(entry_id), _fields(raw)) for entry_id, raw in entries)
    return out


def _is_nogroup(exc: BaseException) -> bool:
    """Whether ``exc`` says the consumer group (or its stream) is gone."""
    return isinstance(exc, redis_errors.ResponseError) and str(exc).startswith("NOGROUP")


def connection_kwargs(redis: Any) -> dict[str, Any]:
    """The connection options of a ``Redis`` (its pool's) or a ``RedisCluster`` (its own)."""
    pool = getattr(redis, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if kwargs is None:
        kwargs = getattr(redis, "connection_kwargs", None)
    return dict(kwargs or {})


def _redis_address(redis: Any) -> str:
    """``host:port`` of a Redis client (a cluster's first node), for log lines (never its
    password)."""
    get_default_node = getattr(redis, "get_default_node", None)
    if get_default_node is not None:
        node = get_default_node()
        if node is not None:
            return f"redis cluster {node.host}:{node.port}"
    kwargs = connection_kwargs(redis)
    if "path" in kwargs:
        return f"redis at {kwargs['path']}"
    return f"redis at {kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
