"""The ``async-jobs`` command (also ``python -m async_jobs``).

Exit codes: 0 the job succeeded (or the command worked), 1 the job failed or was canceled,
2 usage error, 3 timeout, 4 API, network or authentication error (a missing token included),
130 interrupted.

Logging: while a command runs, the ``async_jobs`` logger is at WARNING, INFO with ``-v``,
DEBUG with ``-vv`` (its children inherit that level), with one handler of the output's own
(rich, above the live bars, on a terminal; plain lines on standard error otherwise) and
``propagate`` off, so a handler that the host process put on the root logger does not show
the record a second time (through the bars). The root logger is never touched; the level,
``propagate`` and handlers of ``async_jobs`` are restored when the command ends.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from ._cli_output import Output, make_output
from ._client import from_env
from ._errors import ApiError, AsyncJobsError, WaitTimeout
from ._poll import JobRef, wait_until_terminal
from ._redact import get_logger
from ._version import __version__
from .metafold import MetafoldClient, wait_for_workflow_jobs
from .models._state import JobState
from .models.zoo import CONVERSION_SORT_MODES, OPERATION_SORT_MODES, OPERATION_STATUSES
from .zoo import ZooClient

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_API = 4
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    EXIT_OK: "succeeded",
    EXIT_FAILED: "the job failed or was canceled",
    EXIT_USAGE: "usage error",
    EXIT_TIMEOUT: "timeout",
    EXIT_API: "API, network or authentication error",
    EXIT_INTERRUPTED: "interrupted",
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


def zoo_client(args: argparse.Namespace) -> ZooClient:
    """A ZooClient from --token-file / --base-url or the environment."""
    token = _read_token_file(args.token_file) or from_env(
        None, "ZOO_API_TOKEN", "KITTYCAD_API_TOKEN"
    )
    if not token:
        raise MissingToken(
            "no Zoo API token: set ZOO_API_TOKEN (or KITTYCAD_API_TOKEN), or pass --token-file"
        )
    return ZooClient(token=token, base_url=args.base_url)


def exit_code_for(job: Any) -> int:
    """0 for a succeeded job, 1 for a failed or canceled one."""
    return EXIT_OK if job.job_state is JobState.SUCCEEDED else EXIT_FAILED


async def wait_and_show(
    ref: JobRef[Any], out: Output, timeout: float | None, poll: Any = None
) -> int:
    """Wait for ``ref`` showing every change, then the final record; the exit code."""
    with out.watching():
        final = await wait_until_terminal(
            ref, timeout=timeout, poll=poll, on_update=lambda job: out.update(ref.kind, job)
        )
        out.final(ref.kind, final)
    return exit_code_for(final)


# -- zoo ops ----------------------------------------------------------------------------------


async def zoo_ops_list(args: argparse.Namespace, out: Output) -> int:
    """``zoo ops list``."""
    async with zoo_client(args) as zoo:
        async for op in zoo.iter_async_operations(
            status=args.status or None,
            sort_by=args.sort,
            limit=args.limit,
            max_items=args.max_items,
        ):
            out.item("zoo.async_operation", op)
    out.end_items()
    return EXIT_OK


async def zoo_ops_get(args: argparse.Namespace, out: Output) -> int:
    """``zoo ops get ID``."""
    async with zoo_client(args) as zoo:
        out.job("zoo.async_operation", await zoo.get_async_operation(args.id))
    return EXIT_OK


async def zoo_ops_wait(args: argparse.Namespace, out: Output) -> int:
    """``zoo ops wait ID``."""
    async with zoo_client(args) as zoo:
        return await wait_and_show(zoo.async_operation(args.id), out, args.timeout)


# -- zoo conversions --------------------------------------------------------------------------


async def zoo_conversions_list(args: argparse.Namespace, out: Output) -> int:
    """``zoo conversions list DATASET``."""
    async with zoo_client(args) as zoo:
        async for conversion in zoo.iter_dataset_conversions(
            args.dataset,
            sort_by=args.sort,
            limit=args.limit,
            max_items=args.max_items,
            filter=args.filter,
            q=args.q,
            phase=args.phase,
        ):
            out.item("zoo.dataset_conversion", conversion)
    out.end_items()
    return EXIT_OK


async def zoo_conversions_get(args: argparse.Namespace, out: Output) -> int:
    """``zoo conversions get DATASET ID``."""
    async with zoo_client(args) as zoo:
        conversion = await zoo.get_dataset_conversion(args.dataset, args.id)
        out.job("zoo.dataset_conversion", conversion)
    return EXIT_OK


async def zoo_conversions_wait(args: argparse.Namespace, out: Output) -> int:
    """``zoo conversions wait DATASET ID``: a phase-labelled progress bar."""
    async with zoo_client(args) as zoo:
        return await wait_and_show(zoo.dataset_conversion(args.dataset, args.id), out, args.timeout)


# -- metafold ---------------------------------------------------------------------------------


def metafold_client(args: argparse.Namespace) -> MetafoldClient:
    """A MetafoldClient from --token-file / --base-url / --project or the environment."""
    token = _read_token_file(args.token_file)
    has_credentials = from_env(None, "METAFOLD_CLIENT_ID") and from_env(
        None, "METAFOLD_CLIENT_SECRET"
    )
    if not token and not has_credentials:
        token = from_env(None, "METAFOLD_ACCESS_TOKEN")
        if not token:
            raise MissingToken(
                "no Metafold credentials: set METAFOLD_ACCESS_TOKEN (or METAFOLD_CLIENT_ID and "
                "METAFOLD_CLIENT_SECRET), or pass --token-file"
            )
    return MetafoldClient(token=token, base_url=args.base_url, project_id=args.project)


async def metafold_list(args: argparse.Namespace, out: Output) -> int:
    """``metafold jobs|workflows list``."""
    async with metafold_client(args) as mf:
        if args.resource == "jobs":
            found: list[Any] = await mf.list_jobs(sort=args.sort, q=args.q)
        else:
            found = await mf.list_workflows(sort=args.sort, q=args.q)
    for job in found[: args.max_items]:
        out.item(f"metafold.{args.resource[:-1]}", job)
    out.end_items()
    return EXIT_OK


async def metafold_get(args: argparse.Namespace, out: Output) -> int:
    """``metafold jobs|workflows get ID``."""
    async with metafold_client(args) as mf:
        if args.resource == "jobs":
            out.job("metafold.job", await mf.get_job(args.id))
        else:
            out.job("metafold.workflow", await mf.get_workflow(args.id))
    return EXIT_OK


async def metafold_wait(args: argparse.Namespace, out: Output) -> int:
    """``metafold jobs wait ID``, or ``metafold workflows wait ID`` with one bar per job."""
    async with metafold_client(args) as mf:
        if args.resource == "jobs":
            return await wait_and_show(mf.job(args.id), out, args.timeout)
        with out.watching():
            jobs = await wait_for_workflow_jobs(
                mf,
                args.id,
                timeout=args.timeout,
                on_update=lambda job: out.update("metafold.job", job),
            )
            for job in jobs:
                out.final("metafold.job", job)
            workflow = await mf.get_workflow(args.id)
            out.final("metafold.workflow", workflow)
    failed = any(job.job_state is not JobState.SUCCEEDED for job in jobs)
    return EXIT_FAILED if failed else exit_code_for(workflow)


# -- demo and fake server ---------------------------------------------------------------------


async def demo(args: argparse.Namespace, out: Output) -> int:
    """``demo``: the embedded fake server, a realistic mix of jobs, watched to the end."""
    from ._demo import run_demo

    await run_demo(out, speed=args.speed)
    return EXIT_OK


async def fake_server(args: argparse.Namespace, out: Output) -> int:
    """``fake-server``: serve until interrupted."""
    from .testing import FakeApiServer
    from .testing._scenarios import populate

    token = _read_token_file(args.token_file) or os.environ.get("ASYNC_JOBS_FAKE_TOKEN")
    server = FakeApiServer(host=args.host, port=args.port)
    if token:
        server.token = token
    async with server:
        server.clock.speed = args.speed
        populate(server, args.scenario)
        print(f"FakeApiServer listening on {server.url}", flush=True)
        print(f"token: {'(from --token-file)' if token else server.token}", flush=True)
        await anyio.sleep_forever()
    return EXIT_OK  # pragma: no cover - only interruption ends the server


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


def _global_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", default=argparse.SUPPRESS, help="API base URL")
    common.add_argument(
        "--token-file",
        default=argparse.SUPPRESS,
        help="read the API token from this file (otherwise from the environment)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON lines output"
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="-v: library INFO logs, -vv: DEBUG (every request)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``async-jobs``."""
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog="async-jobs",
        description="Watch remote long-running jobs: Zoo async operations, Zoo dataset "
        "conversions, Metafold jobs and workflows.",
        epilog=EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"async-jobs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(group: Any, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name,
            help=help,
            description=help,
            epilog=EPILOG,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    p = leaf(commands, "demo", demo, "run a demo against the embedded fake server (no token)")
    p.add_argument("--speed", type=float, default=1.0, help="scale the fake's timelines")

    p = leaf(commands, "fake-server", fake_server, "run the fake API server until interrupted")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--scenario", choices=["demo", "empty"], default="demo")
    p.add_argument("--speed", type=float, default=1.0, help="scale the fake's timelines")

    zoo = commands.add_parser("zoo", help="the Zoo API", parents=[common])
    zoo_groups = zoo.add_subparsers(dest="group", metavar="GROUP", required=True)
    ops = zoo_groups.add_parser("ops", help="async operations", parents=[common])
    ops_cmds = ops.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(ops_cmds, "list", zoo_ops_list, "list async operations")
    p.add_argument(
        "--status", action="append", choices=OPERATION_STATUSES, help="repeatable; default all"
    )
    p.add_argument("--sort", choices=OPERATION_SORT_MODES, default="created_at_descending")
    p.add_argument("--limit", type=_positive_int, help="page size")
    p.add_argument("--max-items", type=_positive_int)
    p = leaf(ops_cmds, "get", zoo_ops_get, "get one async operation")
    p.add_argument("id")
    p = leaf(ops_cmds, "wait", zoo_ops_wait, "wait for an async operation to finish")
    p.add_argument("id")
    p.add_argument("--timeout", type=_seconds, help="seconds (default: no limit)")

    convs = zoo_groups.add_parser("conversions", help="org dataset conversions", parents=[common])
    conv_cmds = convs.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(conv_cmds, "list", zoo_conversions_list, "list a dataset's conversions")
    p.add_argument("dataset")
    p.add_argument("--sort", choices=CONVERSION_SORT_MODES, default="created_at_descending")
    p.add_argument("--limit", type=_positive_int, help="page size")
    p.add_argument("--max-items", type=_positive_int)
    p.add_argument("--filter", help="e.g. status:success")
    p.add_argument("--q", help="search text")
    p.add_argument("--phase", help="only conversions in this phase")
    p = leaf(conv_cmds, "get", zoo_conversions_get, "get one conversion")
    p.add_argument("dataset")
    p.add_argument("id")
    p = leaf(conv_cmds, "wait", zoo_conversions_wait, "wait for a conversion to finish")
    p.add_argument("dataset")
    p.add_argument("id")
    p.add_argument("--timeout", type=_seconds, help="seconds (default: no limit)")

    metafold = commands.add_parser("metafold", help="the Metafold API", parents=[common])
    mf_groups = metafold.add_subparsers(dest="resource", metavar="GROUP", required=True)
    for resource in ("jobs", "workflows"):
        group = mf_groups.add_parser(resource, help=f"project {resource}", parents=[common])
        group.add_argument("--project", default=None, help="project id (METAFOLD_PROJECT_ID)")
        mf_cmds = group.add_subparsers(dest="action", metavar="ACTION", required=True)
        p = leaf(mf_cmds, "list", metafold_list, f"list a project's {resource}")
        p.add_argument("--project", default=argparse.SUPPRESS, help="project id")
        p.add_argument("--sort", help="field:1 or field:-1, e.g. created:-1")
        p.add_argument("--q", help='search, e.g. "state:started AND type:implicit/*"')
        p.add_argument("--max-items", type=_positive_int)
        p = leaf(mf_cmds, "get", metafold_get, f"get one of a project's {resource}")
        p.add_argument("id")
        p.add_argument("--project", default=argparse.SUPPRESS, help="project id")
        p = leaf(mf_cmds, "wait", metafold_wait, f"wait for one of a project's {resource}")
        p.add_argument("id")
        p.add_argument("--project", default=argparse.SUPPRESS, help="project id")
        p.add_argument("--timeout", type=_seconds, help="seconds (default: no limit)")
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        text = f"HTTP {exc.status}: {exc.message}"
        if exc.code:
            text += f" [{exc.code}]"
        if exc.request_id:
            text += f" (request id {exc.request_id})"
        return text
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in (
        ("base_url", None),
        ("token_file", None),
        ("json", False),
        ("verbose", 0),
    ):
        if not hasattr(args, name):
            setattr(args, name, default)
    out = make_output(args.json)
    handler: Handler = args.handler
    with library_logging(args.verbose, out):
        try:
            return anyio.run(handler, args, out)
        except KeyboardInterrupt:
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
