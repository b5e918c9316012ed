"""The records async_jobs.contrib.redis keeps in Redis streams (msgspec Structs): their fields
on the wire, round trips, and what a missing or garbage field does; pure (no event loop), plus
one worker run showing what it does with malformed entries."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import async_jobs as aj
from async_jobs.contrib.redis._records import (
    MAX_CONTEXT_BYTES,
    DeadRecord,
    HandledRecord,
    RecordError,
    WatchEntry,
    encode_context,
)
from async_jobs.testing import FakeApiServer

from ._redis import WATCHES, clients, until

POLL = aj.PollPolicy(initial=0.05, multiplier=1.5, maximum=0.2, jitter=0.2)

ENTRY = WatchEntry(
    watch="5f0c2a9d1e7b4c33",
    key="zoo.async_operation:op-1",
    token="zoo.async_operation:op-1",
    context='{"order":42}',
    submitted="1700000000.123456",
)
HANDLED = HandledRecord(
    key="zoo.async_operation:op-1",
    id="op-1",
    state=aj.JobState.SUCCEEDED,
    job='{"id":"op-1","status":"completed","note":"é"}',
    context='{"order":42}',
    watch="5f0c2a9d1e7b4c33",
    entry="1700000000123-0",
    partition=3,
    consumer="host-1-abcdef",
    handled_at=1700000001.5,
)
DEAD = DeadRecord(
    key="zoo.async_operation:op-1",
    token="zoo.async_operation:op-1",
    context="{}",
    error="RuntimeError: boom",
    attempts=3,
    watch="5f0c2a9d1e7b4c33",
    entry="1700000000123-0",
    partition=3,
    consumer="host-1-abcdef",
    failed_at=1700000002.25,
)


def as_redis_returns(fields: dict[str, Any]) -> dict[bytes, bytes]:
    """What ``XRANGE`` gives back on a connection that does not decode responses."""
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


# -- the wire ---------------------------------------------------------------------------------


def test_watch_entry_fields_on_the_wire() -> None:
    assert ENTRY.encode() == {
        "v": "1",
        "watch": "5f0c2a9d1e7b4c33",
        "key": "zoo.async_operation:op-1",
        "token": "zoo.async_operation:op-1",
        "context": '{"order":42}',
        "submitted": "1700000000.123456",
    }
    assert list(ENTRY.encode()) == ["v", "watch", "key", "token", "context", "submitted"]


def test_handled_record_fields_on_the_wire() -> None:
    assert HANDLED.encode() == {
        "key": "zoo.async_operation:op-1",
        "id": "op-1",
        "state": "succeeded",
        "job": '{"id":"op-1","status":"completed","note":"é"}'.encode(),
        "context": '{"order":42}',
        "watch": "5f0c2a9d1e7b4c33",
        "entry": "1700000000123-0",
        "partition": "3",
        "consumer": "host-1-abcdef",
        "handled_at": "1700000001.500000",
    }
    assert list(HANDLED.encode())[:4] == ["key", "id", "state", "job"]


def test_dead_record_fields_on_the_wire() -> None:
    fields = DEAD.encode()
    assert fields == {
        "key": "zoo.async_operation:op-1",
        "token": "zoo.async_operation:op-1",
        "context": "{}",
        "error": "RuntimeError: boom",
        "attempts": "3",
        "watch": "5f0c2a9d1e7b4c33",
        "entry": "1700000000123-0",
        "partition": "3",
        "consumer": "host-1-abcdef",
        "failed_at": "1700000002.250000",
        "job": b"",  # the watch failed: no terminal job
    }
    assert list(fields)[-2:] == ["failed_at", "job"]


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [ENTRY, HANDLED, DEAD], ids=lambda r: type(r).__name__)
def test_round_trip_through_text_and_bytes(record: Any) -> None:
    fields = record.encode()
    assert type(record).decode(fields) == record
    assert type(record).decode(as_redis_returns(fields)) == record


def test_unknown_fields_are_ignored_and_optional_ones_defaulted() -> None:
    entry = WatchEntry.decode({"watch": "w", "key": "k", "token": "t", "added_later": "x"})
    assert entry == WatchEntry(watch="w", key="k", token="t")
    assert (entry.v, entry.context, entry.submitted) == ("1", "{}", "")


def test_the_submission_time_is_never_a_reason_to_reject_an_entry() -> None:
    # No worker reads it: an entry written by hand with an odd one is watched as before.
    entry = WatchEntry.decode({"watch": "w", "key": "k", "token": "t", "submitted": "soon"})
    assert entry.submitted == "soon"


# -- missing and garbage fields ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["watch", "key", "token"])
def test_watch_entry_without_a_required_field_is_a_record_error(name: str) -> None:
    fields = ENTRY.encode()
    del fields[name]
    with pytest.raises(RecordError, match=rf"WatchEntry: .*missing required field `{name}`"):
        WatchEntry.decode(fields)
    fields[name] = ""
    with pytest.raises(RecordError, match=rf"WatchEntry: .*length >= 1 - at `\$\.{name}`"):
        WatchEntry.decode(fields)


def test_an_unreadable_entry_is_salvaged_for_its_dead_letter_record() -> None:
    salvaged = WatchEntry.salvage({b"key": b"x", b"token": b""})
    assert (salvaged.key, salvaged.token, salvaged.watch, salvaged.context) == ("x", "", "", "{}")


@pytest.mark.parametrize(
    ("record", "name", "garbage"),
    [(DEAD, "attempts", "three"), (DEAD, "failed_at", "later"), (HANDLED, "handled_at", "x")],
)
def test_garbage_in_a_typed_field_is_a_record_error(record: Any, name: str, garbage: str) -> None:
    fields = {**record.encode(), name: garbage}
    with pytest.raises(RecordError, match=rf"{type(record).__name__}: .* at `\$\.{name}`"):
        type(record).decode(fields)


def test_an_unknown_state_in_a_result_is_a_record_error() -> None:
    with pytest.raises(RecordError, match=r"HandledRecord: .* at `\$\.state`"):
        HandledRecord.decode({**HANDLED.encode(), "state": "exploded"})


def test_context() -> None:
    assert encode_context(None) == "{}"
    assert encode_context({"order": 42}) == '{"order":42}'
    assert WatchEntry(watch="w", key="k", token="t", context='{"a":1}').decode_context() == {"a": 1}
    assert WatchEntry(watch="w", key="k", token="t", context="[1]").decode_context() == {}
    with pytest.raises(RecordError, match="context is not JSON"):
        WatchEntry(watch="w", key="k", token="t", context="{").decode_context()
    with pytest.raises(TypeError, match="dict or None"):
        encode_context([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JSON-serialisable"):
        encode_context({"x": object()})
    with pytest.raises(ValueError, match="at most"):
        encode_context({"x": "y" * MAX_CONTEXT_BYTES})


# -- what a worker does with malformed entries ------------------------------------------------


@pytest.mark.anyio
async def test_worker_dead_letters_malformed_entries_once_and_handles_odd_ones(
    server: FakeApiServer, redis_client: Any
) -> None:
    from async_jobs.contrib.redis import DurableWatches

    dw = DurableWatches(redis_client, partitions=1)
    zoo, _ = clients(server)
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(3)]
    refs = [zoo.async_operation(op.id) for op in ops]
    handled: list[str] = []

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled.append(job.id)

    async with zoo:
        await dw.ensure_group()
        # Context not JSON: dead-lettered at once, its fields kept verbatim.
        await dw.redis.set(dw.job_key(refs[0]), "w0")
        bad = WatchEntry(watch="w0", key=refs[0].key, token=refs[0].to_token(), context="{")
        await redis_client.xadd(WATCHES, bad.encode())
        # No watch id: dead-lettered at once, before its job's owner is even looked at.
        await redis_client.xadd(WATCHES, {"key": refs[1].key, "token": refs[1].to_token()})
        # Odd but readable (unknown field, odd submission time): handled.
        await dw.redis.set(dw.job_key(refs[2]), "w2")
        odd = {**WatchEntry(watch="w2", key=refs[2].key, token=refs[2].to_token()).encode()}
        await redis_client.xadd(WATCHES, {**odd, "submitted": "soon", "extra": "1"})

        async def settled() -> bool:
            return worker.dead_lettered + worker.handled >= 3

        # No keepalive or claim pass in the test's time: the first read must do it all.
        async with dw.run(zoo, handler=handler, poll=POLL, claim_idle=60, keepalive=59) as worker:
            await until(settled, 30)
    assert handled == [ops[2].id] and worker.dead_lettered == 2
    dead = sorted(
        (DeadRecord.decode(fields) for _, fields in await redis_client.xrange(dw.dead_letter)),
        key=lambda record: record.error,
    )
    assert [(d.error, d.attempts, d.job) for d in dead] == [
        ("unreadable entry: context is not JSON", 1, ""),
        ("unreadable entry: no watch, key or token", 1, ""),
    ]
    assert (dead[0].key, dead[0].watch, dead[0].context) == (refs[0].key, "w0", "{")
    assert (dead[1].key, dead[1].watch, dead[1].context) == (refs[1].key, "", "{}")
    ((_, fields),) = await redis_client.xrange(dw.results)
    result = HandledRecord.decode(fields)
    assert (result.id, result.state, result.watch) == (ops[2].id, aj.JobState.SUCCEEDED, "w2")
    assert msgspec.json.decode(result.job)["id"] == ops[2].id
    assert (await dw.status()).pending == 0
