"""``python -m async_jobs`` (and the ``async-jobs`` command): a demo that needs no token.

It starts the embedded :class:`~async_jobs.testing.FakeApiServer`, creates a few Zoo async
operations of different types (one of them fails), and waits for all of them concurrently
with the same calls a real program would make, printing every change it observes.
"""

from __future__ import annotations

import argparse
import sys
import time

import anyio

from . import __version__
from ._policy import PollPolicy
from ._poll import wait_until_terminal
from .models.zoo import AsyncOperation
from .testing import FakeApiServer
from .zoo import ZooClient

__all__ = ["main", "run_demo"]

_DEMO_OPERATIONS = [
    ("file_conversion", [("queued", 0.4), ("in_progress", 1.2), ("completed", None)], None),
    ("file_volume", [("queued", 0.2), ("in_progress", 0.8), ("completed", None)], None),
    ("file_mass", [("uploaded", 0.6), ("in_progress", 1.5), ("completed", None)], None),
    (
        "file_surface_area",
        [("queued", 0.3), ("in_progress", 0.9), ("failed", None)],
        "mesh is not watertight",
    ),
    ("text_to_cad", [("queued", 0.5), ("in_progress", 2.0), ("completed", None)], None),
]


async def run_demo(speed: float = 1.0) -> int:
    """Run the demo; returns the number of operations that did not succeed."""
    started = time.monotonic()
    async with FakeApiServer() as server:
        server.clock.speed = speed
        ops = [
            server.zoo.add_operation(kind, steps, error=err)
            for kind, steps, err in _DEMO_OPERATIONS
        ]
        print(f"FakeApiServer on {server.url}: watching {len(ops)} Zoo async operations\n")
        results: dict[str, AsyncOperation] = {}

        def show(op: AsyncOperation) -> None:
            elapsed = time.monotonic() - started
            print(f"  {elapsed:5.2f}s  {op.type:<18} {op.id[:8]}  {op.status}")

        async with ZooClient(token=server.token, base_url=server.url) as zoo:

            async def follow(op_id: str) -> None:
                ref = zoo.async_operation(op_id)
                poll = PollPolicy(initial=0.1, multiplier=1.5, maximum=0.5)
                results[op_id] = await wait_until_terminal(
                    ref, timeout=60, poll=poll, on_update=show
                )

            async with anyio.create_task_group() as tg:
                for op in ops:
                    tg.start_soon(follow, op.id)

    print("\nsummary")
    failures = 0
    for op in ops:
        final = results[op.id]
        outcome = final.job_state.value
        if final.error:
            outcome += f" ({final.error})"
            failures += 1
        print(f"  {final.type:<18} {final.id[:8]}  {outcome}")
    print(f"\ndone in {time.monotonic() - started:.1f}s, {len(server.requests)} requests")
    return failures


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m async_jobs``."""
    parser = argparse.ArgumentParser(prog="async-jobs", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="demo", choices=["demo"])
    parser.add_argument("--speed", type=float, default=1.0, help="scale the fake's timelines")
    parser.add_argument("--version", action="version", version=f"async-jobs {__version__}")
    args = parser.parse_args(argv)
    try:
        anyio.run(run_demo, args.speed)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
