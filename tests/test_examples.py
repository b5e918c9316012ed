"""examples/custom_api.py, a fourth job API built on the public extension point, runs as a user
runs it, uses only public names, and type-checks."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from async_jobs.testing import FakeApiServer, FakeClock

from .conftest import TOKEN, eventually

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "custom_api.py"


def test_the_custom_api_example_runs() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard only: it takes about a second
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "one prediction: succeeded, progress 1.0"
    assert lines[1].startswith("200 predictions: {'succeeded': 180, 'failed': 20}, ")
    # The Watcher listed them: one GET per prediction to read how it ended, no more.
    assert lines[1].endswith(" + 200 GETs")
    assert lines[2] == "resumed replicate.prediction: succeeded"


def test_the_example_uses_only_public_names() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            private += [node.module] if "._" in f".{node.module}" else []
            private += [alias.name for alias in node.names if alias.name.startswith("_")]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id == "self")
        ):
            private.append(node.attr)
    assert private == []


def test_readme_excerpt_is_the_example() -> None:
    """The README's "Your own job API" block is an excerpt of the example, word for word."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own job API", 1)[1].split("\n## ", 1)[0]
    excerpt = section.split("```python\n", 1)[1].split("```", 1)[0]
    source = EXAMPLE.read_text()
    for chunk in excerpt.split("\n...\n"):
        assert chunk.strip() in source, chunk


def _example_module() -> Any:
    spec = importlib.util.spec_from_file_location("custom_api_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass and msgspec annotations resolve through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
async def test_durable_watches_serve_a_job_api_of_your_own(redis_client: Any) -> None:
    """The fourth API's jobs go through a durable worker too: the worker remakes each ref
    from its token with the example's client, by kind, with no code for that API."""
    from async_jobs.contrib.redis import DurableWatches

    example = _example_module()
    fake = example.FakePredictions()
    handled: dict[str, str] = {}

    async def handler(job: Any, context: dict[str, Any]) -> None:
        handled[job.id] = job.status

    async with FakeApiServer(token=TOKEN, apis=[fake], clock=FakeClock(speed=0)) as server:
        ids = [fake.add([("processing", 5), (final, None)]) for final in ("succeeded", "failed")]
        async with example.PredictionsClient(TOKEN, server.url, poll=example.FAST) as client:
            watches = DurableWatches(redis_client)
            await watches.submit_many(client.prediction(one) for one in ids)
            async with watches.run(client, handler=handler, poll=example.FAST) as worker:
                await eventually(lambda: worker.in_flight == 2, timeout=30)
                server.clock.advance(5)
                # The worker counts a job once its result is written, after the handler.
                await eventually(lambda: worker.handled == 2, timeout=30)
    assert handled == {ids[0]: "succeeded", ids[1]: "failed"}
    assert await redis_client.xlen("async_jobs:results") == 2
