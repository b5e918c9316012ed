"""Benchmark: durable watches on Redis Streams versus an in-process Watcher (not a test).

The same jobs (FakeApiServer in its own process, same seed) over eight groups (the Zoo async
operations, the conversions of four datasets, the jobs of three Metafold projects) are
watched either by one ``aj.Watcher`` in one process (``in-process``), or submitted to
``async_jobs.contrib.redis.DurableWatches`` and handled by 1, 2, 4 or 8 worker processes
(``durable xN``) sharing a real ``redis-server`` (AOF on, ``appendfsync everysec``). Every
mode polls with the same PollPolicy and runs a no-op handler. Two phases per mode:

- throughput: ``--throughput-jobs`` jobs already terminal when submitted; jobs handled per
  second from the first submit (or add) to the last handler call;
- latency: ``--jobs`` jobs finishing at random within ``--window`` seconds after a
  ``--lead``; lag = handler call minus the job's terminal moment on the server, p50/p95. The
  durable modes' extra lag over the in-process p50/p95 is the latency durability adds.

Durable figures come from the results stream (one record per handled job, with its consumer
and ``handled_at``); duplicates (at-least-once delivery) are counted. The fake counts the
list requests of each group: a fleet lists each group as often as one Watcher does when
each group is listed by one worker per interval.

Usage: python -m benchmarks.durable [--jobs 3000] [--throughput-jobs 10000] [--window 10]
       [--lead 6] [--workers 1,2,4,8] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

import async_jobs as aj
from async_jobs.testing import RedisServer

from ._common import HERE, fake_server, machine, percentile, run_child, write_section

#: The same schedule for every mode: a fixed 0.5 s interval.
POLL = aj.PollPolicy(initial=0.5, multiplier=1.0, maximum=0.5, jitter=0.1)
CONCURRENCY = 32
TOKEN = "bench-token-0123456789"


def _load(jobs_file: str) -> list[dict[str, Any]]:
    with open(jobs_file) as handle:
        return list(json.load(handle))


async def _noop(job: Any, context: dict[str, Any]) -> None:
    return None


# -- the fake server, in its own process ------------------------------------------------------


async def _serve(count: int, lead: float, window: float, seed: int) -> None:
    """FakeApiServer with ``count`` jobs over eight groups (a third each Zoo operations,
    conversions of four datasets, jobs of three Metafold projects), terminal at random in
    [lead, lead + window] after ``go``: its clock stands still until ``go`` on stdin (which
    prints {started: the wall time it went}), so that worker processes can start first;
    prints {url, token, jobs}; ``stats`` on stdin prints {requests, lists: list requests per
    group}; EOF stops it."""
    import random
    import tempfile

    from async_jobs.testing import FakeApiServer

    rng = random.Random(seed)
    async with FakeApiServer(token=TOKEN) as server:
        server.clock.set_speed(0)
        datasets = [server.conversions.add_dataset() for _ in range(4)]
        jobs = []
        for index in range(count):
            end = lead + rng.uniform(0, window)
            started = rng.uniform(lead * 0.5, end)
            if index % 3 == 0:
                timeline = [
                    ("queued", started),
                    ("in_progress", end - started),
                    ("completed", None),
                ]
                op = server.zoo.add_operation("file_volume", timeline)
                job = {"kind": "zoo.async_operation", "ids": [op.id]}
            elif index % 3 == 1:
                dataset = datasets[index % 4]
                timeline = [("queued", started), ("in_progress", end - started), ("success", None)]
                conv = server.conversions.add_conversion(dataset, timeline)
                job = {"kind": "zoo.dataset_conversion", "ids": [dataset, conv.id]}
            else:
                project = f"bench-{index // 3 % 3}"
                timeline = [("pending", started), ("started", end - started), ("success", None)]
                mf_job = server.metafold.add_job(project, timeline=timeline)
                job = {"kind": "metafold.job", "ids": [project, mf_job.id]}
            jobs.append({**job, "end": end})
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(jobs, handle)
        print(json.dumps({"url": server.url, "token": TOKEN, "jobs": handle.name}), flush=True)
        async for line in anyio.wrap_file(sys.stdin):
            if line.strip() == "go":
                server.clock.set_speed(1.0)
                print(json.dumps({"started": time.time()}), flush=True)
            elif line.strip() == "stats":
                lists: Counter[str] = Counter()
                for request in server.requests:  # kept: a few per job
                    _count_list(lists, request.method, request.path, datasets)
                stats = {"requests": server.request_count, "lists": dict(lists)}
                print(json.dumps(stats), flush=True)


def _count_list(lists: Counter[str], method: str, path: str, datasets: list[str]) -> None:
    """Count a request that lists a group, by a name that is the same in every run (dataset
    ids are random)."""
    parts = path.strip("/").split("/")
    if method != "GET":
        return
    if parts == ["async", "operations"]:
        lists["operations"] += 1
    elif len(parts) == 4 and parts[0] == "org" and parts[3] == "conversions":
        lists[f"dataset {datasets.index(parts[2])}"] += 1
    elif len(parts) == 3 and parts[0] == "projects" and parts[2] == "jobs":
        lists[f"project {parts[1]}"] += 1


@asynccontextmanager
async def _clients(token: str, url: str) -> AsyncIterator[tuple[aj.ZooClient, aj.MetafoldClient]]:
    async with (
        aj.ZooClient(token=token, base_url=url) as zoo,
        aj.MetafoldClient(token=token, base_url=url) as mf,
    ):
        yield zoo, mf


def _ref(job: dict[str, Any], *clients: aj.ZooClient | aj.MetafoldClient) -> aj.JobRef[Any]:
    for client in clients:
        ref = client.job_ref(job["kind"], job["ids"])
        if ref is not None:
            return ref
    raise ValueError(f"no client for {job['kind']}")


# -- in-process child -------------------------------------------------------------------------


async def _in_process(url: str, token: str, jobs_file: str, go: str) -> dict[str, Any]:
    jobs = _load(jobs_file)
    done_at = {job["ids"][-1]: float(go) + job["end"] for job in jobs}
    handled: dict[str, float] = {}
    async with _clients(token, url) as (zoo, mf):
        started = time.time()
        watcher: aj.Watcher
        async with aj.Watcher(zoo, mf, poll=POLL, max_concurrency=CONCURRENCY) as watcher:
            for job in jobs:
                watcher.add(_ref(job, zoo, mf))
            async for final in watcher.as_completed():
                await _noop(final, {})
                handled[final.id] = time.time()
    return _figures(handled, done_at, started, duplicates=0, submit_s=0.0)


def _figures(
    handled: dict[str, float],
    done_at: dict[str, float],
    started: float,
    *,
    duplicates: int,
    submit_s: float,
) -> dict[str, Any]:
    lags = [handled[key] - done_at[key] for key in handled]
    wall = max(handled.values()) - started if handled else float("nan")
    return {
        "jobs": len(done_at),
        "handled": len(handled),
        "duplicates": duplicates,
        "submit_s": round(submit_s, 2),
        "wall_s": round(wall, 2),
        "jobs_per_s": round(len(handled) / wall, 1) if handled else 0.0,
        "lag_p50_s": round(percentile(lags, 0.50), 3),
        "lag_p95_s": round(percentile(lags, 0.95), 3),
    }


# -- durable worker child ---------------------------------------------------------------------


async def _worker(port: int, url: str, token: str, consumer: str) -> None:
    from redis.asyncio import Redis

    from async_jobs.contrib.redis import DurableWatches

    redis = Redis(host="127.0.0.1", port=port, socket_timeout=30)
    dw = DurableWatches(redis, consumer=consumer)
    async with _clients(token, url) as (zoo, mf):
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async with dw.run(
                zoo, mf, handler=_noop, concurrency=CONCURRENCY, poll=POLL, claim_idle=30.0
            ):
                print(json.dumps({"ready": consumer}), flush=True)
                async for _ in signals:
                    break
    await redis.aclose()


# -- coordinator ------------------------------------------------------------------------------


async def _durable(port: int, url: str, token: str, jobs_file: str, go: float) -> dict[str, Any]:
    from redis.asyncio import Redis

    from async_jobs.contrib.redis import DurableWatches

    jobs = _load(jobs_file)
    done_at = {job["ids"][-1]: go + job["end"] for job in jobs}
    redis = Redis(host="127.0.0.1", port=port)
    dw = DurableWatches(redis, results_maxlen=len(jobs) * 4)
    async with _clients(token, url) as (zoo, mf):
        refs = [_ref(job, zoo, mf) for job in jobs]
        started = time.time()
        await dw.submit_many(refs)
        submit_s = time.time() - started
    handled: dict[str, float] = {}
    runs: Counter[str] = Counter()
    consumers: Counter[str] = Counter()
    last = "0-0"
    with anyio.fail_after(600):
        while len(handled) < len(jobs):
            reply = await redis.xread({dw.results: last}, count=1000, block=500)
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    job_id = fields[b"id"].decode()
                    runs[job_id] += 1
                    consumers[fields[b"consumer"].decode()] += 1
                    handled.setdefault(job_id, float(fields[b"handled_at"]))
    await redis.aclose()
    duplicates = sum(runs.values()) - len(runs)
    figures = _figures(handled, done_at, started, duplicates=duplicates, submit_s=submit_s)
    figures["per_worker"] = sorted(consumers.values(), reverse=True)
    return figures


async def _balanced(port: int, workers: int) -> None:
    """Wait until ``workers`` live workers hold every partition in fair shares (a fleet
    that has settled: the runs measure it, not its start)."""
    from redis.asyncio import Redis

    from async_jobs.contrib.redis import DurableWatches

    redis = Redis(host="127.0.0.1", port=port)
    dw = DurableWatches(redis)
    with anyio.fail_after(60):
        while True:
            shares = sorted(len(held) for held in (await dw.status()).owned().values())
            share = dw.partitions // workers
            if len(shares) == workers and sum(shares) == dw.partitions and shares[0] >= share:
                break
            await anyio.sleep(0.1)
    await redis.aclose()


def _start_workers(count: int, port: int, server: dict[str, Any]) -> list[subprocess.Popen[str]]:
    procs = []
    for index in range(count):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.durable",
                "--worker",
                str(port),
                server["url"],
                server["token"],
                f"bench-{index}",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE.parent,
        )
        procs.append(proc)
    for proc in procs:
        assert proc.stdout is not None
        if "ready" not in proc.stdout.readline():
            raise RuntimeError("a durable worker did not start")
    return procs


def _stop_workers(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_mode(mode: str, phase: str, args: argparse.Namespace, redis: RedisServer) -> dict[str, Any]:
    """One mode and phase against a fresh FakeApiServer process (and an empty Redis)."""
    if phase == "throughput":
        options = [str(args.throughput_jobs), "0", "0"]
    else:
        options = [str(args.jobs), str(args.lead), str(args.window)]
    with fake_server("--serve", *options, module="benchmarks.durable") as (server, stats):
        if mode == "in-process":
            go = stats("go")["started"]
            figures = run_child(
                "benchmarks.durable",
                "--in-process",
                server["url"],
                server["token"],
                server["jobs"],
                str(go),
            )
        else:
            _flush(redis)
            count = int(mode.split("x")[-1])
            procs = _start_workers(count, redis.port, server)
            try:
                anyio.run(_balanced, redis.port, count)
                go = stats("go")["started"]
                figures = anyio.run(
                    _durable, redis.port, server["url"], server["token"], server["jobs"], go
                )
            finally:
                _stop_workers(procs)
        counted = stats()
        figures["requests"] = counted["requests"]
        figures["lists"] = counted["lists"]
    return figures


def _flush(redis: RedisServer) -> None:
    import socket

    with socket.create_connection((redis.host, redis.port), timeout=5) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        if not sock.recv(64).startswith(b"+OK"):
            raise RuntimeError("FLUSHALL failed")


def render(results: dict[tuple[str, str], dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "## durable: watches on Redis Streams versus an in-process Watcher",
        "",
        f"{machine()}; {_redis_version()}.",
        "",
        "Jobs over eight groups (a third each: Zoo async operations, conversions of four "
        "datasets, jobs of three Metafold projects) on FakeApiServer (its own process), a "
        "no-op handler, every mode polling every 0.5 s with 32 requests in flight per process. "
        "`durable xN`: the jobs are submitted (`submit_many`) to `DurableWatches` (16 "
        "partitions) and handled by N worker processes sharing one `redis-server` (AOF, "
        "`appendfsync everysec`), once they share the partitions; figures from its results "
        f"stream. Throughput: {args.throughput_jobs:,} jobs already terminal when submitted, "
        "handled per second from the first submit to the last handler call (submit time "
        f"included). Latency: {args.jobs:,} jobs finishing at random within {args.window:g} s "
        f"after a {args.lead:g} s lead; lag = handler call minus the job's terminal moment; "
        "added = the durable lag minus the in-process lag. Requests and list requests are the "
        "fake's counts in the latency run; lists per group per interval = the mode's list "
        "requests of each group over the in-process Watcher's (one lister), mean (max) over "
        "the groups. Workers, the fake server, Redis and the coordinator share the machine's "
        "cores.",
        "",
        "| mode | jobs/s | submit s | lag p50 s | lag p95 s | added p50 s | added p95 s "
        "| duplicates | jobs per worker (latency run) | requests per job | vs in-process "
        "| lists per group per interval |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    base = results.get(("in-process", "latency"))
    for mode in _modes(args):
        thr, lat = results[(mode, "throughput")], results[(mode, "latency")]
        if base is not None and mode != "in-process":
            added50 = f"{lat['lag_p50_s'] - base['lag_p50_s']:+.3f}"
            added95 = f"{lat['lag_p95_s'] - base['lag_p95_s']:+.3f}"
        else:
            added50 = added95 = "-"
        submit = f"{thr['submit_s']}" if mode != "in-process" else "-"
        split = "/".join(str(n) for n in lat.get("per_worker", [lat["handled"]]))
        per_job = lat["requests"] / lat["jobs"]
        versus = per_job / (base["requests"] / base["jobs"]) if base is not None else 1.0
        lists = "-"
        if base is not None:
            ratios = [lat["lists"].get(group, 0) / n for group, n in base["lists"].items() if n]
            if ratios:
                lists = f"{sum(ratios) / len(ratios):.2f} ({max(ratios):.2f})"
        lines.append(
            f"| {mode} | {thr['jobs_per_s']:,.0f} | {submit} | {lat['lag_p50_s']} | "
            f"{lat['lag_p95_s']} | {added50} | {added95} | "
            f"{thr['duplicates'] + lat['duplicates']} | {split} | {per_job:.3f} | "
            f"{versus:.3f}x | {lists} |"
        )
    durable = [mode for mode in _modes(args) if mode != "in-process"]
    if base is not None and durable:
        added = [results[(m, "latency")]["lag_p95_s"] - base["lag_p95_s"] for m in durable]
        rates = [results[(m, "throughput")]["jobs_per_s"] for m in durable]
        lines += [
            "",
            f"Durability adds {min(added):+.3f} to {max(added):+.3f} s to the p95 lag; "
            f"{min(rates):,.0f} to {max(rates):,.0f} jobs/s are handled durably against "
            f"{results[('in-process', 'throughput')]['jobs_per_s']:,.0f} in one process "
            "(each job costs a few Redis round trips: read, ownership check, a batched "
            "record, then ack + delete).",
        ]
    lines += [
        "",
        "Watches are partitioned by group and each partition is leased to one live worker, "
        "which alone lists its groups: a fleet of any size lists each group once per "
        "interval, as one Watcher does. The other side of it: the jobs of one group are "
        "handled by one worker, so a fleet spreads groups, not the jobs of one group. "
        "Changed from the previous run of this section: the jobs span eight groups (they "
        "were all Zoo operations, one group) and an 8-worker mode was added. Delivery is at "
        "least once; duplicates here are handler runs beyond the first per job.",
    ]
    return "\n".join(lines)


def _redis_version() -> str:
    from async_jobs.testing._redis_server import find_redis_server

    try:
        out = subprocess.run(
            [find_redis_server() or "redis-server", "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "redis-server ?"
    version = next((p for p in out.split() if p.startswith("v=")), "v=?")
    try:
        from importlib.metadata import version as package_version

        client = f", redis-py {package_version('redis')}"
    except Exception:
        client = ""
    return f"redis-server {version[2:]}{client}"


def _modes(args: argparse.Namespace) -> list[str]:
    return ["in-process", *(f"durable x{n}" for n in args.workers.split(","))]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--in-process":
        print(json.dumps(anyio.run(_in_process, *argv[1:5])))
        return
    if argv and argv[0] == "--serve":
        count, lead, window = argv[1:4]
        anyio.run(_serve, int(count), float(lead), float(window), 42)
        return
    if argv and argv[0] == "--worker":
        port, url, token, consumer = argv[1:5]
        anyio.run(_worker, int(port), url, token, consumer)
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.durable")
    parser.add_argument("--jobs", type=int, default=3000, help="jobs in the latency runs")
    parser.add_argument("--throughput-jobs", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--lead", type=float, default=6.0)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with RedisServer(appendfsync="everysec") as redis:
        for mode in _modes(args):
            for phase in ("throughput", "latency"):
                results[(mode, phase)] = run_mode(mode, phase, args, redis)
                print(mode, phase, json.dumps(results[(mode, phase)]), flush=True)
    text = render(results, args)
    print(text)
    if not args.no_write:
        write_section("durable", text)


if __name__ == "__main__":
    main()
