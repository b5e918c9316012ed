"""The ``async-jobs demo`` run: the embedded fake server, a realistic mix of Zoo operations,
dataset conversions and a Metafold workflow, all followed to the end by one
:class:`~async_jobs.Watcher` (the calls a real service makes), with live progress."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ._api import JobKind
from ._cli_output import Output
from ._client import ApiClient
from ._policy import PollPolicy
from ._watcher import Watcher
from .metafold import MetafoldClient
from .testing import FakeApiServer
from .testing._scenarios import DEMO_PROJECT, ScenarioJob, populate
from .zoo import ZooClient

__all__ = ["run_demo"]

DEMO_POLL = PollPolicy(initial=0.1, multiplier=1.5, maximum=0.4, jitter=0.1)


def _reporter(out: Output, kind: JobKind[Any]) -> Callable[[Any], None]:
    return lambda job: out.update(kind, job)


async def run_demo(out: Output, *, speed: float = 1.0) -> list[dict[str, Any]]:
    """Run the demo, report through ``out``, and return the summary rows (one per job)."""
    rows: list[dict[str, Any]] = []
    async with FakeApiServer() as server:
        server.clock.set_speed(speed)
        jobs = populate(server, "demo", long_running=False)
        async with (
            ZooClient(token=server.token, base_url=server.url) as zoo,
            MetafoldClient(token=server.token, base_url=server.url, project_id=DEMO_PROJECT) as mf,
        ):
            started = time.monotonic()
            with out.watching():
                watcher: Watcher
                async with Watcher(zoo, mf, poll=DEMO_POLL) as watcher:
                    expected: dict[str, tuple[ScenarioJob, JobKind[Any]]] = {}
                    clients: tuple[ApiClient, ...] = (zoo, mf)
                    served = {kind.name: (c, kind) for c in clients for kind in c.api.kinds}
                    for job in jobs:
                        client, kind = served[job.kind]
                        expected[job.ids[-1]] = job, kind
                        watcher.add(client.ref(kind, *job.ids), on_update=_reporter(out, kind))
                    final: Any
                    async for final in watcher.as_completed():
                        job, kind = expected[final.id]
                        out.final(kind, final)
                        rows.append(
                            {
                                "id": final.id,
                                "kind": job.kind,
                                "state": final.job_state.value,
                                "expected_state": job.expected_state,
                                "duration": round(time.monotonic() - started, 3),
                                "error": final.error,
                            }
                        )
        requests = len(server.requests)
    out.summary(rows)
    out.stats(jobs=len(rows), requests=requests, seconds=round(time.monotonic() - started, 2))
    return rows
