"""Every Python block of README.md runs here, as written, against FakeApiServer (the durable
example against a real redis-server too): an example that rots fails the suite.

The clients of the examples find the fake through the environment they document
(``ZOO_HOST``/``ZOO_API_TOKEN``, ``METAFOLD_BASE_URL``/``METAFOLD_ACCESS_TOKEN``); the jobs an
example names are created on the fake beforehand, with those ids. A block that ends with
``anyio.run(main)`` runs in a thread of its own (that call blocks), a block that awaits at top
level runs in the test's event loop, any other block runs as it is. The fake's clock is moved
on once an example has had its first look, so each one sees its jobs change, whatever the
machine's speed. Tracebacks point at README.md's own lines.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer, RedisServer, RedisServerNotFound

from .conftest import TOKEN, eventually

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parent.parent / "README.md"
#: Longest an example may run before the test gives up on it (a hang guard, not a measure).
HANG_GUARD = 90.0
#: Most blocks README.md may mark ``<!-- not-run: reason -->``.
MAX_NOT_RUN = 1

# The ids the README's examples name.
OPERATION_ID = "0ca1531a-ac9b-4e55-bff6-2ec246d5cc1d"
DATASET_ID = "6f1c2d1e-7b0f-4a7c-9c55-0b4ad1c0de01"
CONVERSION_ID = "a3e0c1b2-5d6f-4e78-9a0b-1c2d3e4f5a6b"
SECOND_CONVERSION_ID = "b7d4e2f0-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
METAFOLD_JOB_ID = "3c9a1f0e8b7d4c2a9e6f5b4a3d2c1b0e"
PROJECT = "my-project"

QUICK_ZOO = "Quick start: Zoo async operations"
QUICK_CONVERSIONS = "Quick start: Zoo dataset conversions"
QUICK_METAFOLD = "Quick start: Metafold jobs and workflows"
WATCHER = "Watching many jobs"
SMARTER = "Smarter waits"
EMBEDDING = "Embedding in an app that already owns a ClientSession"
FAKE = "Testing your own code: FakeApiServer"
DURABLE = "Running on many instances"
OBSERVABILITY = "Observability"

#: (section, number within it) of every block a test below runs.
COVERED = {
    (QUICK_ZOO, 1),
    (QUICK_ZOO, 2),
    (QUICK_CONVERSIONS, 1),
    (QUICK_CONVERSIONS, 2),
    (QUICK_METAFOLD, 1),
    (WATCHER, 1),
    (SMARTER, 1),
    (EMBEDDING, 1),
    (EMBEDDING, 2),
    (FAKE, 1),
    (DURABLE, 1),
    (OBSERVABILITY, 1),
    (OBSERVABILITY, 2),
}


@dataclass(frozen=True)
class Block:
    """One ```python block of README.md."""

    section: str  #: the ``## `` heading it sits under
    number: int  #: 1 for the section's first Python block, ...
    line: int  #: README.md line of its first line of code
    code: str
    not_run: str | None  #: the reason of a ``<!-- not-run: reason -->`` right before it


_NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->$")


def readme_blocks(text: str) -> list[Block]:
    """The Python blocks of a README, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    section = ""
    numbers: dict[str, int] = {}
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            section = line[3:].strip()
        fence = line.strip()
        if fence.startswith("```"):
            language = fence[3:].strip()
            end = index + 1
            while not lines[end].strip().startswith("```"):
                end += 1
            if language == "python":
                before = [earlier.strip() for earlier in lines[:index] if earlier.strip()]
                marker = _NOT_RUN.match(before[-1]) if before else None
                numbers[section] = numbers.get(section, 0) + 1
                blocks.append(
                    Block(
                        section,
                        numbers[section],
                        index + 2,
                        "\n".join(lines[index + 1 : end]) + "\n",
                        marker.group(1) if marker else None,
                    )
                )
            index = end
        index += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))


def block(section: str, number: int = 1) -> Block:
    for found in BLOCKS:
        if (found.section, found.number) == (section, number):
            assert found.not_run is None, f"{section} #{number} is marked not-run"
            return found
    raise AssertionError(f"README.md has no Python block #{number} under '## {section}'")


async def run(found: Block, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a block as README.md has it; its namespace afterwards."""
    namespace = {"__name__": "__readme__"} if namespace is None else namespace
    # Blank lines first, so that line numbers in a traceback are README.md's.
    source = "\n" * (found.line - 1) + found.code
    code = compile(source, str(README), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        await eval(code, namespace)
    elif "anyio.run(" in found.code:
        await in_thread(lambda: exec(code, namespace))
    else:
        exec(code, namespace)
    return namespace


async def in_thread(func: Callable[[], object]) -> None:
    """``func()`` in a new thread (its own event loop, if it starts one), awaited here while
    this loop goes on serving the fake."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            func()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="readme-example", daemon=True)
    thread.start()
    await anyio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
    if errors:
        raise errors[0]


def requests_to(server: FakeApiServer, path: str) -> int:
    return sum(1 for request in server.requests if request.path == path)


async def run_moving_clock(
    found: Block, server: FakeApiServer, seen: Callable[[], bool], seconds: float
) -> dict[str, Any]:
    """Run ``found``; once ``seen()`` holds (the example had its first look at its jobs),
    move the fake's clock on by ``seconds``."""
    result: dict[str, Any] = {}

    async def advance() -> None:
        await eventually(seen, timeout=HANG_GUARD)
        server.clock.advance(seconds)

    async def example() -> None:
        result.update(await run(found))

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(advance)
            tg.start_soon(example)
    return result


@pytest.fixture
async def env(server: FakeApiServer, monkeypatch: pytest.MonkeyPatch) -> FakeApiServer:
    """The fake, with the environment pointing the examples' clients at it."""
    for name in ("KITTYCAD_API_TOKEN", "METAFOLD_CLIENT_ID", "METAFOLD_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("METAFOLD_PROJECT_ID", raising=False)
    monkeypatch.setenv("ZOO_HOST", server.url)
    monkeypatch.setenv("ZOO_API_TOKEN", TOKEN)
    monkeypatch.setenv("METAFOLD_BASE_URL", server.url)
    monkeypatch.setenv("METAFOLD_ACCESS_TOKEN", TOKEN)
    return server


# -- the inventory --------------------------------------------------------------------------


def test_every_python_block_is_run_or_marked_not_run() -> None:
    run_here = {(found.section, found.number) for found in BLOCKS if found.not_run is None}
    assert run_here == COVERED, "a Python block of README.md is not run by a test here"
    not_run = [found for found in BLOCKS if found.not_run is not None]
    assert len(not_run) <= MAX_NOT_RUN, [(found.section, found.not_run) for found in not_run]
    assert all(found.not_run for found in not_run), "a not-run mark must say why"


def test_blocks_are_found_with_their_sections_and_marks() -> None:
    text = "\n".join(
        [
            "## One",
            "```sh",
            "pip install x",
            "```",
            "```python",
            "a = 1",
            "```",
            "## Two",
            "<!-- not-run: needs a GPU -->",
            "",
            "```python",
            "b = 2",
            "c = 3",
            "```",
            "```python",
            "d = 4",
            "```",
        ]
    )
    assert readme_blocks(text) == [
        Block("One", 1, 6, "a = 1\n", None),
        Block("Two", 1, 12, "b = 2\nc = 3\n", "needs a GPU"),
        Block("Two", 2, 16, "d = 4\n", None),
    ]


# -- quick starts ---------------------------------------------------------------------------


async def test_quick_start_zoo(env: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    env.zoo.add_operation(
        "file_volume", [("in_progress", 3600), ("completed", None)], id=OPERATION_ID
    )
    queued = env.zoo.add_operation("file_conversion", [("queued", None)])
    running = env.zoo.add_operation("file_mass", [("in_progress", None)])
    env.zoo.add_operation("file_density", [("completed", None)])  # not active: not listed
    path = f"/async/operations/{OPERATION_ID}"
    # The get, then the wait's first look: only then does the operation complete.
    await run_moving_clock(block(QUICK_ZOO), env, lambda: requests_to(env, path) >= 2, 3600)
    assert capsys.readouterr().out.splitlines() == [
        "in_progress running False",
        "in_progress",
        "completed",
        # The list, oldest first (one stream per status, merged by created_at ascending).
        f"{queued.id} queued",
        f"{running.id} in_progress",
    ]


async def test_decoding_a_stored_body(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = await run(block(QUICK_ZOO, 2))
    assert namespace["page"].items[0].id == OPERATION_ID
    assert capsys.readouterr().out == "succeeded None\n"


async def test_quick_start_conversions(
    env: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    env.conversions.add_conversion(
        DATASET_ID,
        [("queued", 3600), ("convert_raw_kcl", 0.5), ("salon", 0.5), ("completed", None)],
        id=CONVERSION_ID,
    )
    spur = env.conversions.add_conversion(DATASET_ID, [("salon", None)], file_path="gears/spur.stp")
    helical = env.conversions.add_conversion(
        DATASET_ID, [("convert_raw_kcl", None)], file_path="gears/helical.stp"
    )
    env.conversions.add_conversion(DATASET_ID, [("salon", None)], file_path="brackets/l.stp")
    env.conversions.add_conversion(DATASET_ID, [("queued", None)], file_path="gears/rack.stp")
    path = f"/org/datasets/{DATASET_ID}/conversions/{CONVERSION_ID}"
    await run_moving_clock(block(QUICK_CONVERSIONS), env, lambda: requests_to(env, path) >= 1, 3601)
    lines = capsys.readouterr().out.splitlines()
    # In progress, under gears/, furthest phase first.
    assert lines[0].startswith(f"{spur.id} gears/spur.stp salon 0.")
    assert lines[1].startswith(f"{helical.id} gears/helical.stp convert_raw_kcl 0.")
    assert lines[2:4] == ["queued queued 0%", "success completed 100%"]
    assert lines[4].startswith("// parts/") and lines[4].endswith(", refactored")
    assert lines[-1].endswith("b'\\x89PNG\\r\\n\\x1a\\n'")


async def test_whole_dataset_and_retriggers(
    env: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    done = [("success", None)]
    env.conversions.add_conversion(DATASET_ID, done)
    broken = env.conversions.add_conversion(
        DATASET_ID, [("error_internal", None)], rerun=[("queued", 3600), ("completed", None)]
    )
    env.conversions.add_conversion(DATASET_ID, done)
    path = f"/org/datasets/{DATASET_ID}/stats"
    # The stats, then the wait's first look: only then does the retriggered run finish.
    await run_moving_clock(
        block(QUICK_CONVERSIONS, 2), env, lambda: requests_to(env, path) >= 2, 3600
    )
    assert capsys.readouterr().out.splitlines() == [
        "3 2 1 {'success': 2, 'error_internal': 1}",
        "67% queued 1, success 2",
        "100% success 3",
        "succeeded None",
    ]
    assert broken.retriggers == 1


async def test_smarter_waits(env: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    walk = [("queued", 3600), ("salon", 3600), ("completed", None)]
    env.conversions.add_conversion(DATASET_ID, walk, id=CONVERSION_ID)
    env.metafold.add_project(PROJECT)
    env.metafold.workflow_job_timeline = [("pending", 3600), ("started", None)]
    path = f"/org/datasets/{DATASET_ID}/conversions/{CONVERSION_ID}"

    async def clock() -> None:
        # Salon once wait_until had its first look, completed once the second wait had its.
        await eventually(lambda: requests_to(env, path) >= 1, timeout=HANG_GUARD)
        env.clock.advance(3600)
        await eventually(lambda: requests_to(env, path) >= 3, timeout=HANG_GUARD)
        env.clock.advance(3600)

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock)
            await run(block(SMARTER))
    assert capsys.readouterr().out.splitlines() == [
        "reached salon",
        "success",
        "gave up: canceled",
    ]
    (workflow_id,) = env.metafold.cancel_calls
    assert env.metafold.cancel_calls == {workflow_id: 1}


async def test_quick_start_metafold(env: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    gear = env.metafold.add_job(
        PROJECT, "implicit/from-mesh", [("started", 3600), ("success", None)], name="gear"
    )
    env.metafold.add_job(PROJECT, "implicit/from-mesh", [("started", None)], name="scratch 12")
    env.metafold.add_job(PROJECT, "export/stl", [("started", None)], name="export")
    env.metafold.add_job(PROJECT, "implicit/lattice", [("success", None)], name="done")
    workflow = env.metafold.add_workflow(
        PROJECT,
        [
            {
                "name": "mesh",
                "type": "sample/mesh",
                "timeline": [("started", 60), ("success", None)],
            },
            {"name": "lattice", "type": "sample/lattice", "needs": ["mesh"]},
        ],
        id="workflow-id",
    )
    path = f"/projects/{PROJECT}/jobs/{gear.id}"
    namespace = await run_moving_clock(
        block(QUICK_METAFOLD), env, lambda: requests_to(env, path) >= 1, 3600
    )
    lines = capsys.readouterr().out.splitlines()
    # Only the started implicit/* job not named "scratch *" is listed.
    assert lines[0].startswith(f"{gear.id} started 20") and lines[0].endswith("+00:00")
    assert lines[1].startswith("succeeded None MetafoldIO(")
    mesh_id, lattice_id = workflow.jobs
    assert lines[2:] == ["mesh success ()", f"lattice success ('{mesh_id}',)"]
    assert lattice_id != mesh_id
    # The comment in the example says what q() builds.
    query = namespace["q"](state="started", type="implicit/*", name=namespace["Not"]("scratch *"))
    assert query == 'state:started AND type:implicit/* AND !name:"scratch *"'


# -- many jobs ------------------------------------------------------------------------------


async def test_watching_many_jobs(env: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    for conversion_id in (CONVERSION_ID, SECOND_CONVERSION_ID):
        env.conversions.add_conversion(
            DATASET_ID, [("convert_raw_kcl", 3600), ("completed", None)], id=conversion_id
        )
    env.metafold.add_job(
        PROJECT, timeline=[("started", 3600), ("success", None)], id=METAFOLD_JOB_ID
    )

    def listed() -> bool:  # both groups listed by each active status: every job seen running
        conversions = requests_to(env, f"/org/datasets/{DATASET_ID}/conversions")
        return conversions >= 2 and requests_to(env, f"/projects/{PROJECT}/jobs") >= 2

    namespace = await run_moving_clock(block(WATCHER), env, listed, 3600)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "3 0"
    ids = (CONVERSION_ID, SECOND_CONVERSION_ID, METAFOLD_JOB_ID)
    completed = [line for line in lines if line.split(" ")[0] in ids]
    assert sorted(completed) == sorted(f"{job_id} succeeded" for job_id in ids)
    # on_update=print: each job once running (from its group's listing), once terminal.
    updates = [line for line in lines if line not in completed][1:-2]
    assert len(updates) == 6
    assert lines[-2:] == ["0 3 succeeded", "['succeeded', 'succeeded', 'succeeded']"]
    # The snapshot was taken with every job pending: it names all three, and no token.
    assert len(msgspec.json.decode(namespace["state"])["jobs"]) == 3
    assert TOKEN.encode() not in namespace["state"]
    assert [future.result().job_state for future in namespace["futures"]] == [
        aj.JobState.SUCCEEDED
    ] * 2


# -- embedding ------------------------------------------------------------------------------


async def test_embedding_in_aiohttp_web(env: FakeApiServer) -> None:
    from aiohttp import ClientSession, web

    op = env.zoo.add_operation("file_volume", [("completed", None)])
    namespace = await run(block(EMBEDDING, 1))
    runner = web.AppRunner(namespace["app"])
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}/ops/{op.id}"
        async with ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            body = await response.json()
    finally:
        await runner.cleanup()  # the example's cleanup context closes its client and session
    assert body == {"status": "completed", "state": "succeeded"}


async def test_embedding_in_fastapi(env: FakeApiServer) -> None:
    import httpx

    op = env.zoo.add_operation("file_volume", [("failed", None)], error="bad mesh")
    namespace = await run(block(EMBEDDING, 2))
    app = namespace["app"]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            with anyio.fail_after(HANG_GUARD):
                response = await client.get(f"/ops/{op.id}/wait")
            after = await client.get(f"/ops/{op.id}/last")
    assert response.status_code == 200
    body = response.json()
    # The whole model, as JSON: wire fields, ISO datetimes, and what it works out itself.
    assert body["id"] == op.id and body["status"] == "failed" and body["error"] == "bad mesh"
    assert body["job_state"] == "failed" and body["is_terminal"] is True
    assert body["progress"] == 1.0 and body["type"] == "file_volume"
    assert datetime.fromisoformat(body["created_at"].replace("Z", "+00:00")).tzinfo is not None
    assert msgspec.convert(body, aj.AsyncOperation).id == op.id
    assert after.status_code == 200 and after.json() is None  # its wait ended


# -- the fake server ------------------------------------------------------------------------


async def test_fake_server_example(capsys: pytest.CaptureFixture[str]) -> None:
    with anyio.fail_after(HANG_GUARD):
        await run(block(FAKE))
    assert capsys.readouterr().out.splitlines() == [
        "completed",
        "success",
        "no mesh",
        "6 {'status': 3}",
    ]


# -- observability --------------------------------------------------------------------------


async def test_observability_statsd_listener(env: FakeApiServer) -> None:
    """The statsd lines reach a UDP socket on 8125: a request counter and the wait's timer."""
    import socket

    env.zoo.add_operation("file_volume", [("completed", None)], id=OPERATION_ID)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 8125))
    receiver.setblocking(False)
    try:
        with anyio.fail_after(HANG_GUARD):
            namespace = await run(block(OBSERVABILITY))
        namespace["statsd"].close()
        lines = set()
        with contextlib.suppress(BlockingIOError):
            while True:
                lines.add(receiver.recv(4096).decode())
    finally:
        receiver.close()
    assert "async_jobs.requests.200:1|c" in lines
    assert any(re.fullmatch(r"async_jobs\.waits\.succeeded:\d+\|ms", line) for line in lines)


async def test_observability_opentelemetry(
    env: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console exporter prints the wait's span and its request's span, nested. (Its
    default output is the sys.stdout of when the SDK was first imported, so the test hands
    it a buffer of its own.)"""
    import io
    from functools import partial

    from opentelemetry.sdk.trace import export

    printed = io.StringIO()
    monkeypatch.setattr(
        export, "ConsoleSpanExporter", partial(export.ConsoleSpanExporter, out=printed)
    )
    env.zoo.add_operation("file_volume", [("completed", None)], id=OPERATION_ID)
    with anyio.fail_after(HANG_GUARD):
        await run(block(OBSERVABILITY, 2))
    out = printed.getvalue()
    spans = [msgspec.json.decode(part) for part in re.split(r"(?<=\n})\n(?=\{)", out.strip())]
    wait = next(span for span in spans if span["name"] == "wait zoo.async_operation")
    request = next(span for span in spans if span["name"] == "GET")
    assert request["parent_id"] == wait["context"]["span_id"]
    assert request["attributes"]["http.response.status_code"] == 200
    assert wait["attributes"]["async_jobs.wait.outcome"] == "succeeded"
    assert TOKEN not in out


# -- durable watches ------------------------------------------------------------------------


async def test_durable_watches_example(capsys: pytest.CaptureFixture[str]) -> None:
    from ._redis import redis_module, unavailable

    redis_module()
    try:
        RedisServer().close()  # the example starts its own; see that it can
    except RedisServerNotFound as exc:
        unavailable(str(exc))
    with anyio.fail_after(HANG_GUARD):
        await run(block(DURABLE))
    lines = capsys.readouterr().out.splitlines()
    handled = sorted(line.split() for line in lines[:-1])
    assert [(order, state) for order, _, state in handled] == [
        ("0", "succeeded"),
        ("1", "succeeded"),
        ("2", "succeeded"),
    ]
    assert lines[-1].startswith("DurableStatus(pending=0, undelivered=0, in_flight={")
    assert lines[-1].endswith("dead_lettered=0, results=3, workers={})")
