"""A FakeApiServer in its own process, for benchmarks: the client's CPU time and memory are
then measured alone. Prints one JSON line (url, token, jobs file), then serves; on the line
``stats`` from stdin it prints ``{"requests": N}``; on ``populate N [WINDOW LEAD]`` it adds N
Metafold jobs in a fresh project, finishing at random within the window from now, and prints
``{"jobs": file, "project": id}``; EOF on stdin stops it.

Scenarios: ``watch_many`` and ``metafold_only`` (jobs finishing within a window), ``waits``
(empty: jobs come from ``populate``, so clients compared one after another share the server
process with fresh jobs each) and ``pages`` (read-only listings pre-rendered from the fake's
own bodies, ``--spec`` JSON; see :func:`pages`).

``--lean-lists``: Metafold job listings by state render only the matching jobs (see
:func:`_lean_metafold_lists`).

Usage: python -m benchmarks._server_proc SCENARIO [--scale X] [--window S] [--lead S]
       [--spec JSON] [--lean-lists]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import anyio
from aiohttp import web

from async_jobs.models.zoo import OPERATION_STATUSES
from async_jobs.testing import FakeApiServer

from ._bodies import kcl_source

TOKEN = "bench-token-0123456789"

Populate = Callable[[FakeApiServer, argparse.Namespace, random.Random], Any]


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
        dataset = server.conversions.add_dataset(
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"dataset-{d}"))
        )
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


def metafold_batch(
    server: FakeApiServer, project: str, count: int, args: argparse.Namespace, rng: random.Random
) -> list[dict[str, Any]]:
    """``count`` Metafold jobs in a fresh ``project``, created now, finishing at random within
    ``args.window`` after ``args.lead``; ``done`` is each one's wall-clock finishing time."""
    jobs = []
    epoch = server.clock.epoch.timestamp()
    for _ in range(count):
        pending, running = _finish(rng, args)
        final = rng.choice(["success", "success", "success", "failure"])
        job = server.metafold.add_job(
            project,
            timeline=[("pending", pending), ("started", running), (final, None)],
            error="mesh is not watertight" if final == "failure" else None,
        )
        jobs.append(
            {
                "kind": "metafold.job",
                "ids": [project, job.id],
                "done": epoch + job.created + pending + running,
            }
        )
    return jobs


def waits(
    server: FakeApiServer, args: argparse.Namespace, rng: random.Random
) -> list[dict[str, Any]]:
    """No jobs yet: each client run asks for a fresh batch with ``populate``."""
    return []


# -- pre-rendered listings ------------------------------------------------------------------

#: Conversion timelines that stay put, by the status they show.
_CONVERSION_TIMELINES: dict[str, list[Any]] = {
    "success": [("success", None)],
    "queued": [("queued", None)],
    "in_progress": [("in_progress", "convert_raw_kcl", None)],
    "error_user": [("error_user", "salon", None)],
    "canceled": [("canceled", "snapshot_original", None)],
}
_DEFAULT_SORT = "created_at_descending"
#: Counters reported by ``stats`` besides the request count.
EXTRA_STATS: dict[str, int] = {}


def _render(items: list[dict[str, Any]], limit: int, prefix: str) -> dict[str, bytes]:
    """Page bodies of one stream keyed by the token that asks for them ("" for the first);
    tokens are plain (``<prefix>p<n>``), so a client that does not URL-encode them works."""
    chunks = [items[i : i + limit] for i in range(0, len(items), limit)] or [[]]
    out = {}
    for n, chunk in enumerate(chunks):
        following = f"{prefix}p{n + 1}" if n + 1 < len(chunks) else None
        body = json.dumps({"items": chunk, "next_page": following}).encode()
        out["" if n == 0 else f"{prefix}p{n}"] = body
    return out


def pages(server: FakeApiServer, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """Read-only listings served from bodies rendered once, before the server starts.

    ``--spec`` is JSON: ``{"limit": 50, "latency": 0.005, "operations": N, "operations_order":
    "interleaved" | "blocks", "datasets": {name: {"statuses": [...], "count": N}},
    "detail_kcl": 3000}``. Each dataset gets ``count``
    conversions per status (the fake's own summary bodies, newest first); a dataset with one
    status is listed unfiltered, one with several by ``filter=status:<s>``. ``operations``
    Zoo operations per status, created in random status order (or one status after another
    with ``"blocks"``), are listed by ``status``. Every page is rendered once (the fake
    would otherwise rebuild and sort the whole listing on every request) with plain page
    tokens; a request for anything else falls through to the fake's own handler (counted in
    ``stats`` as ``fallbacks``). List requests wait ``latency`` seconds first; one completed
    text-to-CAD operation with ``detail_kcl`` characters of KCL is there for single GETs.
    """
    spec = json.loads(args.spec)
    limit = int(spec.get("limit", 50))
    table: dict[tuple[str, ...], bytes] = {}
    info: dict[str, Any] = {"datasets": {}, "limit": limit}
    for stream, (name, dataset_spec) in enumerate(spec.get("datasets", {}).items()):
        dataset = server.conversions.add_dataset()
        statuses = list(dataset_spec["statuses"])
        filtered = len(statuses) > 1
        for index, status in enumerate(statuses):
            made = [
                server.conversions.add_conversion(
                    dataset,
                    _CONVERSION_TIMELINES[status],
                    error="KCL did not compile" if status == "error_user" else None,
                    metadata={"source": "s3", "material": rng.choice(["6061-T6", "PLA"])},
                )
                for _ in range(int(dataset_spec["count"]))
            ]
            bodies = [server.conversions.summary(conversion) for conversion in reversed(made)]
            filter_text = f"status:{status}" if filtered else ""
            for token, body in _render(bodies, limit, f"c{stream}s{index}").items():
                table[("conversions", dataset, filter_text, str(limit), token)] = body
        info["datasets"][name] = {
            "id": dataset,
            "filters": [f"status:{status}" for status in statuses] if filtered else [None],
            "items": int(dataset_spec["count"]) * len(statuses),
        }
    operations = int(spec.get("operations", 0))
    if operations:
        # Created in random status order (interleaved in time), or status after status.
        order = [status for status in OPERATION_STATUSES for _ in range(operations)]
        if spec.get("operations_order", "interleaved") == "interleaved":
            rng.shuffle(order)
        by_status: dict[str, list[Any]] = {status: [] for status in OPERATION_STATUSES}
        for status in order:
            by_status[status].append(
                server.zoo.add_operation(
                    "text_to_cad",
                    [(status, None)],
                    error="the model could not build it" if status == "failed" else None,
                )
            )
        for index, (status, made) in enumerate(by_status.items()):
            bodies = [server.zoo.list_item(op) for op in reversed(made)]
            for token, body in _render(bodies, limit, f"o{index}").items():
                table[("operations", status, str(limit), token)] = body
        info["operations"] = operations * len(OPERATION_STATUSES)
    detail = server.zoo.add_operation(
        "text_to_cad",
        [("completed", None)],
        extra={"code": kcl_source(rng, int(spec.get("detail_kcl", 3000)))},
    )
    info["operation_id"] = detail.id
    _serve_rendered(server, table)
    latency = float(spec.get("latency", 0.0))
    if latency > 0:
        server.inject("latency", delay=latency, times=None, route="/org/datasets/*/conversions")
        server.inject("latency", delay=latency, times=None, route="/async/operations")
    return info


def _serve_rendered(server: FakeApiServer, table: dict[tuple[str, ...], bytes]) -> None:
    """Route the list endpoints to ``table`` (before the server starts: routes bind then)."""
    EXTRA_STATS["fallbacks"] = 0
    list_conversions, list_operations = server.conversions.handle_list, server.zoo.handle_list

    def rendered(key: tuple[str, ...], sort_by: str) -> web.Response | None:
        body = table.get(key) if sort_by == _DEFAULT_SORT else None
        if body is None:
            EXTRA_STATS["fallbacks"] += 1
            return None
        return web.Response(body=body, content_type="application/json")

    async def conversions(request: web.Request) -> web.Response:
        q = request.query
        key = (
            "conversions",
            request.match_info["id"],
            q.get("filter", ""),
            q.get("limit", ""),
            q.get("page_token", ""),
        )
        return rendered(key, q.get("sort_by", _DEFAULT_SORT)) or await list_conversions(request)

    async def operations(request: web.Request) -> web.Response:
        q = request.query
        key = ("operations", q.get("status", ""), q.get("limit", ""), q.get("page_token", ""))
        return rendered(key, q.get("sort_by", _DEFAULT_SORT)) or await list_operations(request)

    server.conversions.handle_list = conversions  # type: ignore[method-assign]
    server.zoo.handle_list = operations  # type: ignore[method-assign]


_STATE_QUERY = re.compile(r"state:([a-z_]+)")


def _lean_metafold_lists(server: FakeApiServer) -> None:
    """Metafold job listings asked for ``q=state:<s>`` alone (what a Watcher sends) render only
    the bodies of the jobs in that state, the same answer as the fake's own handler, which
    renders every job of the project before filtering (with thousands of finished jobs per
    project the fake, not the client, would be measured). Anything else falls through."""
    fake = server.metafold
    list_jobs = fake.handle_list_jobs

    async def lean(request: web.Request) -> web.Response:
        match = _STATE_QUERY.fullmatch(request.query.get("q", ""))
        project = fake.projects.get(request.match_info["project_id"])
        if match is None or set(request.query) != {"q"} or project is None:
            return await list_jobs(request)
        fake.raw_paths.append(request.raw_path)
        state, now = match.group(1), fake.clock.now()
        memo: dict[str, Any] = {}
        bodies = []
        for job_id in sorted(project.jobs, reverse=True):  # the fake's order: id descending
            if fake._seen(project, job_id, now, memo).state == state:
                body = fake.job_body(request.match_info["project_id"], job_id, memo)
                if body["state"] == state:  # the body is what the fake's own handler filters
                    bodies.append(body)
        return web.json_response(bodies)

    fake.handle_list_jobs = lean  # type: ignore[method-assign]


SCENARIOS: dict[str, Populate] = {
    "watch_many": watch_many,
    "metafold_only": metafold_only,
    "waits": waits,
}
#: Scenarios that must run before the server starts (they replace route handlers).
PREPARE: dict[str, Populate] = {"pages": pages}


async def serve(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    server = FakeApiServer(token=TOKEN)
    prepared = PREPARE[args.scenario](server, args, rng) if args.scenario in PREPARE else None
    if args.lean_lists:
        _lean_metafold_lists(server)
    async with server:
        server.keep_requests = False
        jobs = prepared if prepared is not None else SCENARIOS[args.scenario](server, args, rng)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
            json.dump(jobs, handle)
        print(json.dumps({"url": server.url, "token": TOKEN, "jobs": handle.name}), flush=True)
        batches = 0
        stdin = anyio.wrap_file(sys.stdin)
        async for line in stdin:
            words = line.split()
            if words == ["stats"]:
                print(json.dumps({"requests": server.request_count, **EXTRA_STATS}), flush=True)
            elif words and words[0] == "populate":
                batches += 1
                batch = argparse.Namespace(**vars(args))
                if len(words) > 3:
                    batch.window, batch.lead = float(words[2]), float(words[3])
                project = f"batch-{batches}"
                made = metafold_batch(server, project, int(words[1]), batch, rng)
                with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
                    json.dump(made, handle)
                print(json.dumps({"jobs": handle.name, "project": project}), flush=True)
        return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted({*SCENARIOS, *PREPARE}))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--lead", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--spec", default="{}", help="pages: what to render (JSON)")
    parser.add_argument(
        "--lean-lists", action="store_true", help="Metafold state listings render matches only"
    )
    anyio.run(serve, parser.parse_args())


if __name__ == "__main__":
    main()
