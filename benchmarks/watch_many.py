"""Benchmark: following thousands of jobs at once (not a test).

Against FakeApiServer on loopback (in its own process), jobs whose lifecycles end at random
within a compressed window: 10,000 Metafold jobs in 10 projects, 10,000 conversions in 10
datasets and 1,000 Zoo operations (``--scale`` multiplies these). Each way of watching runs in a
fresh client process against a fresh server with the same seed:

- ``coalesced``: one ``aj.Watcher`` polling each group through its active-job listing;
- ``per-job``: the same Watcher with ``coalesce=False`` (one GET per job per interval);
- ``gather``: ``wait_until_terminal`` per job under one task group (asyncio.gather-style).

All three use the same PollPolicy. Reported: requests (counted by the server), requests per
resolved job, detection lag (server transition -> client resolution) p50/p95, wall and CPU
seconds of the client, its peak RSS and the RSS per watched job. Writes a section of
benchmarks/RESULTS.md.

Usage: python -m benchmarks.watch_many [--scale 0.1] [--window 20] [--modes coalesced,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anyio

import async_jobs as aj

from ._common import (
    cpu_seconds,
    fake_server,
    machine,
    peak_rss_own_mib,
    percentile,
    rss_bytes,
    run_child,
    write_section,
)

MODES = ("coalesced", "per-job", "gather")
#: A fixed 1 s interval, as the official metafold SDK polls; the same for every mode.
POLL = aj.PollPolicy(initial=1.0, multiplier=1.0, maximum=1.0, jitter=0.1)


def _load(jobs_file: str) -> list[dict[str, Any]]:
    with open(jobs_file) as handle:
        return list(json.load(handle))


async def _child(mode: str, url: str, token: str, jobs_file: str) -> dict[str, Any]:
    jobs = _load(jobs_file)
    baseline = rss_bytes()
    cpu_start, wall_start = cpu_seconds(), time.monotonic()
    done_at = {"/".join(job["ids"]): job["done"] for job in jobs}
    resolved: dict[str, float] = {}
    failures = 0
    async with (
        aj.ZooClient(token=token, base_url=url) as zoo,
        aj.MetafoldClient(token=token, base_url=url) as mf,
    ):
        refs = [zoo.job_ref(j["kind"], j["ids"]) or mf.job_ref(j["kind"], j["ids"]) for j in jobs]
        if mode == "gather":

            async def one(ref: aj.JobRef[Any]) -> None:
                await aj.wait_until_terminal(ref, poll=POLL)
                resolved["/".join(ref.ids)] = time.time()

            async with anyio.create_task_group() as tg:
                for ref in refs:
                    assert ref is not None
                    tg.start_soon(one, ref)
                await anyio.sleep(1.0)
                watching = rss_bytes()
        else:
            watcher: aj.Watcher
            async with aj.Watcher(
                zoo, mf, poll=POLL, coalesce=mode == "coalesced", max_concurrency=64
            ) as watcher:
                for ref in refs:
                    assert ref is not None
                    key = "/".join(ref.ids)
                    future = watcher.add(ref)
                    future.add_done_callback(
                        lambda _, key=key: resolved.__setitem__(key, time.time())
                    )
                watching = rss_bytes()
                try:
                    await watcher.wait_all()
                except aj.AsyncJobsError:
                    failures += 1
    lags = [resolved[key] - done_at[key] for key in resolved]
    return {
        "jobs": len(jobs),
        "resolved": len(resolved),
        "failures": failures,
        "wall_s": round(time.monotonic() - wall_start, 2),
        "cpu_s": round(cpu_seconds() - cpu_start, 2),
        "peak_rss_mib": round(peak_rss_own_mib(), 1),
        "rss_per_job_bytes": round(max(watching - baseline, 0) / max(len(jobs), 1)),
        "lag_p50_s": round(percentile(lags, 0.50), 3),
        "lag_p95_s": round(percentile(lags, 0.95), 3),
    }


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One mode against a fresh server; the child's figures plus the server's request count."""
    options = ["--scale", str(args.scale), "--window", str(args.window), "--lead", str(args.lead)]
    with fake_server("watch_many", *options) as (server, stats):
        figures = run_child(
            "benchmarks.watch_many", "--child", mode, server["url"], server["token"], server["jobs"]
        )
        figures["requests"] = stats()["requests"]
    figures["requests_per_job"] = round(figures["requests"] / max(figures["resolved"], 1), 2)
    return figures


def render(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    jobs = next(iter(results.values()))["jobs"]
    lines = [
        f"## {args.section}: following many jobs at once",
        "",
        f"{machine()}.",
        "",
        f"{jobs:,} jobs (Metafold jobs in 10 projects, conversions in 10 datasets, Zoo "
        f"operations: scale {args.scale}) finishing at random within a {args.window:g} s "
        f"window after a {args.lead:g} s lead; every mode polls every 1 s "
        "(`PollPolicy(initial=1.0, multiplier=1.0, maximum=1.0)`, the official metafold SDK's "
        "interval) and runs with a fresh FakeApiServer process and a fresh client process.",
        "",
        "| mode | requests | req/job | lag p50 s | lag p95 s | wall s | CPU s | peak RSS MiB "
        "| RSS/job B | resolved |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in results.items():
        lines.append(
            f"| {mode} | {r['requests']:,} | {r['requests_per_job']} | {r['lag_p50_s']} | "
            f"{r['lag_p95_s']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mib']} | "
            f"{r['rss_per_job_bytes']:,} | {r['resolved']:,}/{r['jobs']:,} |"
        )
    if "coalesced" in results and "per-job" in results:
        c, p = results["coalesced"], results["per-job"]
        lines += [
            "",
            f"Coalesced sends {p['requests'] / max(c['requests'], 1):.1f}x fewer requests than "
            f"per-job polling (p95 lag {c['lag_p95_s']} s vs {p['lag_p95_s']} s).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        mode, url, token, jobs_file = argv[1:5]
        print(json.dumps(anyio.run(_child, mode, url, token, jobs_file)))
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watch_many")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--lead", type=float, default=4.0)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--section", default="watch_many", help="RESULTS.md section to (re)write")
    args = parser.parse_args(argv)
    results = {}
    for mode in args.modes.split(","):
        results[mode] = run_mode(mode, args)
        print(mode, json.dumps(results[mode]), flush=True)
    text = render(results, args)
    print(text)
    if not args.no_write:
        write_section(args.section, text)


if __name__ == "__main__":
    main()
