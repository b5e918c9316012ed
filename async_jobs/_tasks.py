"""The library's one way to run several awaitables at once: a task group whose first error is
raised as itself (never inside an exception group, on 3.10 too) and cancels the others."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import anyio

__all__ = ["run_concurrently"]


async def run_concurrently(calls: Iterable[Callable[[], Awaitable[object]]]) -> None:
    """Run each of ``calls`` in one task group and return once all are done. The first one to
    raise cancels the others, and its exception is raised as itself once they have stopped.
    Bound the work with :class:`~async_jobs._ratelimit.Slots` inside the calls."""
    errors: list[Exception] = []

    async def run(call: Callable[[], Awaitable[object]], scope: anyio.CancelScope) -> None:
        try:
            await call()
        except Exception as exc:
            errors.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(run, call, tg.cancel_scope)
    if errors:
        raise errors[0]
