"""Shared pieces of the Redis tests: a real redis-server per test (never fakeredis), scripted
jobs on FakeApiServer with their known outcome, and the report lines the run prints."""

from __future__ import annotations

import random
import shutil
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

import async_jobs as aj
from async_jobs.testing import FakeApiServer, RedisServer

from .conftest import FAST_RETRY, TOKEN

#: Lines printed in pytest's terminal summary (figures of the fleet tests).
REPORT: list[str] = []

ZOO_FINALS = {"completed": "succeeded", "failed": "failed"}
CONVERSION_FINALS = {"success": "succeeded", "error_user": "failed", "canceled": "canceled"}
METAFOLD_FINALS = {"success": "succeeded", "failure": "failed", "canceled": "canceled"}


def unavailable(reason: str) -> None:
    """Skip (which fails the run under CI=true, see ``tests/_no_skips.py``)."""
    pytest.skip(reason)


def redis_module() -> Any:
    try:
        import redis.asyncio
    except ImportError:
        unavailable("the redis package is not installed (pip install -e '.[test]')")
    return redis.asyncio


@dataclass
class Script:
    """Jobs created on a FakeApiServer: how to name them and how they will end."""

    jobs: list[tuple[str, tuple[str, ...]]]  # (kind, ids) per job
    truth: dict[str, str]  # job id -> final JobState value

    def refs(self, *clients: aj.ZooClient | aj.MetafoldClient) -> list[aj.JobRef[Any]]:
        refs = []
        for kind, ids in self.jobs:
            for client in clients:
                ref = client.job_ref(kind, ids)
                if ref is not None:
                    refs.append(ref)
                    break
        return refs


def script_jobs(
    server: FakeApiServer,
    count: int,
    *,
    seed: int = 7,
    lead: float = 0.3,
    window: float = 3.0,
    hold: float = 0.0,
) -> Script:
    """``count`` jobs, a third each of Zoo operations, conversions (2 datasets) and Metafold
    jobs (2 projects), terminal at random within ``[lead, lead + window]`` seconds. With a
    ``hold``, every job stays queued ``hold`` seconds first: a test moves the fake's clock
    on by ``hold`` to start the lifecycles when it is ready (after submitting, say)."""
    rng = random.Random(seed)
    jobs: list[tuple[str, tuple[str, ...]]] = []
    truth: dict[str, str] = {}
    datasets = [server.conversions.add_dataset() for _ in range(2)]
    projects = ["proj-a", "proj-b"]

    def split() -> tuple[float, float]:
        end = lead + rng.uniform(0, window)
        pending = rng.uniform(0, end)
        return hold + pending, end - pending

    for index in range(count):
        pending, running = split()
        if index % 3 == 0:
            final = rng.choice(["completed", "completed", "failed"])
            op = server.zoo.add_operation(
                "file_volume",
                [("queued", pending), ("in_progress", running), (final, None)],
                error="bad mesh",
            )
            jobs.append(("zoo.async_operation", (op.id,)))
            truth[op.id] = ZOO_FINALS[final]
        elif index % 3 == 1:
            final = rng.choice(["success", "success", "error_user", "canceled"])
            dataset = datasets[index % 2]
            conv = server.conversions.add_conversion(
                dataset,
                [("queued", pending), ("in_progress", running), (final, None)],
                error="geometry differs",
            )
            jobs.append(("zoo.dataset_conversion", (dataset, conv.id)))
            truth[conv.id] = CONVERSION_FINALS[final]
        else:
            final = rng.choice(["success", "success", "failure", "canceled"])
            project = projects[index % 2]
            job = server.metafold.add_job(
                project,
                timeline=[("pending", pending), ("started", running), (final, None)],
                error="mesh too large",
            )
            jobs.append(("metafold.job", (project, job.id)))
            truth[job.id] = METAFOLD_FINALS[final]
    return Script(jobs, truth)


def clients(server: FakeApiServer, **options: Any) -> tuple[aj.ZooClient, aj.MetafoldClient]:
    zoo = aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY, timeout=5, **options)
    mf = aj.MetafoldClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY, timeout=5, **options)
    return zoo, mf


async def until(
    check: Callable[[], Awaitable[bool]], timeout: float, *, every: float = 0.02
) -> None:
    """Wait until ``await check()`` holds; Redis errors meanwhile (a restart) count as no."""
    redis_module()
    from redis.exceptions import RedisError

    with anyio.fail_after(timeout):
        while True:
            try:
                if await check():
                    return
            except (RedisError, OSError):
                pass
            await anyio.sleep(every)


def server_truth(server: FakeApiServer, script: Script) -> dict[str, str]:
    """What the server says now of every scripted job, as JobState values."""
    truth = {}
    for kind, ids in script.jobs:
        if kind == "zoo.async_operation":
            truth[ids[0]] = ZOO_FINALS.get(server.zoo.status(ids[0]), "not terminal")
        elif kind == "zoo.dataset_conversion":
            status = server.conversions.state(ids[1])[0]
            truth[ids[1]] = CONVERSION_FINALS.get(status, "not terminal")
        else:
            state = server.metafold.state(ids[0], ids[1])
            truth[ids[1]] = METAFOLD_FINALS.get(state, "not terminal")
    return truth


def restart_empty(server: RedisServer) -> None:
    """Restart ``server`` with its data lost, as one without persistence would come back."""
    server.stop()
    for path in server.dir.glob("appendonly*"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    server.start()


#: ``await hook(commands, reply)``: called with the commands a connection sent since its last
#: reply and the first bytes of the reply, before they are forwarded; False drops the connection.
ReplyHook = Callable[[bytes, bytes], Awaitable[bool]]


def sent(commands: bytes, name: str, *args: str) -> bool:
    """Whether ``commands`` (RESP as sent by redis-py) hold command ``name`` with ``args``."""
    words = [name.upper(), *args]
    return b"".join(b"$%d\r\n%s\r\n" % (len(w), w.encode()) for w in words) in commands


class RedisProxy:
    """A TCP proxy in front of a real redis-server, so that a test can act at an exact point
    of the protocol: between a command and its reply (write a key from another connection,
    or drop the connection so the client never sees a reply the server did send). Every
    byte goes to and comes from the real server; only the timing is the test's."""

    def __init__(self, server: RedisServer) -> None:
        self.target = (server.host, server.port)
        self.host = "127.0.0.1"
        self.port = 0
        self.on_reply: ReplyHook | None = None
        #: Connections dropped by :attr:`on_reply` or :attr:`cut_before`.
        self.dropped = 0
        #: Bytes: the next time a client sends them, only what comes before reaches the
        #: server and the connection drops there (once; then back to None).
        self.cut_before: bytes | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> RedisProxy:
        async with AsyncExitStack() as stack:
            listener = await stack.enter_async_context(
                await anyio.create_tcp_listener(local_host=self.host, local_port=0)
            )
            self.port = listener.extra(SocketAttribute.local_port)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # runs first: the serving ends
            tg.start_soon(listener.serve, self._serve)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _serve(self, client: SocketStream) -> None:
        closed = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
        async with client, anyio.create_task_group() as tg:
            try:
                upstream = await anyio.connect_tcp(*self.target)
            except OSError:
                return  # the server is down: so is this connection
            commands = bytearray()

            async def up() -> None:
                try:
                    async for chunk in client:
                        cut = self.cut_before
                        if cut is not None and cut in chunk:
                            self.cut_before = None
                            self.dropped += 1
                            await upstream.send(chunk[: chunk.index(cut)])
                            break
                        commands.extend(chunk)
                        await upstream.send(chunk)
                except closed:
                    pass
                tg.cancel_scope.cancel()

            async def down() -> None:
                try:
                    async for chunk in upstream:
                        asked = bytes(commands)
                        commands.clear()
                        hook = self.on_reply
                        if asked and hook is not None and not await hook(asked, chunk):
                            self.dropped += 1
                            break
                        await client.send(chunk)
                except closed:
                    pass
                tg.cancel_scope.cancel()

            async with upstream:
                tg.start_soon(up)
                tg.start_soon(down)
                await anyio.sleep_forever()


#: The stream of the one partition of ``DurableWatches(redis, partitions=1)`` (the unit tests'
#: watches), and the pattern of its jobs' watch strings.
WATCHES = "{async_jobs:watches:0}"
JOBS = "{async_jobs:watches:*}:job:*"


def durable(redis: Any, **options: Any) -> Any:
    """``DurableWatches(redis, partitions=1, **options)``: one stream (:data:`WATCHES`), for
    the tests that look at it."""
    from async_jobs.contrib.redis import DurableWatches

    return DurableWatches(redis, **{"partitions": 1, **options})
