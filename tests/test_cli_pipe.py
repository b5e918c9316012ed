"""The ``async-jobs`` command when the reader of its output goes away (``... | head -1``): it
stops quietly, with no traceback; 0 for a listing, 141 for a wait cut short.

One test runs the console script in a subprocess behind a real pipe whose reader closes after
the first line; the others call ``cli.main(argv)`` in process with a standard output that
raises ``BrokenPipeError`` as a closed pipe does.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import anyio
import pytest

from async_jobs import cli
from async_jobs.testing import FakeApiServer

from .conftest import TOKEN
from .test_cli import _command, _env, _set_env

pytestmark = pytest.mark.anyio

#: Operations listed by the subprocess: about 1 MB of JSON lines, far more than a pipe holds
#: (64 KiB on Linux) plus what one read takes from it, so the command surely writes after
#: its reader closed the pipe.
OPERATIONS = 2000
PAGE = 100


async def test_closed_pipe_ends_a_listing_quietly_with_0(server: FakeApiServer) -> None:
    for _ in range(OPERATIONS):
        server.zoo.add_operation(timeline=[("completed", None)])
    env = _env(ZOO_API_TOKEN=TOKEN, ZOO_HOST=server.url)
    command = _command("--json", "zoo", "ops", "list", "--limit", str(PAGE))

    def head_1() -> tuple[bytes, int, bytes]:
        """``command | head -1``: read one line, close the pipe, wait for the command."""
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            first = proc.stdout.readline()
            proc.stdout.close()
            code = proc.wait(timeout=30)
            return first, code, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()  # the test fails, and leaves no process behind
                proc.wait()
            proc.stderr.close()

    # In a worker thread: the fake server answers in this thread's event loop meanwhile.
    first, code, err = await anyio.to_thread.run_sync(head_1)
    assert json.loads(first)["event"] == "item"
    assert err == b"", err.decode()  # no traceback, no "Exception ignored" at exit
    assert code == 0
    # It stopped listing once the reader was gone, instead of fetching every page for no one.
    pages = [r for r in server.requests if r.path == "/async/operations"]
    assert len(pages) < OPERATIONS // PAGE


class _PipeClosedAfter(io.StringIO):
    """Standard output whose reader goes away after ``lines`` lines."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self.lines = lines
        self.refused = 0

    def write(self, text: str) -> int:
        if self.getvalue().count("\n") >= self.lines:
            self.refused += 1
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


async def test_closed_output_cuts_a_wait_short_with_141(
    server: FakeApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stuck = server.zoo.add_operation(timeline=[("in_progress", None)])  # never ends
    _set_env(monkeypatch, ZOO_API_TOKEN=TOKEN, ZOO_HOST=server.url)
    stdout = _PipeClosedAfter(0)
    monkeypatch.setattr(sys, "stdout", stdout)
    # Without the cancellation, the wait would go on until its timeout (exit 3).
    code = await anyio.to_thread.run_sync(
        cli.main, ["zoo", "ops", "wait", stuck.id, "--json", "--timeout", "15"]
    )
    assert code == cli.EXIT_PIPE == 141
    assert stdout.refused == 1  # once refused, the output wrote nothing more
    assert capsys.readouterr().err == ""


async def test_closed_output_after_some_items_ends_a_listing_with_0(
    server: FakeApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for _ in range(5):
        server.zoo.add_operation(timeline=[("completed", None)])
    _set_env(monkeypatch, ZOO_API_TOKEN=TOKEN, ZOO_HOST=server.url)
    stdout = _PipeClosedAfter(2)
    monkeypatch.setattr(sys, "stdout", stdout)
    code = await anyio.to_thread.run_sync(
        cli.main, ["zoo", "ops", "list", "--json", "--limit", "1", "--status", "completed"]
    )
    assert code == 0
    assert [json.loads(line)["event"] for line in stdout.getvalue().splitlines()] == ["item"] * 2
    assert stdout.refused == 1
    assert capsys.readouterr().err == ""
    # The third item was refused: the listing stopped there (3 pages asked for, not 5 + 1).
    assert len([r for r in server.requests if r.path == "/async/operations"]) == 3
