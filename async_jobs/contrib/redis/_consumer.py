"""The stream commands of one consumer of the watches group, with their replies parsed: what a
worker reads, claims, refreshes, drops and hands over."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_errors

from ..._redact import get_logger
from ._replies import Entry, _entries, _fields, _str

if TYPE_CHECKING:
    from ._watches import DurableWatches

logger: logging.Logger = get_logger("async_jobs.redis")

#: Reset the idle time of the given entries that the pending list still gives to ARGV[2]
#: (``XCLAIM JUSTID``), atomically: a plain XPENDING then XCLAIM would take back an entry that
#: another worker claimed in between (both workers would then handle it).
REFRESH_OWN_SCRIPT = """
for i = 3, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if entry and entry[2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
"""
#: Remove from the group (``XGROUP DELCONSUMER``) every consumer other than ARGV[2] that holds
#: no pending entry and has been idle (``XINFO CONSUMERS``: since its last read or claim) for
#: more than ARGV[3] ms; the names removed. One script, so that no consumer can be given an
#: entry between the check and the removal (deleting a consumer drops its pending entries).
REMOVE_DEAD_SCRIPT = """
redis.replicate_commands()
local removed = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
"""
#: Mark ARGV[4..] idle for ARGV[3] ms (``XCLAIM ... IDLE ... JUSTID``) for this consumer
#: (ARGV[2]) if it still holds them, and take one off each one's delivery count: the worker
#: that takes a handed-over entry over adds it back, so a clean stop (a rolling deploy) costs
#: a watch nothing against ``max_deliveries``; only a crash does.
HAND_OVER_SCRIPT = """
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  local entry = pending[1]
  if entry and entry[2] == ARGV[2] then
    local count = math.max(tonumber(entry[4]) - 1, 0)
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3],
      'RETRYCOUNT', count, 'JUSTID')
  end
end
return 0
"""
#: A stream id above any real one: ``XREADGROUP`` of this consumer's pending entries after it
#: reads nothing, yet counts as this consumer's interaction (resets its ``XINFO CONSUMERS``
#: idle time, which a blocking read that times out does not do).
_TOP = "18446744073709551615-0"
#: The cursor ``XAUTOCLAIM`` starts from and returns once it went through the pending list.
NO_MORE = "0-0"
_PAGE = 1000


class Consumer:
    """``watches.consumer`` in ``watches.group`` on the stream of one partition."""

    def __init__(self, watches: DurableWatches, partition: int) -> None:
        self.watches = watches
        self.partition = partition
        self.stream = watches.keys.stream_of(partition)
        self.redis = watches.redis
        self.name = watches.consumer

    async def _eval(self, script: str, *args: str | int) -> Any:
        """Run ``script`` on this partition's stream. ``EVAL``, not ``EVALSHA``: a restarted
        node (or a cluster master) has lost its script cache, and the text is short."""
        return await self.redis.eval(script, 1, self.stream, *args)

    async def read(self, cursor: str, count: int, block: float) -> list[Entry]:
        """``XREADGROUP``: new entries (cursor ``>``, waiting up to ``block`` seconds for
        some), or this consumer's own pending entries after ``cursor``."""
        w = self.watches
        await w.ensure_group(self.partition)
        if cursor == ">":
            reply = await self.redis.xreadgroup(
                w.group, self.name, {self.stream: ">"}, count=count, block=max(int(block * 1000), 1)
            )
        else:
            reply = await self.redis.xreadgroup(
                w.group, self.name, {self.stream: cursor}, count=count
            )
        return _entries(reply)

    async def touch(self) -> None:
        """Reset this consumer's idle time in the group (creating it if missing), without
        reading or claiming anything: how a live worker with no work shows it is alive."""
        w = self.watches
        await w.ensure_group(self.partition)
        await self.redis.xreadgroup(w.group, self.name, {self.stream: _TOP}, count=1)

    async def autoclaim(self, start: str, count: int, idle_ms: int) -> tuple[str, list[Entry]]:
        """``XAUTOCLAIM`` entries idle for ``idle_ms``: the next cursor and the entries."""
        w = self.watches
        await w.ensure_group(self.partition)
        reply = await self.redis.xautoclaim(
            self.stream, w.group, self.name, min_idle_time=idle_ms, start_id=start, count=count
        )
        # Redis 6.2 claims an entry deleted while pending as a nil, without its id: it is
        # this consumer's now, and the next re-read of its own pending entries (the keepalive
        # sees it) acknowledges it.
        claimed = [(_str(i), _fields(raw)) for i, raw in reply[1] if i is not None]
        return _str(reply[0]), claimed

    async def drop(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge and delete entries there is nothing to do for."""
        w = self.watches
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(self.stream, w.group, *entry_ids)
            pipe.xdel(self.stream, *entry_ids)
            await pipe.execute()

    async def owners(self, keys: Sequence[str]) -> list[str | None]:
        """The current watch id of each job (by ref key), None for a job not watched."""
        if not keys:
            return []
        job_keys = [self.watches.keys.job_key(self.partition, key) for key in keys]
        values = await self.redis.mget(job_keys)
        return [None if value is None else _str(value) for value in values]

    async def own_pending(self) -> dict[str, int]:
        """Every entry the group's pending list attributes to this consumer: its id and how
        long ago (ms) it was delivered or last claimed."""
        ids: dict[str, int] = {}
        start = "-"
        while True:
            page = await self.redis.xpending_range(
                self.stream,
                self.watches.group,
                min=start,
                max="+",
                count=_PAGE,
                consumername=self.name,
            )
            ids.update(
                (_str(item["message_id"]), int(item["time_since_delivered"])) for item in page
            )
            if len(page) < _PAGE:
                return ids
            start = "(" + _str(page[-1]["message_id"])

    async def deliveries(self, entry_ids: Sequence[str]) -> dict[str, int]:
        """How many times each entry was delivered (``XPENDING``'s times-delivered; an entry
        no longer pending is left out)."""
        if not entry_ids:
            return {}
        w = self.watches
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xpending_range(self.stream, w.group, min=entry_id, max=entry_id, count=1)
            pages = await pipe.execute()
        return {
            _str(item["message_id"]): int(item["times_delivered"])
            for page in pages
            for item in page
        }

    async def remove_dead(self, idle_ms: int) -> list[str]:
        """Remove the other consumers that hold nothing and were idle for more than
        ``idle_ms`` (:data:`REMOVE_DEAD_SCRIPT`); their names."""
        w = self.watches
        removed = await self._eval(REMOVE_DEAD_SCRIPT, w.group, self.name, idle_ms)
        return [_str(name) for name in removed or ()]

    async def refresh(self, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of the entries still this consumer's (:data:`REFRESH_OWN_SCRIPT`)."""
        for start in range(0, len(entry_ids), _PAGE):
            page = entry_ids[start : start + _PAGE]
            await self._eval(REFRESH_OWN_SCRIPT, self.watches.group, self.name, *page)

    async def hand_over(self, entry_ids: Sequence[str], idle_ms: int) -> None:
        """Mark entries as idle for ``idle_ms`` already, so the other workers take them over
        at their next pass, without counting the takeover as a delivery
        (:data:`HAND_OVER_SCRIPT`; best effort: otherwise they wait)."""
        w = self.watches
        try:
            for start in range(0, len(entry_ids), _PAGE):
                page = entry_ids[start : start + _PAGE]
                await self._eval(HAND_OVER_SCRIPT, w.group, self.name, idle_ms, *page)
        except redis_errors.RedisError as exc:
            logger.debug("could not hand over %d watches: %s", len(entry_ids), exc)

    async def forget(self) -> None:
        """Leave the group's consumer list if this consumer holds nothing (best effort)."""
        try:
            mine = await self.redis.xpending_range(
                self.stream,
                self.watches.group,
                min="-",
                max="+",
                count=1,
                consumername=self.name,
            )
            if not mine:
                await self.redis.xgroup_delconsumer(self.stream, self.watches.group, self.name)
        except redis_errors.RedisError as exc:
            logger.debug("could not remove consumer %s: %s", self.name, exc)
