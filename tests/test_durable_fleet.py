"""A fleet of durable workers (real processes, ``tests/redis_worker.py``) sharing watches on a
real redis-server, with jobs on FakeApiServer (in this process) that finish at random within
a second of being submitted: sharing 1,500 jobs, a worker killed with SIGKILL, Redis restarted
mid-run.

Delivery is at least once: every job must be handled, with the final state the server
reports; duplicates are allowed, counted and printed in the run's summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from async_jobs.testing import FakeApiServer, RedisServer

from ._redis import REPORT, clients, script_jobs, server_truth, until
from .conftest import TOKEN

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
#: Fake seconds every job stays queued: the clock is moved on by this once all are submitted.
HOLD = 3600.0


class WorkerProcess:
    """``python -m tests.redis_worker`` with its output in files."""

    def __init__(self, name: str, redis: RedisServer, api: str, tmp: Path, *args: str) -> None:
        self.name = name
        self.out = tmp / f"{name}.out"
        self.terminated = False
        self.err = tmp / f"{name}.err"
        env = {**os.environ, "ZOO_API_TOKEN": TOKEN, "METAFOLD_ACCESS_TOKEN": TOKEN}
        command = [sys.executable, "-m", "tests.redis_worker", "--redis-port", str(redis.port)]
        command += ["--api", api, "--consumer", name, *args]
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=ROOT, env=env)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited early:\n{self.err.read_text()[-3000:]}")
        return '"ready"' in self.out.read_text()

    def terminate(self) -> None:
        """SIGTERM (once: a second one, once it stopped listening, would kill it)."""
        if self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> dict[str, Any]:
        """SIGTERM; its final counters."""
        self.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            message = f"{self.name} did not stop:\n{self.err.read_text()[-3000:]}"
            raise AssertionError(message) from None
        lines = self.out.read_text().strip().splitlines()
        assert self.proc.returncode == 0, f"{self.name}:\n{self.err.read_text()[-3000:]}"
        return dict(json.loads(lines[-1]))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class Fleet:
    def __init__(self, redis: RedisServer, api: str, tmp: Path, count: int, *args: str) -> None:
        self.workers = [WorkerProcess(f"w{i}", redis, api, tmp, *args) for i in range(count)]

    async def ready(self) -> None:
        await until(self._all_ready, 60)

    async def _all_ready(self) -> bool:
        return all(worker.ready() for worker in self.workers)

    def stop(self) -> list[dict[str, Any]]:
        running = [w for w in self.workers if w.proc.returncode is None]
        for worker in running:  # all at once: each takes a moment to hand over and close
            worker.terminate()
        return [w.stop() for w in running]

    def close(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.kill()

    def logs(self, tail: int = 2000) -> str:
        return "\n".join(f"--- {w.name}\n{w.err.read_text()[-tail:]}" for w in self.workers)


async def run_fleet(
    server: FakeApiServer,
    redis_server: RedisServer,
    redis: Any,
    tmp_path: Path,
    *,
    jobs: int,
    workers: int,
    trouble: Any = None,
    worker_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Submit ``jobs`` jobs to ``workers`` worker processes, run ``trouble(fleet)`` meanwhile,
    wait until every job was handled; the figures."""
    from async_jobs.contrib.redis import DurableWatches

    fleet = Fleet(redis_server, server.url, tmp_path, workers, *worker_args)
    try:
        await fleet.ready()
        script = script_jobs(server, jobs, lead=0.1, window=0.8, hold=HOLD)
        dw = DurableWatches(redis)
        zoo, mf = clients(server)
        async with zoo, mf:
            started = time.monotonic()
            await dw.submit_many((ref, {"id": ref.ids[-1]}) for ref in script.refs(zoo, mf))
            submitted = time.monotonic() - started
            server.clock.advance(HOLD)  # the lifecycles start now, all submitted
            if trouble is not None:
                await trouble(fleet, dw)

            async def all_handled() -> bool:
                return int(await redis.hlen("t:count")) >= jobs

            try:
                await until(all_handled, 120)
            except TimeoutError:
                status = await dw.status()
                raise AssertionError(f"not all handled: {status}\n{fleet.logs()}") from None
            elapsed = time.monotonic() - started
            await until(lambda: _settled(dw), 30)
            status = await dw.status()
        stats = fleet.stop()
        logs = fleet.logs(tail=1_000_000)
    finally:
        fleet.close()
    counts = {k.decode(): int(v) for k, v in (await redis.hgetall("t:count")).items()}
    states = {k.decode(): v.decode() for k, v in (await redis.hgetall("t:state")).items()}
    assert await redis.hlen("t:bad_context") == 0
    truth = server_truth(server, script)
    assert "not terminal" not in truth.values()
    assert truth == script.truth
    assert states == truth  # the union of what the handlers saw is the server's truth
    assert set(counts) == set(truth)
    assert status.pending == 0 and status.dead_lettered == 0
    assert await redis.keys("async_jobs:watches:job:*") == []  # every watch ended
    return {
        "jobs": jobs,
        "duplicates": sum(counts.values()) - len(counts),
        "submit_s": round(submitted, 2),
        "elapsed_s": round(elapsed, 2),
        "workers": stats,
        "status": status,
        "logs": logs,
    }


async def _settled(dw: Any) -> bool:
    status = await dw.status()
    return bool(status.pending == 0 and sum(status.in_flight.values()) == 0)


def report(name: str, figures: dict[str, Any]) -> None:
    per_worker = ", ".join(
        f"{w['consumer']}: {w['handled']} handled/{w['claimed']} claimed/{w['lost']} lost"
        for w in figures["workers"]
    )
    line = (
        f"durable fleet, {name}: {figures['jobs']} jobs handled in {figures['elapsed_s']} s "
        f"(submitted in {figures['submit_s']} s), {figures['duplicates']} duplicate handler "
        f"runs; {per_worker}"
    )
    REPORT.append(line)
    print(line)


async def test_three_workers_share_1500_jobs(
    server: FakeApiServer, redis_server: RedisServer, redis_client: Any, tmp_path: Path
) -> None:
    figures = await run_fleet(server, redis_server, redis_client, tmp_path, jobs=1500, workers=3)
    report("3 workers", figures)
    handled = [w["handled"] for w in figures["workers"]]
    assert len(handled) == 3 and all(n > 0 for n in handled), handled  # shared
    assert sum(handled) == 1500 + figures["duplicates"]


async def test_worker_killed_with_sigkill_is_taken_over(
    server: FakeApiServer, redis_server: RedisServer, redis_client: Any, tmp_path: Path
) -> None:
    left: list[str] = []  # entries w0 still held once dead: only a takeover can move them

    async def kill_one(fleet: Fleet, dw: Any) -> None:
        async def holds_some() -> bool:
            status = await dw.status()
            return status.in_flight.get("w0", 0) >= 100 and await redis_client.hlen("t:count") > 0

        await until(holds_some, 30, every=0.05)
        fleet.workers[0].kill()
        pending = await redis_client.xpending_range(
            "async_jobs:watches", "async_jobs", min="-", max="+", count=10_000, consumername="w0"
        )
        left.extend(item["message_id"].decode() for item in pending)

    figures = await run_fleet(
        server,
        redis_server,
        redis_client,
        tmp_path,
        jobs=1500,
        workers=3,
        trouble=kill_one,
        worker_args=("--prefetch", "600", "--claim-idle", "0.6"),
    )
    report(f"SIGKILL of a worker holding {len(left)} unfinished watches", figures)
    # No job lost, every state right (run_fleet), and each watch w0 died with was handled
    # by a survivor: the results stream names the entry and its consumer.
    handled_by: dict[str, set[str]] = {}
    for _, fields in await redis_client.xrange("async_jobs:results"):
        handled_by.setdefault(fields[b"entry"].decode(), set()).add(fields[b"consumer"].decode())
    assert left, "w0 held nothing when killed"
    assert all(handled_by.get(entry, set()) - {"w0"} for entry in left)
    assert not any("w0" in handled_by.get(entry, set()) for entry in left)
    survivors = figures["workers"]
    assert len(survivors) == 2 and sum(w["claimed"] for w in survivors) > 0
    assert "w0" not in figures["status"].in_flight


async def test_redis_restart_mid_run(
    server: FakeApiServer, redis_server: RedisServer, redis_client: Any, tmp_path: Path
) -> None:
    async def restart(fleet: Fleet, dw: Any) -> None:
        async def some_handled() -> bool:
            return int(await redis_client.hlen("t:count")) >= 200

        await until(some_handled, 30, every=0.05)
        await anyio.to_thread.run_sync(partial(redis_server.restart, down_for=0.5))

    figures = await run_fleet(
        server, redis_server, redis_client, tmp_path, jobs=1500, workers=3, trouble=restart
    )
    report("Redis restarted (0.5 s down, AOF)", figures)
    assert sum(w["handled"] for w in figures["workers"]) >= 1500
    assert await redis_client.xlen("async_jobs:results") >= 1500  # results kept across it
