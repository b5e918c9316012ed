"""A FakeApiServer in its own process, for benchmarks: the client's CPU time and memory are
then measured alone. Prints one JSON line (url, token, jobs file), then serves; on the line
``stats`` from stdin it prints ``{"requests": N}``; EOF on stdin stops it.

Usage: python -m benchmarks._server_proc SCENARIO [--scale X] [--window S] [--lead S]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import anyio

from async_jobs.testing import FakeApiServer

TOKEN = "bench-token-0123456789"

Populate = Callable[[FakeApiServer, argparse.Namespace, random.Random], list[dict[str, Any]]]


def _finish(rng: random.Random, args: argparse.Namespace) -> tuple[float, float]:
    """(seconds pending, seconds running): terminal somewhere in [lead, lead + window]."""
    end = args.lead + rng.uniform(0, args.window)
    started = rng.uniform(args.lead * 0.5, end)
    return started, end - started


def watch_many(
    server: FakeApiServer, args: argparse.Namespace, rng: random.Random
) -> list[dict[str, Any]]:
    """10,000 Metafold jobs in 10 projects, 10,000 conversions in 10 datasets, 1,000 Zoo
    operations (times ``scale``), finishing at random within the window."""
    jobs: list[dict[str, Any]] = []
    epoch = server.clock.epoch.timestamp()
    per_group = max(int(1000 * args.scale), 1)
    for p in range(10):
        project = f"project-{p}"
        for _ in range(per_group):
            pending, running = _finish(rng, args)
            final = rng.choice(["success", "success", "success", "failure"])
            job = server.metafold.add_job(
                project, timeline=[("pending", pending), ("started", running), (final, None)]
            )
            jobs.append(
                {
                    "kind": "metafold.job",
                    "ids": [project, job.id],
                    "done": epoch + pending + running,
                }
            )
    for d in range(10):
        dataset = server.conversions.add_dataset(f"dataset-{d}")
        for _ in range(per_group):
            pending, running = _finish(rng, args)
            conv = server.conversions.add_conversion(
                dataset, [("queued", pending), ("in_progress", running), ("success", None)]
            )
            jobs.append(
                {
                    "kind": "zoo.dataset_conversion",
                    "ids": [dataset, conv.id],
                    "done": epoch + pending + running,
                }
            )
    for _ in range(per_group):
        pending, running = _finish(rng, args)
        op = server.zoo.add_operation(
            "file_volume", [("queued", pending), ("in_progress", running), ("completed", None)]
        )
        jobs.append(
            {"kind": "zoo.async_operation", "ids": [op.id], "done": epoch + pending + running}
        )
    return jobs


def metafold_only(
    server: FakeApiServer, args: argparse.Namespace, rng: random.Random
) -> list[dict[str, Any]]:
    """``count`` Metafold jobs in one project finishing at random within the window."""
    jobs = []
    epoch = server.clock.epoch.timestamp()
    for _ in range(args.count):
        pending, running = _finish(rng, args)
        job = server.metafold.add_job(
            "bench", timeline=[("pending", pending), ("started", running), ("success", None)]
        )
        jobs.append(
            {"kind": "metafold.job", "ids": ["bench", job.id], "done": epoch + pending + running}
        )
    return jobs


SCENARIOS: dict[str, Populate] = {"watch_many": watch_many, "metafold_only": metafold_only}


async def serve(args: argparse.Namespace) -> None:
    async with FakeApiServer(token=TOKEN) as server:
        server.keep_requests = False
        jobs = SCENARIOS[args.scenario](server, args, random.Random(args.seed))
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(jobs, handle)
        print(json.dumps({"url": server.url, "token": TOKEN, "jobs": handle.name}), flush=True)
        stdin = anyio.wrap_file(sys.stdin)
        async for line in stdin:
            if line.strip() == "stats":
                print(json.dumps({"requests": server.request_count}), flush=True)
        return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--lead", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=42)
    anyio.run(serve, parser.parse_args())


if __name__ == "__main__":
    main()
