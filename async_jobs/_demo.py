"""The ``async-jobs demo`` run: the embedded fake server, a mix of jobs, all watched to the end
with the same calls a real program makes."""

from __future__ import annotations

import time
from typing import Any

import anyio

from ._cli_output import Output
from ._policy import PollPolicy
from ._poll import JobRef, wait_until_terminal
from .testing import FakeApiServer
from .testing._scenarios import ScenarioJob, populate
from .zoo import ZooClient

__all__ = ["run_demo"]

DEMO_POLL = PollPolicy(initial=0.1, multiplier=1.5, maximum=0.5, jitter=0.1)


def _ref(job: ScenarioJob, zoo: ZooClient) -> JobRef[Any]:
    if job.kind == "zoo.async_operation":
        return zoo.async_operation(*job.ids)
    raise ValueError(f"the demo cannot watch {job.kind}")


async def run_demo(out: Output, *, speed: float = 1.0) -> list[dict[str, Any]]:
    """Run the demo, report through ``out``, and return the summary rows."""
    rows: list[dict[str, Any]] = []
    async with FakeApiServer() as server:
        server.clock.speed = speed
        jobs = populate(server, "demo")
        async with ZooClient(token=server.token, base_url=server.url) as zoo:
            started = time.monotonic()

            async def follow(job: ScenarioJob) -> None:
                ref = _ref(job, zoo)
                final = await wait_until_terminal(
                    ref, timeout=120, poll=DEMO_POLL, on_update=lambda j: out.update(ref.kind, j)
                )
                out.final(ref.kind, final)
                rows.append(
                    {
                        "id": final.id,
                        "kind": ref.kind,
                        "state": final.job_state.value,
                        "duration": round(time.monotonic() - started, 3),
                        "error": final.error,
                        "expected_state": job.expected_state,
                    }
                )

            with out.watching():
                async with anyio.create_task_group() as tg:
                    for job in jobs:
                        tg.start_soon(follow, job)
    out.summary(rows)
    return rows
