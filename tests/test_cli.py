"""The ``async-jobs`` command against FakeApiServer.

Two tests run the real console script in subprocesses, for what only a process shows: the
entry point's exit code, standard output and error kept apart, and SIGINT (130, no traceback).
The others call ``cli.main(argv)`` in process, in a worker thread (it runs its own event loop),
with the environment set by ``monkeypatch`` and the output read with ``capsys``: no Python
start-up per command, and the checked-out code for sure.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
import rich.console as rich_console

import async_jobs as aj
from async_jobs import cli
from async_jobs._redact import MASK
from async_jobs.testing import FakeApiServer

from .conftest import TOKEN, eventually

SCRIPT = Path(sys.executable).with_name("async-jobs")
TOKEN_VARIABLES = (
    "ZOO_API_TOKEN",
    "KITTYCAD_API_TOKEN",
    "ZOO_HOST",
    "METAFOLD_ACCESS_TOKEN",
    "METAFOLD_CLIENT_ID",
    "METAFOLD_CLIENT_SECRET",
    "METAFOLD_BASE_URL",
    "METAFOLD_PROJECT_ID",
)


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_credentials_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process commands see no credential the developer's shell holds (as ``_env`` does
    for a subprocess)."""
    for name in TOKEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARIABLES}
    # The package of this checkout, whichever one the venv's editable install points at.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _command(*args: str) -> list[str]:
    if SCRIPT.exists():
        return [str(SCRIPT), *args]
    return [sys.executable, "-m", "async_jobs", *args]


def _interruptible(command: list[str]) -> list[str]:
    """``command`` with SIGINT back to its default action first: a suite started from a
    shell's background job (``cmd &``) inherits SIGINT ignored, and so would the console
    script, which then could not be interrupted (a program keeps an ignored SIGINT ignored)."""
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    reset += "os.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", reset, *command]


def _lines(stdout: bytes | str) -> list[dict[str, Any]]:
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def _cli(*argv: str) -> int:
    """``cli.main(argv)`` in a worker thread: its exit code (argparse's usage errors and
    ``--help`` raise SystemExit, as they do in the console script)."""
    code: int = await anyio.to_thread.run_sync(cli.main, list(argv))
    return code


def _set_env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


# -- the console script in subprocesses -------------------------------------------------------


def test_console_script_is_installed() -> None:
    assert SCRIPT.exists(), "pip install should have created the async-jobs script"


def test_fake_server_answers_cli_and_library(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``fake-server`` until SIGINT (130, no traceback): it prints the seeded ids and the
    control route (never a token read from a file); a ``list`` through the console script
    (exit 0, JSON lines on standard output), a ``get`` in process, the library and the
    control route answered."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    proc = subprocess.Popen(
        _interruptible(
            _command(
                "fake-server", "--port", "0", "--scenario", "demo", "--token-file", str(token_file)
            )
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert "listening on" in first
        url = first.split()[-1]
        assert TOKEN.encode() not in proc.stdout.readline()
        banner = []  # the seeded ids, the commands to try, the control route
        while not banner or not banner[-1].lstrip().startswith("-d"):
            banner.append(proc.stdout.readline().decode())
        text = "".join(banner)
        assert TOKEN not in text and f"$(cat {token_file})" in text
        assert "Zoo dataset:      f9919813-76e4-5c69-b665-16ccdf83591e" in text
        assert "Metafold project: demo-project" in text
        # The control route, from this process: a job the CLI then gets.
        request = urllib.request.Request(
            url + "/_control/jobs",
            data=json.dumps({"kind": "zoo.async_operation"}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            added = json.loads(response.read())
        assert response.status == 201
        common = ["--base-url", url, "--token-file", str(token_file), "--json"]
        listed = subprocess.run(
            _command("zoo", "ops", "list", *common), capture_output=True, env=_env(), timeout=30
        )
        assert listed.returncode == 0, listed.stderr.decode()
        op_id = _lines(listed.stdout)[0]["id"]
        code = cli.main(["zoo", "ops", "get", str(op_id), *common])
        assert code == 0 and _lines(capsys.readouterr().out)[0]["id"] == op_id
        assert cli.main(["zoo", "ops", "get", added["id"], *common]) == 0
        assert _lines(capsys.readouterr().out)[0]["state"] in ("pending", "running")

        async def library_get() -> aj.AsyncOperation:
            async with aj.ZooClient(token=TOKEN, base_url=url) as zoo:
                return await zoo.get_async_operation(str(op_id))

        assert anyio.run(library_get).id == op_id
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()  # the test fails, and leaves no server behind
                proc.communicate()
    assert proc.returncode == 130
    assert b"Traceback" not in err


@pytest.mark.anyio
async def test_sigint_during_wait_exits_130_promptly(server: FakeApiServer) -> None:
    """A subprocess: SIGINT reaches only the main thread, not ``main`` in a worker thread."""
    stuck = server.zoo.add_operation(timeline=[("in_progress", None)])
    env = _env(ZOO_API_TOKEN=TOKEN, ZOO_HOST=server.url)
    async with await anyio.open_process(
        _interruptible(_command("zoo", "ops", "wait", stuck.id, "--json")), env=env
    ) as proc:
        await eventually(lambda: any(r.path.endswith(stuck.id) for r in server.requests))
        # The next poll is due about 1 s after the first: exiting promptly means exiting
        # during that sleep, with no request after the signal.
        polls_before = len(server.requests)
        proc.send_signal(signal.SIGINT)
        try:
            with anyio.fail_after(10):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()  # the test fails instead of waiting for it forever
        assert proc.stderr is not None
        err = await proc.stderr.receive() if code else b""
    assert code == 130
    assert len(server.requests) == polls_before
    assert b"Traceback" not in err and b"Task was destroyed" not in err


# -- in process: cli.main(argv) ---------------------------------------------------------------


@pytest.mark.anyio
async def test_demo_json_ends_with_every_job_in_its_expected_state(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await _cli("demo", "--json", "--speed", "4") == 0
    out, err = capsys.readouterr()
    records = _lines(out)
    summary = [r for r in records if r["event"] == "summary"]
    assert len(summary) == 31  # 5 operations, 20 conversions, a workflow of 6 jobs
    assert {r["kind"] for r in summary} == {
        "zoo.async_operation",
        "zoo.dataset_conversion",
        "metafold.job",
    }
    assert all(r["state"] == r["expected_state"] for r in summary), summary
    (stats,) = [r for r in records if r["event"] == "stats"]
    assert stats["jobs"] == 31 and stats["requests"] > 0
    finals = {r["id"] for r in records if r["event"] == "final"}
    assert finals == {r["id"] for r in summary}
    assert "Traceback" not in err


@pytest.mark.anyio
async def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        await _cli("--help")
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for code in ("0 succeeded", "1 the job failed", "2 usage", "3 timeout", "4 API", "130"):
        assert code in text


@pytest.mark.anyio
async def test_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as exited:
        await _cli("zoo", "ops", "list", "--limit", "0")
    assert exited.value.code == 2


@pytest.mark.anyio
async def test_missing_token_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert await _cli("zoo", "ops", "get", "x", "--base-url", "http://127.0.0.1:9") == 4
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "ZOO_API_TOKEN" in lines[0]


@pytest.mark.anyio
async def test_wait_exit_codes(
    server: FakeApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    done = server.zoo.add_operation(timeline=[("in_progress", 0.05), ("completed", None)])
    failed = server.zoo.add_operation(timeline=[("failed", None)], error="boom")
    stuck = server.zoo.add_operation(timeline=[("in_progress", None)])
    _set_env(monkeypatch, ZOO_API_TOKEN=TOKEN, ZOO_HOST=server.url)
    cases = [
        (done.id, [], 0),
        (failed.id, [], 1),
        (stuck.id, ["--timeout", "0.3"], 3),
        (str(uuid.uuid4()), [], 4),
    ]
    for op_id, extra, expected in cases:
        code = await _cli("zoo", "ops", "wait", op_id, "--json", *extra)
        out, err = capsys.readouterr()
        assert code == expected, (op_id, err)
        assert "Traceback" not in err
        assert TOKEN not in out + err
        if expected in (0, 1):
            final = _lines(out)[-1]
            assert final["event"] == "final" and final["id"] == op_id
    not_found = err
    assert "HTTP 404" in not_found and "request id" in not_found


@pytest.mark.anyio
async def test_list_and_get(
    server: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(5)]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    common = ["--base-url", server.url, "--token-file", str(token_file), "--json"]
    assert await _cli("zoo", "ops", "list", "--status", "completed", "--limit", "2", *common) == 0
    items = _lines(capsys.readouterr().out)
    assert [i["id"] for i in items] == [op.id for op in ops]  # created_at_ascending
    assert await _cli("zoo", "ops", "get", ops[0].id, *common) == 0
    (record,) = _lines(capsys.readouterr().out)
    assert record["event"] == "job" and record["state"] == "succeeded"


def test_terminal_rendering_with_rich_recording_console() -> None:
    from async_jobs._cli_output import RichOutput

    console = rich_console.Console(record=True, width=120, file=io.StringIO())
    out = RichOutput(console=console)
    op = aj.AsyncOperation(id="0ca1531a-ac9b", status="in_progress", type="file_volume")
    done = aj.AsyncOperation(id="0ca1531a-ac9b", status="failed", error="bad mesh")
    with out.watching():
        out.update("zoo.async_operation", op)
        out.final("zoo.async_operation", done)
    out.summary(
        [
            {
                "id": done.id,
                "kind": "zoo.async_operation",
                "state": "failed",
                "duration": 1.5,
                "error": "bad mesh",
            }
        ]
    )
    out.item("zoo.async_operation", done)
    out.end_items()
    text = console.export_text()
    assert "0ca1531a" in text and "failed (bad mesh)" in text
    assert "summary" in text and "1.50s" in text
    assert "final state" in text


@pytest.mark.anyio
async def test_conversion_and_metafold_commands(
    server: FakeApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = server.conversions.add_dataset()
    ok = server.conversions.add_conversion(dataset)
    bad = server.conversions.add_conversion(
        dataset, [("queued", 0.02), ("error_geometry_mismatch", None)], error="differs"
    )
    job = server.metafold.add_job("p1", timeline=[("started", 0.05), ("success", None)])
    failing = server.metafold.add_job("p1", timeline=[("failure", None)], error="no mesh")
    flow = server.metafold.add_workflow(
        "p1", [{"name": "a"}, {"name": "b", "needs": ["a"]}, {"name": "c", "needs": ["a"]}]
    )
    _set_env(
        monkeypatch,
        ZOO_API_TOKEN=TOKEN,
        ZOO_HOST=server.url,
        METAFOLD_ACCESS_TOKEN=TOKEN,
        METAFOLD_BASE_URL=server.url,
        METAFOLD_PROJECT_ID="p1",
    )
    cases = [
        (["zoo", "conversions", "wait", dataset, ok.id], 0),
        (["zoo", "conversions", "wait", dataset, bad.id], 1),
        (["metafold", "jobs", "wait", job.id], 0),
        (["metafold", "jobs", "wait", failing.id], 1),
        (["metafold", "workflows", "wait", flow.id, "--project", "p1"], 0),
        (["metafold", "jobs", "get", "nope"], 4),
    ]
    for args, expected in cases:
        code = await _cli(*args, "--json")
        out, err = capsys.readouterr()
        assert code == expected, (args, err)
        assert TOKEN not in out + err
    listed = ("zoo", "conversions", "list", dataset, "--filter", "status:success", "--json")
    assert await _cli(*listed) == 0
    assert [r["id"] for r in _lines(capsys.readouterr().out)] == [ok.id]
    assert await _cli("metafold", "jobs", "list", "--q", "state:failure", "--json") == 0
    assert [r["id"] for r in _lines(capsys.readouterr().out)] == [failing.id]
    assert await _cli("zoo", "conversions", "wait", dataset, ok.id, "--json") == 0
    progress = [r["progress"] for r in _lines(capsys.readouterr().out)]
    assert progress[-1] == 1.0


@pytest.mark.anyio
async def test_dataset_commands(
    server: FakeApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``zoo datasets stats|wait`` and ``zoo conversions retrigger``: the command's exit codes
    (0 done, 1 a dataset with a failure, 2 usage, 4 API error)."""
    good = server.conversions.add_dataset()
    server.conversions.add_conversion(good, [("success", None)])
    bad = server.conversions.add_dataset()
    failed = server.conversions.add_conversion(bad, [("error_user", None)], error="no")
    _set_env(monkeypatch, ZOO_API_TOKEN=TOKEN, ZOO_HOST=server.url)
    cases = [
        (["zoo", "datasets", "stats", good], 0),
        (["zoo", "datasets", "wait", good], 0),
        (["zoo", "datasets", "wait", bad], 1),
        (["zoo", "conversions", "retrigger", bad, failed.id, "--statuses", "success"], 2),
        (["zoo", "conversions", "retrigger", bad, failed.id], 0),
        (["zoo", "conversions", "retrigger", str(uuid.uuid4())], 4),
    ]
    outputs = []
    for args, expected in cases:
        code = await _cli(*args, "--json")
        out, err = capsys.readouterr()
        assert code == expected, (args, err)
        assert "Traceback" not in err
        outputs.append(_lines(out))
    (stats,) = outputs[0]
    assert stats["kind"] == "zoo.dataset" and stats["job"]["by_status"] == {"success": 1}
    assert outputs[2][-1]["error"] == "1 of 1 conversions failed"
    assert outputs[4] == [
        {"event": "retriggered", "dataset_id": bad, "conversion_id": failed.id, "statuses": None}
    ]
    assert failed.retriggers == 1


@pytest.mark.anyio
async def test_missing_metafold_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    assert await _cli("metafold", "jobs", "list", "--project", "p") == 4
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "METAFOLD_ACCESS_TOKEN" in lines[0]


# -- -v / -vv: library logs -------------------------------------------------------------------

OUTAGE = "is not answering"  # WARNING: the third failed attempt in a row
RECOVERED = "is answering again"  # INFO: the first answer after the outage
REQUEST = "GET http"  # DEBUG: every request
ECHO = f"bad {MASK}"  # DEBUG: a retry, with the error message the server sent (masked)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _outage(server: FakeApiServer) -> None:
    """Three 503s in a row (retried at once), then answers: one WARNING and one INFO. Their
    error message echoes the token, which the DEBUG retry lines show (masked)."""
    server.inject(
        "body",
        route="/async/operations/*",
        times=3,
        status=503,
        body=json.dumps({"error_code": "unavailable", "message": f"bad {TOKEN}"}).encode(),
        headers={"Retry-After": "0"},
    )


@pytest.mark.anyio
async def test_verbosity_levels_in_json_mode(
    server: FakeApiServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    _set_env(monkeypatch, ZOO_API_TOKEN=TOKEN, ZOO_HOST=server.url)
    shown = {}
    for flags in ((), ("-v",), ("-vv",)):
        _outage(server)
        code = await _cli("zoo", "ops", "wait", op.id, "--json", *flags)
        out, err = capsys.readouterr()
        assert code == 0, err
        records = [json.loads(line) for line in out.splitlines()]  # every line: JSON
        assert records[-1]["event"] == "final" and records[-1]["id"] == op.id
        assert TOKEN not in out + err
        assert "Traceback" not in err
        shown[flags] = {text for text in (OUTAGE, RECOVERED, REQUEST, ECHO) if text in err}
    assert shown == {
        (): {OUTAGE},
        ("-v",): {OUTAGE, RECOVERED},
        ("-vv",): {OUTAGE, RECOVERED, REQUEST, ECHO},
    }


class _Terminal(io.StringIO):
    """Standard output that says it is a terminal, so the CLI picks its rich output."""

    def isatty(self) -> bool:
        return True


@pytest.mark.anyio
async def test_logging_in_process_leaves_root_alone_and_cleans_up(
    server: FakeApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.clock.speed = 0  # jobs move only when the test advances the clock
    monkeypatch.setenv("ZOO_API_TOKEN", TOKEN)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    root = logging.getLogger()
    library = logging.getLogger("async_jobs")
    before = (root.level, list(root.handlers), root.filters[:])
    library_before = (library.level, library.propagate, list(library.handlers))

    async def run(*args: str) -> int:
        op = server.zoo.add_operation(timeline=[("in_progress", 1.0), ("completed", None)])
        _outage(server)
        codes: list[int] = []

        async def command() -> None:
            argv = ["zoo", "ops", "wait", op.id, "--base-url", server.url, *args]
            codes.append(await anyio.to_thread.run_sync(cli.main, argv))

        async with anyio.create_task_group() as tg:
            tg.start_soon(command)
            # Three 503s, then the first answer (in progress: a bar), then the next poll
            # (logged while the bar is live) finds the job done.
            await eventually(lambda: sum(r.path.endswith(op.id) for r in server.requests) >= 4)
            server.clock.advance(2.0)
        return codes[0]

    # A terminal: rich output; -vv lines go through the live display's console.
    terminal = _Terminal()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", terminal)
        assert await run("-vv") == 0
    raw = terminal.getvalue()
    text = ANSI.sub("", raw)
    assert OUTAGE in text and RECOVERED in text and REQUEST in text and ECHO in text
    assert "async_jobs.http" in text and "in_progress" in text  # the logger's name; the bar
    # The last request is logged while the bar is live, above it: the display erased its
    # line (ESC[2K), the log line starts right there (not after the bar's text), then the
    # bar is drawn again below it.
    segments = [ANSI.sub("", segment) for segment in raw.split("\x1b[2K")]
    last = max(i for i, segment in enumerate(segments) if REQUEST in segment)
    assert any("in_progress" in segment for segment in segments[:last])
    head = segments[last].split(REQUEST)[0]
    assert "in_progress" not in head and "%" not in head, repr(segments[last])
    assert any("%" in segment for segment in segments[last + 1 :])
    assert capsys.readouterr().err == ""

    # Then JSON lines in the same process: -v logs on stderr, stdout stays pure JSON.
    assert await run("--json", "-v") == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["event"] for line in out.splitlines()][-1] == "final"
    assert OUTAGE in err and RECOVERED in err and REQUEST not in err
    assert TOKEN not in raw + out + err

    # Nothing reached the root logger's handlers (propagate was off), which stayed as they
    # were, like its level; async_jobs got its level, propagate and handlers back.
    assert not [r for r in caplog.records if r.name.startswith("async_jobs")]
    assert (root.level, list(root.handlers), root.filters[:]) == before
    assert (library.level, library.propagate, list(library.handlers)) == library_before


# -- metafold workflows create / cancel (in process: the checked-out code, not the installed) --

WORKFLOW_YAML = """---
jobs:
  sample:
    type: implicit/from-mesh
    needs: [preprocess]
    assets: {mesh: preprocess}
  preprocess:
    type: mesh/preprocess
"""


@pytest.fixture
def metafold_env(server: FakeApiServer, monkeypatch: pytest.MonkeyPatch) -> FakeApiServer:
    for name in TOKEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("METAFOLD_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("METAFOLD_BASE_URL", server.url)
    monkeypatch.setenv("METAFOLD_PROJECT_ID", "p1")
    server.metafold.add_project("p1")
    return server


@pytest.mark.anyio
async def test_metafold_workflows_create_and_cancel(
    metafold_env: FakeApiServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = metafold_env
    server.clock.speed = 0  # the workflow stays pending: create, then cancel it
    definition = tmp_path / "flow.yml"
    definition.write_text(WORKFLOW_YAML)
    args = ["--json", "--param", "sample.resolution=512", "--asset", "preprocess.mesh=a=b.stl"]
    assert await _cli("metafold", "workflows", "create", str(definition), *args) == 0
    (created,) = _lines(capsys.readouterr().out.encode())
    assert created["event"] == "job" and created["kind"] == "metafold.workflow"
    assert created["state"] == "pending" and created["status"] == "pending"
    workflow_id = str(created["id"])
    assert server.metafold.created_workflows == [workflow_id]
    job = created["job"]
    assert isinstance(job, dict) and job["definition"] == WORKFLOW_YAML
    assert str(job["link"]).endswith(f"/workflows/{workflow_id}/status")
    made = {j.name: j for j in server.metafold.projects["p1"].jobs.values()}
    assert made["sample"].params == {"resolution": "512"}

    assert await _cli("metafold", "workflows", "cancel", workflow_id, "--json") == 0
    (canceled,) = _lines(capsys.readouterr().out.encode())
    assert canceled["event"] == "job" and canceled["id"] == workflow_id
    assert canceled["state"] == "canceled"
    assert server.metafold.cancel_calls == {workflow_id: 1}
    assert {server.metafold.state("p1", j.id) for j in made.values()} == {"canceled"}

    # Canceling a finished workflow is the API's 400: the API-error exit code.
    assert await _cli("metafold", "workflows", "cancel", workflow_id, "--project", "p1") == 4
    out, err = capsys.readouterr()
    assert out == "" and "HTTP 400" in err and "already finished" in err
    assert server.metafold.cancel_calls == {workflow_id: 2}

    # A definition the server refuses: its reason, exit 4; an unreadable file: usage, exit 2.
    definition.write_text("jobs: {}\n")
    assert await _cli("metafold", "workflows", "create", str(definition)) == 4
    assert "it has no jobs" in capsys.readouterr().err
    assert await _cli("metafold", "workflows", "create", str(tmp_path / "missing.yml")) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        await _cli("metafold", "workflows", "create", str(definition), "--param", "no-equals")
    assert usage.value.code == 2
    assert server.metafold.created_workflows == [workflow_id]
    assert TOKEN not in capsys.readouterr().err


@pytest.mark.anyio
@pytest.mark.parametrize(("failing", "expected"), [({}, 0), ({"sample": "no mesh"}, 1)])
async def test_metafold_workflows_create_wait(
    metafold_env: FakeApiServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    failing: dict[str, str],
    expected: int,
) -> None:
    server = metafold_env
    # Each job runs as soon as what it needs succeeded, in no time: the first poll sees it end.
    server.metafold.workflow_job_timeline = [("pending", 0.0), ("started", 0.0), ("success", None)]
    server.metafold.failing_jobs = failing
    definition = tmp_path / "flow.yml"
    definition.write_text(WORKFLOW_YAML)
    command = ("metafold", "workflows", "create", str(definition), "--wait", "--json")
    assert await _cli(*command, "--timeout", "30") == expected
    out = capsys.readouterr().out
    records: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    assert records[0]["event"] == "job" and records[0]["kind"] == "metafold.workflow"
    finals = [
        (r["kind"], r["job"].get("name"), r["state"]) for r in records if r["event"] == "final"
    ]
    outcome = "failed" if failing else "succeeded"
    assert finals == [
        ("metafold.job", "preprocess", "succeeded"),
        ("metafold.job", "sample", outcome),
        ("metafold.workflow", None, outcome),  # a workflow has no name
    ]
