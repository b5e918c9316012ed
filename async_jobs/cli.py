"""The ``async-jobs`` command (also ``python -m async_jobs``).

Exit codes: 0 the job succeeded (or the command worked), 1 the job failed or was canceled,
2 usage error, 3 timeout, 4 API, network or authentication error (a missing token included),
130 interrupted, 141 standard output closed before a wait ended.

A closed pipe (``async-jobs --json zoo ops list | head -1``) ends the command quietly: no
traceback, standard output pointed at the null device (as the Python documentation recommends
for ``BrokenPipeError``); the exit code is 0 for a command that shows what it read once (a
listing, a ``get``), 141 (128 + SIGPIPE, what a shell reports for a program that a closed pipe
killed) for a wait cut short, whose outcome nobody saw.

Logging: while a command runs, the ``async_jobs`` logger is at WARNING, INFO with ``-v``,
DEBUG with ``-vv`` (its children inherit that level), with one handler of the output's own
(rich, above the live bars, on a terminal; plain lines on standard error otherwise) and
``propagate`` off, so a handler that the host process put on the root logger does not show
the record a second time (through the bars). The root logger is never touched; the level,
``propagate`` and handlers of ``async_jobs`` are restored when the command ends.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import anyio

from ._api import JobKind
from ._cli_output import Output, make_output
from ._client import ApiClient
from ._errors import ApiError, AsyncJobsError, WaitTimeout
from ._poll import JobRef, wait_until_terminal
from ._redact import get_logger
from ._version import __version__
from .metafold import METAFOLD_JOB, METAFOLD_WORKFLOW, MetafoldClient, wait_for_workflow_jobs
from .models._state import JobState
from .models.zoo import (
    CONVERSION_SORT_MODES,
    OPERATION_SORT_MODES,
    OPERATION_STATUSES,
    AsyncOperation,
    DatasetConversion,
)
from .zoo import ASYNC_OPERATION, DATASET, DATASET_CONVERSION, ZooClient

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_API = 4
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141
EXIT_CODES = {
    EXIT_OK: "succeeded",
    EXIT_FAILED: "the job failed or was canceled",
    EXIT_USAGE: "usage error",
    EXIT_TIMEOUT: "timeout",
    EXIT_API: "API, network or authentication error",
    EXIT_INTERRUPTED: "interrupted",
    EXIT_PIPE: "standard output closed before a wait ended",
}
EPILOG = "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())

Handler = Callable[[argparse.Namespace, Output], Awaitable[int]]


class MissingToken(AsyncJobsError):
    """No credential was found for the API a command talks to."""


def _read_token_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise MissingToken(f"cannot read --token-file {path}: {exc.strerror}") from None


def open_client(args: argparse.Namespace) -> ApiClient:
    """The command's client (``args.client``, an :class:`ApiClient` class taking ``token``
    and ``base_url``) from --token-file / --base-url or the environment the client reads
    (and ``allow_insecure_http`` / ``token_url`` when --allow-insecure-http / --token-url
    were given); MissingToken, with the client's own hint, if it finds no credential."""
    make: Callable[..., ApiClient] = args.client
    settings: dict[str, Any] = {}
    if getattr(args, "allow_insecure_http", False):
        settings["allow_insecure_http"] = True
    if getattr(args, "token_url", None):
        settings["token_url"] = args.token_url
    client = make(token=_read_token_file(args.token_file), base_url=args.base_url, **settings)
    if not client.has_credentials:
        raise MissingToken(f"{client.credentials_hint}, or pass --token-file")
    return client


def exit_code_for(job: Any) -> int:
    """0 for a succeeded job, 1 for a failed or canceled one."""
    return EXIT_OK if job.job_state is JobState.SUCCEEDED else EXIT_FAILED


async def wait_and_show(
    ref: JobRef[Any], kind: JobKind[Any], out: Output, timeout: float | None, poll: Any = None
) -> int:
    """Wait for ``ref`` (a job of ``kind``) showing every change, then the final record; the
    exit code."""
    with out.watching():
        final = await wait_until_terminal(
            ref, timeout=timeout, poll=poll, on_update=lambda job: out.update(kind, job)
        )
        out.final(kind, final)
    return exit_code_for(final)


# -- every kind: list, get, wait ------------------------------------------------------------
# A command's parser sets ``client`` (the ApiClient class), ``kind`` (the JobKind), ``ids``
# (its arguments as the kind's ids, in path order) and, for ``list``, ``lister``.

#: A command's arguments as the ids of one job (in the order of its kind's ``id_names``).
Ids = Callable[[Any, argparse.Namespace], tuple[str, ...]]
#: A ``list`` command's listing: the client and the arguments to the jobs to show.
Lister = Callable[[Any, argparse.Namespace], AsyncIterator[Any]]


async def list_jobs(args: argparse.Namespace, out: Output) -> int:
    """``... list``: every job the command's lister yields."""
    lister: Lister = args.lister
    async with open_client(args) as client:
        async for job in lister(client, args):
            out.item(args.kind, job)
    out.end_items()
    return EXIT_OK


async def get_job(args: argparse.Namespace, out: Output) -> int:
    """``... get [IDS] ID``: the job, fetched once."""
    ids: Ids = args.ids
    async with open_client(args) as client:
        out.job(args.kind, await client.fetch(args.kind, *ids(client, args)))
    return EXIT_OK


async def cancel_job(args: argparse.Namespace, out: Output) -> int:
    """``... cancel [IDS] ID``: ask the API to cancel the job (a kind with a ``cancel``) and
    show what it answers. One the API refuses (already finished, say) is an API error."""
    ids: Ids = args.ids
    async with open_client(args) as client:
        out.job(args.kind, await client.ref(args.kind, *ids(client, args)).cancel())
    return EXIT_OK


async def wait_job(args: argparse.Namespace, out: Output) -> int:
    """``... wait [IDS] ID``: the job's progress until it ends (a phase-labelled bar for a
    conversion)."""
    ids: Ids = args.ids
    async with open_client(args) as client:
        ref = client.ref(args.kind, *ids(client, args))
        return await wait_and_show(ref, args.kind, out, args.timeout)


# -- zoo --------------------------------------------------------------------------------------


def _job_id(client: Any, args: argparse.Namespace) -> tuple[str, ...]:
    return (args.id,)


def _dataset_ids(client: Any, args: argparse.Namespace) -> tuple[str, ...]:
    return (args.dataset, args.id)


def _operations(zoo: ZooClient, args: argparse.Namespace) -> AsyncIterator[AsyncOperation]:
    return zoo.iter_async_operations(
        status=args.status or None, sort_by=args.sort, limit=args.limit, max_items=args.max_items
    )


def _conversions(zoo: ZooClient, args: argparse.Namespace) -> AsyncIterator[DatasetConversion]:
    return zoo.iter_dataset_conversions(
        args.dataset,
        sort_by=args.sort,
        limit=args.limit,
        max_items=args.max_items,
        filter=args.filter,
        q=args.q,
        phase=args.phase,
    )


async def zoo_retrigger(args: argparse.Namespace, out: Output) -> int:
    """``zoo conversions retrigger DATASET [ID] [--statuses a,b]``: run one conversion again,
    or the dataset's conversions with those statuses (none: the server's choice)."""
    if args.id is not None and args.statuses is not None:
        raise ValueError("--statuses selects a dataset's conversions: give no conversion id")
    async with open_client(args) as client:
        zoo = cast(ZooClient, client)
        if args.id is not None:
            await zoo.retrigger_conversion(args.dataset, args.id)
            message = f"retriggered conversion {args.id} of dataset {args.dataset}"
            statuses = None
        else:
            statuses = args.statuses.split(",") if args.statuses is not None else None
            await zoo.retrigger_dataset(args.dataset, statuses)
            which = ", ".join(statuses) if statuses else "the server's default selection"
            message = f"retriggered conversions of dataset {args.dataset} ({which})"
    out.result(
        "retriggered",
        message,
        dataset_id=args.dataset,
        conversion_id=args.id,
        statuses=statuses,
    )
    return EXIT_OK


# -- metafold ---------------------------------------------------------------------------------


def _project_ids(mf: MetafoldClient, args: argparse.Namespace) -> tuple[str, ...]:
    return (mf.resolve_project_id(args.project), args.id)


def _whole_list(method: Callable[..., Awaitable[list[Any]]]) -> Lister:
    """A ``list`` of a project's jobs or workflows by ``method``: one request (the API does
    not paginate), cut at --max-items."""

    async def listing(mf: MetafoldClient, args: argparse.Namespace) -> AsyncIterator[Any]:
        found = await method(mf, args.project, sort=args.sort, q=args.q)
        for job in found[: args.max_items]:
            yield job

    return listing


async def _wait_for_workflow(
    mf: MetafoldClient, workflow_id: str, args: argparse.Namespace, out: Output
) -> int:
    """One bar per job of the workflow, then its jobs and itself as final records."""
    with out.watching():
        jobs = await wait_for_workflow_jobs(
            mf,
            workflow_id,
            project_id=args.project,
            timeout=args.timeout,
            on_update=lambda job: out.update(METAFOLD_JOB, job),
        )
        for job in jobs:
            out.final(METAFOLD_JOB, job)
        workflow = await mf.get_workflow(workflow_id, project_id=args.project)
        out.final(METAFOLD_WORKFLOW, workflow)
    failed = any(job.job_state is not JobState.SUCCEEDED for job in jobs)
    return EXIT_FAILED if failed else exit_code_for(workflow)


async def metafold_workflow_wait(args: argparse.Namespace, out: Output) -> int:
    """``metafold workflows wait ID``: one bar per job of the workflow."""
    async with open_client(args) as client:
        return await _wait_for_workflow(cast(MetafoldClient, client), args.id, args, out)


async def metafold_workflow_create(args: argparse.Namespace, out: Output) -> int:
    """``metafold workflows create FILE``: dispatch the YAML definition in FILE (with
    ``--asset``/``--param`` values) and show the workflow; with ``--wait``, then wait as
    ``metafold workflows wait`` does. Sent once unless the server surely did not act on it."""
    try:
        definition = await anyio.Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read {args.file}: {reason}") from None
    async with open_client(args) as client:
        mf = cast(MetafoldClient, client)
        workflow = await mf.create_workflow(
            definition,
            assets=dict(args.asset) if args.asset else None,
            parameters=dict(args.param) if args.param else None,
            project_id=args.project,
        )
        out.job(METAFOLD_WORKFLOW, workflow)
        if not args.wait:
            return EXIT_OK
        return await _wait_for_workflow(mf, workflow.id, args, out)


# -- demo and fake server ---------------------------------------------------------------------


async def demo(args: argparse.Namespace, out: Output) -> int:
    """``demo``: the embedded fake server, a realistic mix of jobs, watched to the end."""
    from ._demo import run_demo

    await run_demo(out, speed=args.speed)
    return EXIT_OK


def fake_server_epilog() -> str:
    """The ``fake-server`` help's closing text: the control route and the exit codes."""
    return (
        "The server prints its URL, its token, the seeded dataset and project ids and the\n"
        "commands to try, then serves until Ctrl-C. Point any client at the URL with the\n"
        "token: ZOO_HOST / METAFOLD_BASE_URL and ZOO_API_TOKEN / METAFOLD_ACCESS_TOKEN.\n"
        "\n"
        "control route: add a scripted job from another process\n"
        "  POST /_control/jobs  (Authorization: Bearer TOKEN)\n"
        '  {"kind": "zoo.async_operation" | "zoo.dataset_conversion" | "metafold.job",\n'
        '   "timeline": [["queued", 2], ["in_progress", 30], ["completed", null]],\n'
        '   "error": "...", "type": "...", "name": "...", "dataset": "...", "project": "..."}\n'
        "  timeline: the statuses the job walks, with the seconds it stays in each (the\n"
        "  last one's null: it stays there); all but kind optional (default: about ten\n"
        "  seconds running, then success; the demo dataset and project). Answers 201 with\n"
        '  {"kind", "id", "ids", "wait"} (wait: the async-jobs command that waits for it),\n'
        '  400 with {"message"} for a body it cannot use, 401 without the token.\n'
        "\n" + EPILOG
    )


def _seeded(jobs: list[Any]) -> dict[str, list[str]]:
    """The seeded ids by kind name (a conversion's or Metafold job's last id)."""
    ids: dict[str, list[str]] = {}
    for job in jobs:
        ids.setdefault(job.kind, []).append(job.ids[-1])
    return ids


async def fake_server(args: argparse.Namespace, out: Output) -> int:
    """``fake-server``: print where it listens, its token, the seeded ids and how to use them
    (one JSON line with ``--json``), then serve until interrupted."""
    from .testing import FakeApiServer
    from .testing._control import CONTROL_JOBS_PATH, ControlApi
    from .testing._scenarios import DEMO_DATASET, DEMO_PROJECT, populate

    token = _read_token_file(args.server_token_file) or os.environ.get("ASYNC_JOBS_FAKE_TOKEN")
    server = FakeApiServer(host=args.host, port=args.port, apis=[ControlApi()])
    if token:
        server.token = token
    async with server:
        server.clock.set_speed(args.speed)
        jobs = populate(server, args.scenario)
        seeded = _seeded(jobs)
        url, control = server.url, server.url + CONTROL_JOBS_PATH
        dataset = DEMO_DATASET if jobs else None
        project = DEMO_PROJECT if jobs else None
        if args.server_json:
            record = {
                "event": "fake_server",
                "url": url,
                "token": None if token else server.token,
                "dataset": dataset,
                "project": project,
                "jobs": seeded,
                "control": control,
            }
            print(json.dumps(record), flush=True)
        else:
            shown = "$(cat " + args.server_token_file + ")" if args.server_token_file else None
            shown = shown or ("$ASYNC_JOBS_FAKE_TOKEN" if token else server.token)
            print(_fake_server_text(url, shown, token, dataset, project, seeded, control))
            sys.stdout.flush()
        await anyio.sleep_forever()
    return EXIT_OK  # pragma: no cover - only interruption ends the server


def _fake_server_text(
    url: str,
    shown: str | None,
    token: str | None,
    dataset: str | None,
    project: str | None,
    seeded: dict[str, list[str]],
    control: str,
) -> str:
    """What ``fake-server`` prints on start (the token only when it is the fake's own)."""
    lines = [
        f"FakeApiServer listening on {url}",
        f"token: {'(from --token-file)' if token else shown}",
    ]
    if dataset is not None and project is not None:
        counts = ", ".join(f"{len(ids)} {kind}" for kind, ids in seeded.items())
        operation = seeded.get("zoo.async_operation", ["ID"])
        lines += [
            f"seeded: {counts}",
            f"  Zoo dataset:      {dataset}",
            f"  Metafold project: {project}",
            "",
            "try, in another shell:",
            f"  export ZOO_HOST={url} METAFOLD_BASE_URL={url} METAFOLD_PROJECT_ID={project}",
            f'  export ZOO_API_TOKEN="{shown}" METAFOLD_ACCESS_TOKEN="{shown}"',
            "  async-jobs zoo ops list",
            f"  async-jobs zoo conversions list {dataset}",
            "  async-jobs metafold jobs list",
            f"  async-jobs zoo ops wait {operation[-1]}      (runs for an hour at --speed 1)",
        ]
    else:
        lines += ["seeded: nothing (--scenario empty)", ""]
    lines += [
        "add a job (see async-jobs fake-server --help):",
        f'  curl -X POST {control} -H "Authorization: Bearer {shown}" \\',
        """    -d '{"kind": "zoo.async_operation", "timeline": [["in_progress", 30], """
        """["completed", null]]}'""",
    ]
    return "\n".join(lines)


async def durable_status(args: argparse.Namespace, out: Output) -> int:
    """``durable status``: what the durable watches in Redis hold
    (:meth:`~async_jobs.contrib.redis.DurableWatches.status`)."""
    try:
        from redis import asyncio as aioredis
        from redis.exceptions import RedisError

        from .contrib.redis import DurableWatches
    except ImportError:
        out.error("durable status needs the redis extra: pip install 'async-jobs[redis]'")
        return EXIT_USAGE
    url = args.redis_url or os.environ.get("REDIS_URL") or "redis://localhost:6379/0"
    kind = aioredis.RedisCluster if args.cluster else aioredis.Redis
    client = kind.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    names = {
        "stream": args.stream,
        "group": args.group,
        "results": args.results,
        "dead_letter": args.dead_letter,
    }
    try:
        watches = DurableWatches(client, **names)
        made = await watches.stored_partitions()
        if made is not None and made != watches.partitions:
            watches = DurableWatches(client, partitions=made, **names)
        status = await watches.status()
    except RedisError as exc:
        # redis-py names the host and port, never the URL's password.
        out.error(f"cannot read the durable watches: {type(exc).__name__}: {exc}")
        return EXIT_API
    finally:
        await client.aclose()
    fields = dataclasses.asdict(status)
    owned = status.owned()
    unowned = sum(1 for part in status.partitions if part.owner is None)
    lines = [
        f"{status.pending} pending ({status.undelivered} not read by any worker), "
        f"{status.dead_lettered} dead-lettered, {status.results} results",
        f"{len(status.partitions)} partitions ({unowned} without an owner), "
        f"{len(status.workers)} live workers, {status.consumers} consumers",
    ]
    for name in sorted(set(status.workers) | set(status.in_flight) | set(owned)):
        seen = status.workers.get(name)
        lines.append(
            f"  {name}: {len(owned.get(name, []))} partitions, "
            f"{status.in_flight.get(name, 0)} in flight, "
            + (f"seen {seen:.1f} s ago" if seen is not None else "not live")
        )
    for part in status.partitions:
        if part.pending or (part.owner is None and owned):
            lines.append(
                f"  partition {part.index}: {part.pending} pending, {part.undelivered} not read, "
                f"owner {part.owner or '-'}"
            )
    out.result("durable_status", "\n".join(lines), **fields)
    return EXIT_OK


# -- parser -----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0 seconds")
    return value


def _speed(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _non_empty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _http_url(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest:
        raise argparse.ArgumentTypeError(f"expected an http(s) URL, got {text!r}")
    return text


def _statuses(text: str) -> str:
    names = text.split(",")
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated statuses, got {text!r}")
    return text


#: The scenarios of ``fake-server`` (those of ``testing._scenarios``, not imported here so
#: that the command starts without loading the fake).
FAKE_SCENARIOS = ("demo", "empty")
TIMEOUT = "give up after this many seconds (exit 3; default: no limit)"
SPEED = "how fast the fake's job timelines run (2: twice as fast; 0: frozen)"
PAGE_SIZE = "items per request (the API's page size)"
MAX_ITEMS = "stop after this many items"
DATASET_ID = "the dataset's id"
PROJECT: dict[str, Any] = {
    "type": _non_empty,
    "default": argparse.SUPPRESS,
    "help": "the project's id (default: METAFOLD_PROJECT_ID)",
}

#: The options every command that talks to an API takes, by their ``dest``; ``main`` refuses
#: one given (before the command's name) to a command it does not apply to.
API_OPTIONS = {
    "base_url": "--base-url",
    "token_file": "--token-file",
    "allow_insecure_http": "--allow-insecure-http",
}
METAFOLD_OPTIONS = {"token_url": "--token-url"}
OUTPUT_OPTIONS = {"json": "--json", "verbose": "-v"}


def _output_options() -> argparse.ArgumentParser:
    """--json and -v: every command but ``fake-server`` (which has its own --json)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="JSON lines on standard output (the default when it is not a terminal)",
    )
    options.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="-v: library INFO logs, -vv: DEBUG (every request); on standard error, or above "
        "the bars on a terminal",
    )
    return options


def _api_options() -> argparse.ArgumentParser:
    """How to reach an API: the ``zoo`` and ``metafold`` commands."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--base-url",
        type=_http_url,
        default=argparse.SUPPRESS,
        metavar="URL",
        help="the API's base URL (default: ZOO_HOST or METAFOLD_BASE_URL, then the public API)",
    )
    options.add_argument(
        "--token-file",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="read the API token from this file (default: the API's token variable, e.g. "
        "ZOO_API_TOKEN or METAFOLD_ACCESS_TOKEN)",
    )
    options.add_argument(
        "--allow-insecure-http",
        action="store_true",
        default=argparse.SUPPRESS,
        help="allow a plain http:// base URL to a host that is not this machine (the token "
        "travels in clear)",
    )
    return options


def _metafold_options() -> argparse.ArgumentParser:
    """Metafold's client credentials: the ``metafold`` commands."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--token-url",
        type=_http_url,
        default=argparse.SUPPRESS,
        metavar="URL",
        help="where METAFOLD_CLIENT_ID and METAFOLD_CLIENT_SECRET are exchanged for a token "
        "(OAuth2 client credentials; default: Metafold's Auth0 endpoint)",
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``async-jobs``."""
    output, api, metafold_api = _output_options(), _api_options(), _metafold_options()
    parser = argparse.ArgumentParser(
        prog="async-jobs",
        description="Watch remote long-running jobs: Zoo async operations, Zoo dataset "
        "conversions and whole datasets, Metafold jobs and workflows.",
        epilog=EPILOG,
        parents=[output, api, metafold_api],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"async-jobs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(
        group: Any,
        name: str,
        handler: Handler,
        help: str,
        parents: list[argparse.ArgumentParser],
        epilog: str = EPILOG,
        **defaults: Any,
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog,
            parents=parents,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler, **defaults)
        return sub

    def get_and_wait(
        cmds: Any,
        helps: tuple[str, str],
        ids: Ids,
        positionals: tuple[tuple[str, str], ...],
        parents: list[argparse.ArgumentParser],
        *,
        wait: Handler = wait_job,
        project: bool = False,
        names: tuple[str, str] = ("get", "wait"),
    ) -> None:
        """The ``get`` and ``wait`` commands of one kind (called ``names``): ``positionals``
        (name, help) become its ids."""
        for name, handler, help in zip(names, (get_job, wait), helps, strict=True):
            p = leaf(cmds, name, handler, help, parents, ids=ids, waits=handler is wait)
            for positional, what in positionals:
                p.add_argument(positional, type=_non_empty, help=what)
            if project:
                p.add_argument("--project", **PROJECT)
            if handler is wait:
                p.add_argument("--timeout", type=_seconds, metavar="SECONDS", help=TIMEOUT)

    p = leaf(
        commands,
        "demo",
        demo,
        "run a demo against the embedded fake server (no token, no network)",
        [output],
        waits=True,
    )
    p.add_argument("--speed", type=_speed, default=1.0, metavar="X", help=SPEED)

    durable = commands.add_parser(
        "durable", help="durable watches in Redis (the redis extra)", parents=[output]
    )
    durable_cmds = durable.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(
        durable_cmds, "status", durable_status, "what the durable watches in Redis hold", [output]
    )
    p.add_argument(
        "--redis-url",
        default=None,
        help="redis://... (default: $REDIS_URL, then redis://localhost:6379/0)",
    )
    p.add_argument("--stream", default="async_jobs:watches", help="the watches stream")
    p.add_argument("--group", default="async_jobs", help="the workers' consumer group")
    p.add_argument("--results", default="async_jobs:results", help="the results stream")
    p.add_argument("--dead-letter", default="async_jobs:dead", help="the dead-letter stream")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="the URL names a node of a Redis Cluster (redis.asyncio.RedisCluster)",
    )

    p = leaf(
        commands,
        "fake-server",
        fake_server,
        "run the fake API server (Zoo and Metafold) until interrupted; print its URL, token "
        "and seeded ids",
        [],
        epilog=fake_server_epilog(),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1; the fake is for tests and demos: "
        "keep it on loopback)",
    )
    p.add_argument("--port", type=int, default=0, help="the port (default 0: a free one)")
    p.add_argument(
        "--scenario",
        choices=FAKE_SCENARIOS,
        default="demo",
        help="the jobs to seed: demo (operations, a dataset's conversions, Metafold jobs and "
        "a workflow; some end within seconds, some run for minutes) or empty",
    )
    p.add_argument("--speed", type=_speed, default=1.0, metavar="X", help=SPEED)
    p.add_argument(
        "--token-file",
        dest="server_token_file",
        metavar="FILE",
        help="the token the server accepts, read from this file (default: "
        "$ASYNC_JOBS_FAKE_TOKEN, else a fixed test token, printed)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        dest="server_json",
        help="print the URL, token and seeded ids as one JSON line instead",
    )

    zoo_parents = [output, api]
    zoo = commands.add_parser("zoo", help="the Zoo API", parents=zoo_parents)
    zoo.set_defaults(client=ZooClient)
    zoo_groups = zoo.add_subparsers(dest="group", metavar="GROUP", required=True)
    ops = zoo_groups.add_parser("ops", help="async operations", parents=zoo_parents)
    ops.set_defaults(kind=ASYNC_OPERATION)
    ops_cmds = ops.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(ops_cmds, "list", list_jobs, "list async operations", zoo_parents, lister=_operations)
    p.add_argument(
        "--status",
        action="append",
        choices=OPERATION_STATUSES,
        help="only operations in this status (repeatable; default: all)",
    )
    p.add_argument(
        "--sort",
        choices=OPERATION_SORT_MODES,
        default="created_at_ascending",
        help="the order (default: created_at_ascending)",
    )
    p.add_argument("--limit", type=_positive_int, help=PAGE_SIZE)
    p.add_argument("--max-items", type=_positive_int, help=MAX_ITEMS)
    helps = ("get one async operation", "wait for an async operation to finish")
    get_and_wait(ops_cmds, helps, _job_id, (("id", "the operation's id"),), zoo_parents)

    convs = zoo_groups.add_parser(
        "conversions", help="org dataset conversions", parents=zoo_parents
    )
    convs.set_defaults(kind=DATASET_CONVERSION)
    conv_cmds = convs.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(
        conv_cmds,
        "list",
        list_jobs,
        "list a dataset's conversions",
        zoo_parents,
        lister=_conversions,
    )
    p.add_argument("dataset", type=_non_empty, help=DATASET_ID)
    p.add_argument(
        "--sort",
        choices=CONVERSION_SORT_MODES,
        default="created_at_descending",
        help="the order (default: created_at_descending)",
    )
    p.add_argument("--limit", type=_positive_int, help=PAGE_SIZE)
    p.add_argument("--max-items", type=_positive_int, help=MAX_ITEMS)
    p.add_argument("--filter", type=_non_empty, help="the API's filter, e.g. status:success")
    p.add_argument("--q", type=_non_empty, help="search text")
    p.add_argument("--phase", type=_non_empty, help="only conversions in this phase")
    helps = ("get one conversion", "wait for a conversion to finish")
    positionals = (("dataset", DATASET_ID), ("id", "the conversion's id"))
    get_and_wait(conv_cmds, helps, _dataset_ids, positionals, zoo_parents)
    p = leaf(
        conv_cmds,
        "retrigger",
        zoo_retrigger,
        "run one conversion again, or a dataset's conversions (POST, never sent twice blindly)",
        zoo_parents,
    )
    p.add_argument("dataset", type=_non_empty, help=DATASET_ID)
    p.add_argument("id", nargs="?", type=_non_empty, help="one conversion (default: the dataset's)")
    p.add_argument(
        "--statuses",
        type=_statuses,
        help="comma-separated statuses to retrigger, e.g. error_user,canceled (default: every "
        "conversion that did not succeed, in_progress ones running for over 5 minutes)",
    )

    datasets = zoo_groups.add_parser(
        "datasets", help="org datasets, each as one job", parents=zoo_parents
    )
    datasets.set_defaults(kind=DATASET)
    dataset_cmds = datasets.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = (
        "a dataset's conversions counted by status",
        "wait until no conversion of a dataset is under way (one progress bar)",
    )
    get_and_wait(
        dataset_cmds, helps, _job_id, (("id", DATASET_ID),), zoo_parents, names=("stats", "wait")
    )

    mf_parents = [output, api, metafold_api]
    metafold = commands.add_parser("metafold", help="the Metafold API", parents=mf_parents)
    metafold.set_defaults(client=MetafoldClient)
    mf_groups = metafold.add_subparsers(dest="resource", metavar="GROUP", required=True)
    for resource, kind, list_method, wait in (
        ("jobs", METAFOLD_JOB, MetafoldClient.list_jobs, wait_job),
        ("workflows", METAFOLD_WORKFLOW, MetafoldClient.list_workflows, metafold_workflow_wait),
    ):
        group = mf_groups.add_parser(resource, help=f"project {resource}", parents=mf_parents)
        group.add_argument("--project", **{**PROJECT, "default": None})
        group.set_defaults(kind=kind)
        mf_cmds = group.add_subparsers(dest="action", metavar="ACTION", required=True)
        lister = _whole_list(list_method)
        p = leaf(
            mf_cmds, "list", list_jobs, f"list a project's {resource}", mf_parents, lister=lister
        )
        p.add_argument("--project", **PROJECT)
        p.add_argument("--sort", help="field:1 or field:-1, e.g. created:-1")
        p.add_argument("--q", help='search, e.g. "state:started AND type:implicit/*"')
        p.add_argument("--max-items", type=_positive_int, help=MAX_ITEMS)
        helps = (f"get one of a project's {resource}", f"wait for one of a project's {resource}")
        the_id = (("id", f"the {resource[:-1]}'s id"),)
        get_and_wait(mf_cmds, helps, _project_ids, the_id, mf_parents, wait=wait, project=True)
        if kind.cancel is not None:
            p = leaf(
                mf_cmds, "cancel", cancel_job, f"cancel one of a project's {resource}", mf_parents
            )
            p.set_defaults(ids=_project_ids)
            p.add_argument("id", type=_non_empty, help=f"the {resource[:-1]}'s id")
            p.add_argument("--project", **PROJECT)
        if resource == "workflows":
            p = leaf(
                mf_cmds,
                "create",
                metafold_workflow_create,
                "dispatch a workflow from a YAML definition file",
                mf_parents,
            )
            p.add_argument("file", help="the workflow definition (YAML)")
            p.add_argument("--project", **PROJECT)
            for option, what in (("--asset", "asset filename"), ("--param", "parameter")):
                p.add_argument(
                    option,
                    action="append",
                    type=_key_value,
                    metavar="JOB.NAME=VALUE",
                    help=f"a job's {what} (repeatable)",
                )
            p.add_argument("--wait", action="store_true", help="then wait for its jobs")
            p.add_argument(
                "--timeout", type=_seconds, metavar="SECONDS", help=TIMEOUT + " (with --wait)"
            )
    return parser


def log_level(verbosity: int) -> int:
    """The level of the ``async_jobs`` loggers for ``-v`` given ``verbosity`` times."""
    return (logging.WARNING, logging.INFO)[verbosity] if verbosity < 2 else logging.DEBUG


@contextmanager
def library_logging(verbosity: int, out: Output) -> Iterator[logging.Handler]:
    """Show the ``async_jobs`` loggers' records through ``out`` while the block runs."""
    logger = get_logger("async_jobs")  # its records, and its children's, are masked
    handler = out.log_handler()
    saved = logger.level, logger.propagate
    logger.setLevel(log_level(verbosity))
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        handler.close()


#: Library messages that name a keyword argument, as the CLI says them: (the library's words,
#: the command line's). The library's messages are right for library users; a CLI user has
#: flags and variables instead.
CLI_TERMS = (
    (
        "pass project_id= or set one on the client (or METAFOLD_PROJECT_ID)",
        "pass --project or set METAFOLD_PROJECT_ID",
    ),
    ("pass allow_insecure_http=True", "pass --allow-insecure-http"),
    (
        # --base-url and --token-url are checked by the parser: this one came from a variable
        "base_url must be an http(s) URL",
        "the base URL (ZOO_HOST or METAFOLD_BASE_URL) must be an http(s) URL",
    ),
    ("sort must look like", "--sort must look like"),
    ("project_id must be", "--project must be"),
)


def cli_terms(message: str) -> str:
    """``message`` with the library's keyword arguments named as the CLI's options."""
    for library, command_line in CLI_TERMS:
        message = message.replace(library, command_line)
    return message


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        text = f"HTTP {exc.status}: {exc.message}"
        if exc.code:
            text += f" [{exc.code}]"
        if exc.request_id:
            text += f" (request id {exc.request_id})"
        return text
    return cli_terms(str(exc))


def _waits(args: argparse.Namespace) -> bool:
    """True for a command whose exit code says how a job ended (a wait)."""
    return bool(getattr(args, "waits", False) or getattr(args, "wait", False))


async def _run(handler: Handler, args: argparse.Namespace, out: Output) -> int:
    """Run ``handler``; cancel it when ``out`` finds its reader gone (a closed pipe)."""
    with anyio.CancelScope() as scope:
        out.on_closed = scope.cancel
        return await handler(args, out)
    # Only the closed output cancels the scope: the command was cut short.
    return EXIT_PIPE if _waits(args) else EXIT_OK


def _check_applies(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error for an option given (before the command's name) to a command it does
    not apply to: ``--base-url`` to ``demo``, ``--token-url`` to ``zoo``, ``-v`` to
    ``fake-server``."""
    applies = {
        "zoo": {**OUTPUT_OPTIONS, **API_OPTIONS},
        "metafold": {**OUTPUT_OPTIONS, **API_OPTIONS, **METAFOLD_OPTIONS},
        "fake-server": {},
    }.get(args.command, OUTPUT_OPTIONS)
    if args.command == "fake-server" and hasattr(args, "json"):
        args.server_json = args.server_json or args.json  # its own --json, given first
        del args.json
    every = {**OUTPUT_OPTIONS, **API_OPTIONS, **METAFOLD_OPTIONS}
    for dest, option in every.items():
        if hasattr(args, dest) and dest not in applies:
            parser.error(f"{option} does not apply to {args.command}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_applies(parser, args)
    for name, default in (
        ("base_url", None),
        ("token_file", None),
        ("allow_insecure_http", False),
        ("token_url", None),
        ("json", False),
        ("verbose", 0),
    ):
        if not hasattr(args, name):
            setattr(args, name, default)
    out = make_output(args.json)
    handler: Handler = args.handler
    with library_logging(args.verbose, out):
        try:
            return anyio.run(_run, handler, args, out)
        except BrokenPipeError:  # a write the output does not guard (a terminal gone, ...)
            out.reader_gone(sys.stdout)
            return EXIT_PIPE if _waits(args) else EXIT_OK
        except (KeyboardInterrupt, asyncio.CancelledError):
            # Ctrl-C: the event loop's runner cancels the main task, then raises
            # KeyboardInterrupt on 3.11+; on 3.10 (no Task.uncancel) the CancelledError itself
            # comes out of anyio.run. Nothing else cancels the main task.
            print("interrupted", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        except WaitTimeout as exc:
            out.error(str(exc))
            return EXIT_TIMEOUT
        except (AsyncJobsError, ValueError) as exc:
            if args.verbose >= 2:
                traceback.print_exc()
            out.error(_describe(exc))
            return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_API
