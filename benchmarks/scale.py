"""Benchmark 5, scale: how the cost of listing and waiting grows with the size of the work.

- list: one stream of conversions (pages of 50, 5 ms latency per request, pre-rendered as in
  the list benchmark) at 10x, 100x and 1,000x a base of two pages (100 items): 1,000, 10,000
  and 100,000 items, async_jobs, kittycad and raw aiohttp, each walk in a fresh client
  process (peak RSS is that walk's), all on one server process;
- wait: Metafold jobs at 10x, 100x and 1,000x a base of 10 jobs (100, 1,000 and 10,000),
  finishing within the wait benchmark's window, async_jobs' Watcher and ``wait_until_terminal``
  under gather (both at a fixed 1 s interval), a fresh client process and a fresh batch of jobs
  per run on one server process.

One run per point (the list and wait benchmarks give the spread); the growth columns are each
point's figure over the previous point's, for a 10x bigger job: ~10x is linear in work, ~1x is
flat.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from typing import Any

from . import listing, wait
from ._common import ServerProcess, fmt, peak_rss_own_mib, rss_bytes, run_child_json

NAME = "scale"
LIST_CLIENTS = ("async_jobs", "kittycad", "raw aiohttp")
WAIT_MODES = wait.TARGET_MODES


async def _list_child(payload: dict[str, Any]) -> dict[str, Any]:
    clients = listing._Clients(payload["url"], payload["token"], payload["info"])
    try:
        walk = clients.workloads("one")[payload["client"]]
        small = payload["info"]["datasets"]["warm-up"]["id"]
        # Warm-up on a small dataset (connections open, code paths hot), then the baseline.
        if payload["client"] == "async_jobs":
            await clients.aj_conversions(small, None)
        elif payload["client"] == "kittycad":
            await clients.kittycad_conversions(small, None)
        else:
            await clients.raw_conversions(small, None)
        gc.collect()
        baseline = rss_bytes()
        wall, cpu = time.perf_counter(), time.process_time()
        items = await walk()
        return {
            "items": items,
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
            "peak_rss_mib": peak_rss_own_mib(),
            "rss_growth_mib": max(0.0, peak_rss_own_mib() - baseline / 2**20),
        }
    finally:
        await clients.aclose()


def _list(cfg: dict[str, Any]) -> dict[str, Any]:
    limit = int(cfg["limit"])
    sizes = [int(cfg["list_base"]) * factor for factor in cfg["factors"]]
    datasets = {
        f"x{f}": {"statuses": ["success"], "count": n}
        for f, n in zip(cfg["factors"], sizes, strict=True)
    }
    datasets["warm-up"] = {"statuses": ["success"], "count": limit * 2}
    spec = {"limit": limit, "latency": cfg["latency"], "datasets": datasets}
    points: dict[str, dict[str, Any]] = {}
    with ServerProcess("pages", "--spec", json.dumps(spec)) as server:
        with open(server.info["jobs"]) as handle:
            info = json.load(handle)
        for factor, size in zip(cfg["factors"], sizes, strict=True):
            # The walk's dataset plays "one" for listing._Clients.workloads.
            view = dict(info, datasets=dict(info["datasets"], one=info["datasets"][f"x{factor}"]))
            for client in LIST_CLIENTS:
                payload = {
                    "kind": "list",
                    "client": client,
                    "url": server.url,
                    "token": server.token,
                    "info": view,
                }
                figures = run_child_json("benchmarks.scale", payload)
                if figures["items"] != size:
                    raise AssertionError(f"{client} walked {figures['items']} of {size} items")
                points.setdefault(str(factor), {"items": size})[client] = figures
                print(f"  scale list x{factor} {client}: {json.dumps(figures)}", file=sys.stderr)
        if server.command("stats").get("fallbacks"):
            raise AssertionError("list requests missed the rendered pages")
    return points


def _wait(cfg: dict[str, Any]) -> dict[str, Any]:
    points: dict[str, dict[str, Any]] = {}
    run_cfg = {key: cfg[key] for key in ("window", "lead", "poll")}
    with ServerProcess("waits") as server:
        for factor in cfg["factors"]:
            size = int(cfg["wait_base"]) * factor
            for mode in WAIT_MODES:
                figures = wait.run_one(server, mode, size, run_cfg)
                if figures["resolved"] != size:
                    raise AssertionError(f"{mode}: {figures['resolved']}/{size} resolved")
                points.setdefault(str(factor), {"jobs": size})[mode] = figures
                print(f"  scale wait x{factor} {mode}: {json.dumps(figures)}", file=sys.stderr)
    return points


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"config": cfg, "list": _list(cfg), "wait": _wait(cfg)}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    return []


def _growth(points: dict[str, Any], row: str, key: str) -> list[str]:
    out, previous = [], None
    for point in points.values():
        value = point[row][key]
        out.append("\u2014" if previous in (None, 0) else f"{value / previous:.1f}x")
        previous = value
    return out


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    factors = ", ".join(f"{f:,}x" for f in cfg["factors"])
    lines = [
        "## scale: how the cost grows",
        "",
        f"Sizes at {factors} a base unit; one run per point, each in a fresh client process "
        "(peak RSS is that run's; RSS growth is the peak over the RSS just before the work "
        "started, after a warm-up). Growth: this point's figure over the previous point's, "
        "for 10x the work (~10x: linear; ~1x: flat).",
        "",
        f"**list**: one stream of conversions, pages of {cfg['limit']}, "
        f"{cfg['latency'] * 1000:g} ms of latency per request, base unit "
        f"{cfg['list_base']:,} items.",
        "",
        "| client | items | wall s | CPU s | CPU \u00b5s/item | peak RSS MiB | RSS growth MiB "
        "| wall growth | CPU growth | RSS growth |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    points = results["list"]
    for client in LIST_CLIENTS:
        walls = _growth(points, client, "wall_s")
        cpus = _growth(points, client, "cpu_s")
        rss = _growth(points, client, "peak_rss_mib")
        for i, point in enumerate(points.values()):
            r = point[client]
            lines.append(
                f"| {client} | {point['items']:,} | {fmt(r['wall_s'])} | {fmt(r['cpu_s'])} | "
                f"{r['cpu_s'] / point['items'] * 1e6:.1f} | {r['peak_rss_mib']:.1f} | "
                f"{r['rss_growth_mib']:.1f} | {walls[i]} | {cpus[i]} | {rss[i]} |"
            )
    lines += [
        "",
        f"**wait**: Metafold jobs finishing within a {cfg['window']:g} s window after a "
        f"{cfg['lead']:g} s lead, polled every {cfg['poll']:g} s (no jitter), base unit "
        f"{cfg['wait_base']:,} jobs.",
        "",
        "| client | jobs | requests | req/job | wall s | CPU s | CPU ms/job | peak RSS MiB "
        "| lag p50 s | lag p95 s | CPU growth | requests growth |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    points = results["wait"]
    for mode in WAIT_MODES:
        cpus = _growth(points, mode, "cpu_s")
        requests = _growth(points, mode, "requests")
        for i, point in enumerate(points.values()):
            r = point[mode]
            jobs = point["jobs"]
            lines.append(
                f"| {mode} | {jobs:,} | {r['requests']:,} | {r['requests'] / jobs:.2f} | "
                f"{fmt(r['wall_s'])} | {fmt(r['cpu_s'])} | {r['cpu_s'] / jobs * 1000:.2f} | "
                f"{r['peak_rss_mib']:.1f} | {fmt(r['lag_p50_s'])} | {fmt(r['lag_p95_s'])} | "
                f"{cpus[i]} | {requests[i]} |"
            )
    return "\n".join(lines)


def notes(results: dict[str, Any]) -> str:
    """What the growth says, from the figures."""
    lists, waits = list(results["list"].values()), list(results["wait"].values())
    if len(lists) < 2 or len(waits) < 2:
        return ""
    biggest, last = lists[-1], waits[-1]
    growth = max(biggest[client]["rss_growth_mib"] for client in LIST_CLIENTS)
    ours = biggest["async_jobs"]
    lines = [
        f"Listing is linear in work and flat in memory: {biggest['items']:,} items cost "
        f"async_jobs {ours['cpu_s'] / biggest['items'] * 1e6:.1f} \u00b5s of CPU each and "
        f"added {ours['rss_growth_mib']:.1f} MiB to its process (at most {growth:.1f} MiB for "
        "any client), as each stream holds about one page at a time. Every list "
        "process loads all three client libraries, so their peak RSS is alike; the growth "
        "column is what the walk itself added."
    ]

    def per_job(before: dict[str, Any], after: dict[str, Any]) -> float:
        added = max(last["jobs"] - waits[-2]["jobs"], 1)
        return (after["peak_rss_mib"] - before["peak_rss_mib"]) * 1024 / added

    for mode in WAIT_MODES:
        before, after = waits[-2][mode], last[mode]
        lines.append(
            f"{mode}: {before['requests'] / waits[-2]['jobs']:.2f} \u2192 "
            f"{after['requests'] / last['jobs']:.2f} requests per job and lag p95 "
            f"{before['lag_p95_s']:.2f} \u2192 {after['lag_p95_s']:.2f} s from "
            f"{waits[-2]['jobs']:,} to {last['jobs']:,} jobs, peak RSS "
            f"{before['peak_rss_mib']:.0f} \u2192 {after['peak_rss_mib']:.0f} MiB "
            f"({per_job(before, after):.1f} KiB per added job)."
        )
    lines.append(
        "Where requests per job fall and lag rises at the largest size, the client (or the "
        "one-process fake server) could no longer poll every job every interval on this "
        "2-core machine: the cost stays linear in the work actually done, and the lag shows "
        "the saturation. Waiting state is kept per job, so memory grows with the number of "
        "jobs watched at once."
    )
    return "\n\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(asyncio.run(_list_child(json.loads(argv[1])))))
        return
    raise SystemExit("run the suite: python -m benchmarks --only scale")


if __name__ == "__main__":
    main()
