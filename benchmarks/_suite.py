"""The benchmark suite: ``python -m benchmarks [--quick] [--only NAME[,NAME]]``.

Runs decode, list, overhead, wait, scale and memory (see each module's docstring), then writes
``benchmarks/RESULTS.md`` (the machine, the targets met or missed, one section per benchmark
with medians and min-max, profiles of what missed) and ``benchmarks/RESULTS.json`` (every raw
figure). ``--quick`` runs tiny sizes once, as a smoke test that the suite still works, and
writes ``RESULTS.quick.md`` / ``RESULTS.quick.json`` instead, so it never overwrites a full
run. ``--only`` reruns some benchmarks and updates their sections and figures in place.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from . import _profile, decode, listing, overhead, scale, wait, watcher_memory
from ._common import HERE, machine_info, write_section

BENCHMARKS: dict[str, ModuleType] = {
    "decode": decode,
    "list": listing,
    "overhead": overhead,
    "wait": wait,
    "scale": scale,
    "memory": watcher_memory,
}

FULL: dict[str, dict[str, Any]] = {
    "decode": {"items": 100, "repeats": 7, "batch_s": 0.2},
    "list": {"pages": 40, "limit": 50, "latency": 0.005, "repeats": 5},
    "overhead": {"requests": 3000, "repeats": 7},
    "wait": {"sizes": [200, 300, 2000], "window": 6.0, "lead": 1.5, "poll": 1.0, "repeats": 3},
    "scale": {
        "factors": [10, 100, 1000],
        "list_base": 100,
        "limit": 50,
        "latency": 0.005,
        "wait_base": 10,
        "window": 6.0,
        "lead": 1.5,
        "poll": 1.0,
    },
    "memory": {
        "jobs": 20000,
        "projects": 20,
        "batch": 1000,
        "wave": 1000,
        "warmup": 200,
        "window": 4.0,
        "lead": 3.0,
        "poll": 0.5,
    },
}
QUICK: dict[str, dict[str, Any]] = {
    "decode": {"items": 100, "repeats": 1, "batch_s": 0.01},
    "list": {"pages": 3, "limit": 20, "latency": 0.002, "repeats": 1},
    "overhead": {"requests": 50, "repeats": 1},
    "wait": {"sizes": [10], "window": 0.5, "lead": 0.3, "poll": 0.2, "repeats": 1},
    "scale": {
        "factors": [1, 10],
        "list_base": 20,
        "limit": 10,
        "latency": 0.001,
        "wait_base": 3,
        "window": 0.5,
        "lead": 0.3,
        "poll": 0.2,
    },
    "memory": {
        "jobs": 300,
        "projects": 3,
        "batch": 100,
        "wave": 100,
        "watchers": ["Watcher()"],
        "warmup": 20,
        "window": 0.3,
        "lead": 0.1,
        "poll": 0.1,
    },
}


#: What describes the machine and packages of a run: a rerun with ``--only`` keeps the last
#: full run's (the figures it did not redo are that run's) and names its own when it differs.
RUN_FACTS = ("cpu", "cores", "python", "implementation", "platform", "packages")


def _paths(quick: bool) -> tuple[Path, Path]:
    stem = "RESULTS.quick" if quick else "RESULTS"
    return HERE / f"{stem}.md", HERE / f"{stem}.json"


def _first_section(path: Path, name: str) -> None:
    """Make sure the ``name`` section exists right under the title (write_section appends new
    sections at the end; the summary belongs on top)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    marker = f"<!-- {name}:start -->"
    if marker in text:
        return
    title, _, rest = text.partition("\n")
    block = f"{marker}\n<!-- {name}:end -->"
    path.write_text(f"{title}\n\n{block}\n\n{rest.strip()}\n".rstrip() + "\n")


def _summary(data: dict[str, Any], quick: bool) -> str:
    suite = data["suite"]
    packages = ", ".join(f"{name} {version}" for name, version in suite["packages"].items())
    lines = [
        "## Summary",
        "",
        "Every figure below comes from `python -m benchmarks` (install with "
        "`pip install -e '.[bench]'`): each benchmark runs the compared clients side by side "
        "against one FakeApiServer on loopback in its own process, so the client processes' "
        "CPU and memory are theirs alone. `--only NAME[,NAME]` reruns some of them in place; "
        "`--quick` is the seconds-long smoke run CI does (tiny sizes, written to "
        "`RESULTS.quick.md`, never here). Raw figures: `RESULTS.json` beside this file.",
        "",
        f"Machine: {suite['cpu']}, {suite['cores']} cores; {suite['implementation']} "
        f"{suite['python']} on {suite['platform']}; {packages}. Run: {suite['date']}"
        + (f" ({suite['seconds']:.0f} s)" if "seconds" in suite else "")
        + f"; 1-minute load average {suite.get('load_average_before', 'n/a')} before, "
        f"{suite.get('load_average_after', 'n/a')} after (the suite itself keeps about one "
        "core busy; more means something else shared the machine).",
        "",
    ]
    if suite.get("reruns"):
        reruns = "; ".join(f"{name}: {when}" for name, when in suite["reruns"].items())
        lines += [f"Rerun since with `--only`: {reruns}.", ""]
    if quick:
        lines += [
            "**Quick run: smoke-test sizes, one repeat. These figures say that the suite "
            "works, not how fast anything is; see RESULTS.md for a full run.**",
            "",
        ]
    rows = [t for name in BENCHMARKS for t in data.get("targets", {}).get(name, [])]
    if rows:
        met = sum(1 for t in rows if t["met"])
        lines += [
            f"Targets: {met} of {len(rows)} met.",
            "",
            "| benchmark | comparison | target | result | met |",
            "|---|---|---|---|:---:|",
        ]
        lines += [
            f"| {t['benchmark']} | {t['what']} | {t['target']} | {t['value']} | "
            f"{'yes' if t['met'] else '**no**'} |"
            for t in rows
        ]
        if met < len(rows):
            lines += [
                "",
                "Each missed target is explained in its benchmark's section below, with a "
                "profile of where async_jobs' time goes (full runs with pyinstrument).",
            ]
    return "\n".join(lines)


def _section(name: str, entry: dict[str, Any]) -> str:
    body = BENCHMARKS[name].render(entry["results"])
    notes = getattr(BENCHMARKS[name], "notes", None)
    if notes is not None:
        text = notes(entry["results"])
        if text:
            body += "\n\n" + text
    for title, summary in entry.get("profiles", {}).items():
        body += "\n\n" + "\n".join(_profile.render(title, summary))
    config = ", ".join(f"{key}={value}" for key, value in entry["config"].items())
    return f"{body}\n\n<sub>Config: {config}; {entry['seconds']:.0f} s.</sub>"


def _write_md(data: dict[str, Any], md_path: Path, quick: bool) -> None:
    _first_section(md_path, "summary")
    for name in BENCHMARKS:  # in the suite's order, so a first run lays the file out so
        if name in data["benchmarks"]:
            write_section(f"bench-{name}", _section(name, data["benchmarks"][name]), md_path)
    write_section("summary", _summary(data, quick), md_path)


def main(argv: list[str] | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> int:
    """Run the benchmarks ``argv`` names; ``overrides`` replace some of their config values
    (``benchmarks.watcher_memory --jobs N`` passes ``{"memory": {"jobs": N}}``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks async_jobs against kittycad, the metafold SDK and raw aiohttp.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (CI smoke)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"one of {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip profiling misses")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the .md from the .json, no run"
    )
    args = parser.parse_args(argv)
    names = [n for value in args.only for n in value.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    md_path, json_path = _paths(args.quick)
    if args.render:
        _write_md(json.loads(json_path.read_text()), md_path, args.quick)
        print(f"wrote {md_path.relative_to(HERE.parent)}")
        return 0
    base = QUICK if args.quick else FULL
    configs = {name: base[name] | (overrides or {}).get(name, {}) for name in base}
    data: dict[str, Any] = {}
    if args.only and json_path.exists():
        data = json.loads(json_path.read_text())
    data.setdefault("benchmarks", {})
    data.setdefault("targets", {})
    previous = data.get("suite", {})
    data["suite"] = machine_info() | {"mode": "quick" if args.quick else "full"}
    here = dict(data["suite"])  # this run's machine, named in a rerun's note
    if args.only:  # the last full run's facts (its machine too) stay; the reruns are listed
        for key in (*RUN_FACTS, "date", "seconds", "load_average_before", "load_average_after"):
            if key in previous:
                data["suite"][key] = previous[key]
        data["suite"]["reruns"] = dict(previous.get("reruns", {}))
    else:
        data["suite"]["load_average_before"] = round(os.getloadavg()[0], 2)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    profile = not args.quick and not args.no_profile and _profile.available()
    for name in names:
        module = BENCHMARKS[name]
        print(f"== {name}", flush=True)
        begun = time.monotonic()
        results = module.run(configs[name])
        entry: dict[str, Any] = {"config": configs[name], "results": results}
        targets = module.targets(results)
        data["targets"][name] = targets
        missed = [t for t in targets if not t["met"]]
        for t in targets:
            print(f"   {'met   ' if t['met'] else 'MISSED'} {t['what']}: {t['value']}", flush=True)
        wanted = missed or getattr(module, "PROFILE_ALWAYS", False)
        if wanted and profile and hasattr(module, "profile"):
            entry["profiles"] = module.profile(configs[name], results)
        entry["seconds"] = time.monotonic() - begun
        data["benchmarks"][name] = entry
    if args.only:
        rerun = machine_info()["date"]
        machine = ""
        if any(here.get(key) != data["suite"].get(key) for key in RUN_FACTS):
            packages = ", ".join(f"{n} {v}" for n, v in here["packages"].items())
            machine = (
                f" on {here['cpu']}, {here['cores']} cores, Python {here['python']}, {packages}"
            )
        for name in names:
            data["suite"]["reruns"][name] = (
                f"{rerun}{machine}, 1-minute load average {load_before:.2f} before, "
                f"{os.getloadavg()[0]:.2f} after"
            )
    else:
        data["suite"]["load_average_after"] = round(os.getloadavg()[0], 2)
        data["suite"]["seconds"] = time.monotonic() - started
    json_path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    _write_md(data, md_path, args.quick)
    print(f"wrote {md_path.relative_to(HERE.parent)} and {json_path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
