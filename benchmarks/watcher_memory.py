"""Benchmark 6, memory: what one long-lived Watcher keeps once the jobs it watched are done.

A web backend keeps one ``aj.Watcher`` for days and awaits each job through the future that
``add()`` returned, never through ``as_completed()``; its memory must come back once those
jobs are done (issue 12: 20,000 short jobs, RSS growth after they finish at most 25 MiB).

One FakeApiServer process (its memory never counts; ``--lean-lists``) holds Metafold jobs in
``projects`` projects, finishing at random within ``window`` seconds after a ``lead``. Each
run is a fresh client process: one aiohttp session, one ``MetafoldClient`` on it, one
coalesced ``Watcher`` (each project listed once per ``poll`` interval; a job that leaves the
listing is confirmed with one GET). A warm-up batch goes through the same watcher first
(connections, decoders and code paths warm); the baseline RSS is taken after
``gc.collect()`` and glibc's ``malloc_trim(0)``. Then the ``jobs`` jobs are added either all
at once or ``wave`` at a time (add a wave, await it, add the next), and each wave's futures
are awaited in batches of ``batch`` with ``asyncio.gather``, each batch's futures and results
dropped once counted. RSS is sampled after each wave is added and after each batch (the
peak); once all are done: ``gc.collect()`` and RSS with the watcher still open (growth = this
minus the baseline: what the service keeps paying), again after ``malloc_trim(0)``, and once
the watcher is closed and dropped.

Each row runs twice, in two fresh client processes: once for RSS, once under ``tracemalloc``
(its RSS unused: tracing costs memory of its own) for the Python memory still allocated once
done, over the baseline, in total and allocated by async_jobs' own modules. Rows: the default
``Watcher()``, ``keep_completed=False`` and ``keep_completed=True``.

Usage: python -m benchmarks.watcher_memory [--jobs 20000] [--quick] [--no-write]
(writes its section of RESULTS.md through the suite, as ``python -m benchmarks --only
memory`` does; ``--quick``: the suite's smoke sizes, RESULTS.quick.md).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import json
import sys
import time
import tracemalloc
from collections import Counter, deque
from pathlib import Path
from typing import Any

import aiohttp
import anyio

import async_jobs as aj

from ._common import ServerProcess, cpu_seconds, peak_rss_own_mib, rss_bytes, run_child_json

NAME = "memory"
#: The issue's bound on RSS growth, MiB, at 20,000 jobs.
TARGET_MIB = 25.0
MIB = 2**20
PACKAGE = str(Path(aj.__file__).resolve().parent)
#: The watchers compared: the default, and each way of asking for ``keep_completed``.
WATCHERS: dict[str, dict[str, Any]] = {
    "Watcher()": {},
    "Watcher(keep_completed=False)": {"keep_completed": False},
    "Watcher(keep_completed=True)": {"keep_completed": True},
}


def _load(path: str) -> list[dict[str, Any]]:
    with open(path) as handle:
        return list(json.load(handle))


def _rss_mib() -> float:
    return rss_bytes() / MIB


async def _through_futures(
    watcher: aj.Watcher,
    mf: aj.MetafoldClient,
    jobs: list[dict[str, Any]],
    batch: int,
    wave: int,
    samples: list[float] | None = None,
) -> Counter[str]:
    """Add ``wave`` jobs at once, await their futures ``batch`` at a time (each batch's
    futures and results dropped once counted), then the next wave."""
    outcomes: Counter[str] = Counter()
    for start in range(0, len(jobs), wave):
        batches: deque[list[asyncio.Future[Any]]] = deque()
        futures: list[asyncio.Future[Any]] = []
        for job in jobs[start : start + wave]:
            project, job_id = job["ids"]
            futures.append(watcher.add(mf.job(job_id, project_id=project)))
            if len(futures) == batch:
                batches.append(futures)
                futures = []
        if futures:
            batches.append(futures)
        del futures
        if samples is not None:
            samples.append(_rss_mib())  # the wave added and watched
        while batches:
            results = await asyncio.gather(*batches.popleft(), return_exceptions=True)
            for result in results:
                failed = isinstance(result, BaseException)
                outcomes[type(result).__name__ if failed else result.state] += 1
            del results, result
            if samples is not None:
                samples.append(_rss_mib())
    return outcomes


def _trimmed_rss_mib() -> float | None:
    """RSS after glibc's ``malloc_trim(0)`` hands free heap pages back (None elsewhere): what
    is left is memory in use, not memory the allocator keeps after a peak."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return _rss_mib()


async def _run(p: dict[str, Any]) -> dict[str, Any]:
    warm, jobs = _load(p["warmup"]), _load(p["jobs"])
    tracing = bool(p.get("tracemalloc"))
    if tracing:
        tracemalloc.start(1)
    poll = aj.PollPolicy(initial=p["poll"], multiplier=1.0, maximum=p["poll"], jitter=0.1)
    out: dict[str, Any] = {"jobs": len(jobs), "tracemalloc": tracing}
    samples: list[float] = []
    async with (
        aiohttp.ClientSession() as session,
        aj.MetafoldClient(token=p["token"], base_url=p["url"], session=session) as mf,
    ):
        watcher: aj.Watcher = aj.Watcher(mf, poll=poll, max_concurrency=64, **p["options"])
        async with watcher:
            out["rss_start_mib"] = _rss_mib()
            await _through_futures(watcher, mf, warm, p["batch"], p["wave"])
            await asyncio.sleep(0)
            gc.collect()
            _trimmed_rss_mib()  # the baseline, like the figures after, on a trimmed heap
            out["rss_baseline_mib"] = baseline = _rss_mib()
            before = tracemalloc.take_snapshot() if tracing else None
            wall, cpu = time.monotonic(), cpu_seconds()
            outcomes = await _through_futures(watcher, mf, jobs, p["batch"], p["wave"], samples)
            out["wall_s"], out["cpu_s"] = time.monotonic() - wall, cpu_seconds() - cpu
            # The event loop's handle that woke this task holds the last gather's results
            # until the loop runs another one.
            await asyncio.sleep(0)
            gc.collect()
            out["rss_after_mib"] = after = _rss_mib()
            out["rss_trimmed_mib"] = _trimmed_rss_mib()
            if before is not None:
                stats = tracemalloc.take_snapshot().compare_to(before, "filename")
                mine = [s for s in stats if s.traceback[0].filename.startswith(PACKAGE)]
                out["traced_growth_mib"] = sum(s.size_diff for s in stats) / MIB
                out["traced_async_jobs_mib"] = sum(s.size_diff for s in mine) / MIB
                out["traced_top"] = [
                    [s.traceback[0].filename.replace(PACKAGE, "async_jobs"), s.size_diff]
                    for s in stats[:4]
                ]
                del stats, mine, before
        del watcher
        gc.collect()
        _trimmed_rss_mib()
        out["rss_dropped_mib"] = _rss_mib()
    out.update(
        {
            "outcomes": dict(outcomes),
            "rss_watching_mib": samples[0],
            "rss_peak_mib": max(samples),
            "vmhwm_mib": peak_rss_own_mib(),
            "growth_mib": after - baseline,
            "growth_per_job_bytes": (after - baseline) * MIB / max(len(jobs), 1),
        }
    )
    if out["rss_trimmed_mib"] is not None:
        out["trimmed_growth_mib"] = out["rss_trimmed_mib"] - baseline
    return out


def _child(p: dict[str, Any]) -> dict[str, Any]:
    return anyio.run(_run, p)


def _one(
    server: ServerProcess, cfg: dict[str, Any], wave: int, options: dict[str, Any], tracing: bool
) -> dict[str, Any]:
    """One client process on fresh jobs (``projects`` fresh projects, a fresh warm-up)."""
    warm = server.command(f"populate {cfg['warmup']} 0.2 0")
    made: list[dict[str, Any]] = []
    per_project = -(-int(cfg["jobs"]) // int(cfg["projects"]))
    while len(made) < int(cfg["jobs"]):
        count = min(per_project, int(cfg["jobs"]) - len(made))
        made += _load(server.command(f"populate {count} {cfg['window']} {cfg['lead']}")["jobs"])
    jobs_file = Path(warm["jobs"]).with_name(Path(warm["jobs"]).stem + "-all.json")
    jobs_file.write_text(json.dumps(made))
    payload = {
        "url": server.url,
        "token": server.token,
        "warmup": warm["jobs"],
        "jobs": str(jobs_file),
        "batch": cfg["batch"],
        "wave": wave,
        "poll": cfg["poll"],
        "options": options,
        "tracemalloc": tracing,
    }
    before = server.requests()
    try:
        figures = run_child_json("benchmarks.watcher_memory", payload)
    finally:
        jobs_file.unlink(missing_ok=True)
    figures["requests"] = server.requests() - before
    done = sum(figures["outcomes"].values())
    if done != len(made):
        raise AssertionError(f"memory {options}: {done}/{len(made)} jobs done")
    return figures


def _shapes(cfg: dict[str, Any]) -> dict[str, int]:
    jobs, wave = int(cfg["jobs"]), int(cfg["wave"])
    return {"all at once": jobs, f"{wave:,} at a time": wave}


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Each way of adding the jobs with each watcher of :data:`WATCHERS`, in two client
    processes each (RSS, then tracemalloc), on one server process."""
    results: dict[str, Any] = dict(cfg)
    results["rows"] = []
    with ServerProcess("waits", "--lean-lists") as server:
        for shape, wave in _shapes(cfg).items():
            for label in cfg.get("watchers", WATCHERS):
                options = WATCHERS[label]
                row: dict[str, Any] = {"added": shape, "watcher": label}
                for key, tracing in (("rss", False), ("traced", True)):
                    row[key] = _one(server, cfg, wave, options, tracing)
                    print(
                        f"  memory {shape} {label} {key}: {json.dumps(row[key])}", file=sys.stderr
                    )
                results["rows"].append(row)
    return results


def _default(results: dict[str, Any], shape: str) -> dict[str, Any]:
    return next(r for r in results["rows"] if r["watcher"] == "Watcher()" and r["added"] == shape)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """RSS growth with the default Watcher once every job is done, the watcher still open:
    jobs added a wave at a time (a service's steady traffic), and all at once."""
    out = []
    for shape in _shapes(results):
        r = _default(results, shape)["rss"]
        out.append(
            {
                "benchmark": NAME,
                "what": f"{r['jobs']:,} jobs awaited through their futures, {shape} "
                "(default Watcher): RSS growth once done",
                "target": f"<= {TARGET_MIB:g} MiB",
                "value": f"{r['growth_mib']:.1f} MiB ({r['growth_per_job_bytes']:,.0f} B/job)",
                "met": r["growth_mib"] <= TARGET_MIB,
            }
        )
    return out


def notes(results: dict[str, Any]) -> str:
    """Why a missed target is missed, from the figures."""
    missed = [t for t in targets(results) if not t["met"]]
    if not missed:
        return ""
    parts = [f"**Why targets are missed** ({len(missed)} of {len(targets(results))})."]
    for shape in _shapes(results):
        row = _default(results, shape)
        r, t = row["rss"], row["traced"]
        if r["growth_mib"] <= TARGET_MIB:
            continue
        kept = t["traced_async_jobs_mib"] * MIB / max(t["jobs"], 1)
        if kept >= 1024:
            parts.append(
                f"{shape.capitalize()}: the watcher keeps every finished job "
                f"({t['traced_async_jobs_mib']:.1f} MiB still allocated by async_jobs once "
                f"done, {kept:,.0f} B per job): the default Watcher keeps finished jobs for "
                "`as_completed()` whether or not anyone will take them."
            )
        else:
            parts.append(
                f"{shape.capitalize()}: not the watcher's retention. Once done, Python memory "
                f"allocated by async_jobs is {t['traced_async_jobs_mib']:.2f} MiB over the "
                f"baseline ({kept:,.0f} B per job), but RSS stays near the peak of "
                f"{r['rss_peak_mib']:.0f} MiB: {_mib(r['rss_trimmed_mib'], 0)} MiB after "
                f"`malloc_trim(0)`, {r['rss_dropped_mib']:.0f} MiB with the watcher closed "
                "and dropped. The pages freed after the peak (everything watched at once, "
                "results waiting in futures not yet awaited) stay with CPython's object "
                "allocator (pymalloc), which hands a 1 MiB arena back to the system only once "
                "every object in it is freed; a few survivors per arena keep it resident."
            )
    return "\n\n".join(parts)


def _mib(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(results: dict[str, Any]) -> str:
    rows = results["rows"]
    jobs = rows[0]["rss"]["jobs"]
    lines = [
        "## memory: a long-lived Watcher whose jobs are awaited through their futures",
        "",
        f"{jobs:,} Metafold jobs in {results['projects']} projects, finishing at random "
        f"within {results['window']:g} s after a {results['lead']:g} s lead, through one "
        "coalesced `Watcher` (one aiohttp session, one `MetafoldClient`, a "
        f"{results['poll']:g} s interval) in a fresh client process, the FakeApiServer in its "
        "own. Added all at once, or a wave at a time (add a wave, await it, drop it, add the "
        "next: later waves' jobs have mostly finished on the server by then, and go through "
        "the same listing and confirming GET). The futures are awaited with `asyncio.gather` "
        f"in batches of {results['batch']:,}, each batch's futures and results dropped right "
        f"after; no `as_completed()`. Baseline: after a {results['warmup']}-job warm-up "
        "through the same watcher, `gc.collect()` and glibc's `malloc_trim(0)`. *Done*: every "
        "job done and `gc.collect()`, the watcher still open (what a service keeps paying "
        "for); **growth** = done \u2212 baseline; *trimmed*: done after `malloc_trim(0)` "
        "(free heap pages handed back: what is left is in use); *dropped*: the watcher closed "
        "and dropped, trimmed. Peak: the largest RSS sampled after adding and after each "
        "batch. Traced: a second client process on fresh jobs under `tracemalloc` (its RSS "
        "unused), Python memory still allocated when done over the baseline, in all and by "
        "async_jobs' modules. One run per row; MiB unless noted.",
        "",
        "| added | watcher | baseline | peak | done | **growth** | growth/job B | trimmed "
        "| dropped | traced | traced async_jobs (B/job) | requests | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r, t = row["rss"], row["traced"]
        per_job = t["traced_async_jobs_mib"] * MIB / max(t["jobs"], 1)
        lines.append(
            f"| {row['added']} | `{row['watcher']}` | {r['rss_baseline_mib']:.1f} | "
            f"{r['rss_peak_mib']:.1f} | {r['rss_after_mib']:.1f} | **{r['growth_mib']:.1f}** | "
            f"{r['growth_per_job_bytes']:,.0f} | {_mib(r['rss_trimmed_mib'])} | "
            f"{r['rss_dropped_mib']:.1f} | {t['traced_growth_mib']:.2f} | "
            f"{t['traced_async_jobs_mib']:.2f} ({per_job:,.0f}) | {r['requests']:,} | "
            f"{r['wall_s']:.1f} |"
        )
    default = _default(results, "all at once")
    lines += [
        "",
        "Traced growth of the default watcher, all at once, by allocating file: "
        + ", ".join(
            f"`{name.rsplit('/', 1)[-1]}` {size / MIB:.2f}"
            for name, size in default["traced"]["traced_top"]
        )
        + ". Outcomes (same row): "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(default["rss"]["outcomes"].items()))
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(_child(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.watcher_memory")
    parser.add_argument("--jobs", type=int, default=None, help="jobs to watch (full: 20,000)")
    parser.add_argument("--quick", action="store_true", help="the suite's tiny smoke sizes")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    from . import _suite

    overrides = {NAME: {"jobs": args.jobs}} if args.jobs else {}
    if args.no_write:
        cfg = (_suite.QUICK if args.quick else _suite.FULL)[NAME] | overrides.get(NAME, {})
        results = run(cfg)
        for t in targets(results):
            print(f"{'met   ' if t['met'] else 'MISSED'} {t['what']}: {t['value']}")
        print(render(results))
        return 0
    return _suite.main(["--only", NAME, *(["--quick"] if args.quick else [])], overrides)


if __name__ == "__main__":
    sys.exit(main())
