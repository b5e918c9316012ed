"""What a Watcher keeps once a job is done (issue 12, DESIGN "Services"): a finished job is
kept only while someone can still take it, that is while ``as_completed()`` runs or when
``keep_completed=True`` was asked for. A service that only awaits the futures ``add()`` gave it
must get its memory back: once it drops those futures, nothing in the watcher may still refer
to the jobs.

Public API only. msgspec Structs cannot be weakly referenced, so the jobs are fetched through a
``JobRef`` (public: "anything with an async fetch returning a job model can be waited on")
that wraps the client's own ref and returns a weakly referenceable subclass of
``MetafoldJob``; the coalesced listing is the client's own, so a terminal job (which leaves
the active listing) reaches the watcher through that fetch. The RSS figures at 20,000 jobs are
in benchmarks/watcher_memory.py, not here.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from anyio.abc import TaskStatus

import async_jobs as aj
from async_jobs.testing import FakeApiServer

from .conftest import FAST_RETRY, TOKEN

pytestmark = pytest.mark.anyio

POLL = aj.PollPolicy(initial=0.01, maximum=0.05, jitter=0.1)
JOBS = 300
#: The jobs run until the test advances the fake clock by this much.
HOUR = 3600.0


class TrackedJob(aj.MetafoldJob, kw_only=True, frozen=True, weakref=True):
    """A MetafoldJob that can be weakly referenced."""


def _tracked(ref: aj.JobRef[aj.MetafoldJob]) -> aj.JobRef[TrackedJob]:
    """``ref`` (its kind, ids and coalesced listing) whose fetch returns a TrackedJob."""

    async def fetch() -> TrackedJob:
        return TrackedJob(**msgspec.structs.asdict(await ref.fetch()))

    return aj.JobRef(ref.kind, ref.ids, fetch, poll=ref.poll, listing=ref.listing)


def _add_jobs(server: FakeApiServer, count: int) -> list[str]:
    """``count`` started jobs in project ``p`` (two groups' worth would change nothing) that
    succeed or fail once the clock has moved an hour on."""
    return [
        server.metafold.add_job(
            "p",
            timeline=[("started", HOUR), ("failure" if n % 4 == 0 else "success", None)],
            error="mesh is not watertight",
        ).id
        for n in range(count)
    ]


def _client(server: FakeApiServer) -> aj.MetafoldClient:
    return aj.MetafoldClient(TOKEN, server.url, "p", retry=FAST_RETRY, poll=POLL)


def _weakrefs(jobs: Sequence[Any]) -> list[weakref.ref[TrackedJob]]:
    for job in jobs:
        assert isinstance(job, TrackedJob), f"a terminal job did not come from fetch: {job!r}"
    return [weakref.ref(job) for job in jobs]


async def _await_futures(futures: list[asyncio.Future[Any]]) -> list[weakref.ref[TrackedJob]]:
    """Await every future (the way a service does), then drop them and their results: only
    weak references to the terminal jobs come back."""
    with anyio.fail_after(20):
        jobs = await asyncio.gather(*futures)
    futures.clear()
    return _weakrefs(jobs)


async def _alive(refs: list[weakref.ref[TrackedJob]]) -> int:
    """How many of ``refs`` still have a referent after a full collection."""
    # The event loop's current handle holds the result of the await that woke this task
    # (a gather's list of jobs) until the loop moves on to the next one.
    await anyio.lowlevel.checkpoint()
    gc.collect()
    return sum(ref() is not None for ref in refs)


async def test_jobs_awaited_through_their_futures_are_not_kept(server: FakeApiServer) -> None:
    ids = _add_jobs(server, JOBS)
    async with _client(server) as mf, aj.Watcher(mf, poll=POLL) as watcher:
        futures = [watcher.add(_tracked(mf.job(job_id))) for job_id in ids]
        server.clock.advance(HOUR)
        refs = await _await_futures(futures)
        # Counted while the watcher still runs, as in a service (asserted outside the block,
        # so that a failure reads as itself).
        alive = await _alive(refs)
    assert len(refs) == JOBS
    assert alive == 0, (
        f"{alive} of {JOBS} finished jobs are still referenced after their futures were "
        "awaited and dropped, with no as_completed() running and keep_completed not asked"
    )


async def test_keep_completed_keeps_finished_jobs_until_as_completed_takes_them(
    server: FakeApiServer,
) -> None:
    ids = _add_jobs(server, JOBS)
    async with _client(server) as mf, aj.Watcher(mf, poll=POLL, keep_completed=True) as watcher:
        futures = [watcher.add(_tracked(mf.job(job_id))) for job_id in ids]
        server.clock.advance(HOUR)
        refs = await _await_futures(futures)
        kept = await _alive(refs)  # for as_completed(), futures awaited or not
        with anyio.fail_after(20):
            taken = [job async for job in watcher.as_completed()]
        # Each kept job exactly once, the very objects the futures gave.
        same = sorted(map(id, taken)) == sorted(id(ref()) for ref in refs)
        del taken
        left = await _alive(refs)  # taken: the watcher lets go of them
    assert kept == JOBS
    assert same
    assert left == 0, f"{left} of {JOBS} jobs still referenced once as_completed() took them"


@pytest.mark.parametrize(
    "options", [{}, {"keep_completed": False}], ids=["default", "keep_completed=False"]
)
async def test_jobs_finishing_while_as_completed_runs_are_delivered_to_it(
    server: FakeApiServer, options: dict[str, Any]
) -> None:
    ids = _add_jobs(server, JOBS)
    taken: list[Any] = []
    async with _client(server) as mf, aj.Watcher(mf, poll=POLL, **options) as watcher:
        futures = [watcher.add(_tracked(mf.job(job_id))) for job_id in ids]

        async def consume(*, task_status: TaskStatus[None]) -> None:
            task_status.started()  # then straight into as_completed(), before any job ends
            async for job in watcher.as_completed():
                taken.append(job)

        async with anyio.create_task_group() as tg:
            await tg.start(consume)
            server.clock.advance(HOUR)
            refs = await _await_futures(futures)
        # The consumer got every job once (as_completed() ends once none is pending), the
        # same objects the futures gave.
        same = sorted(map(id, taken)) == sorted(id(ref()) for ref in refs)
        taken_ids = sorted(job.id for job in taken)
        taken.clear()
        left = await _alive(refs)  # delivered and dropped: nothing else keeps them
    assert taken_ids == sorted(ids)
    assert same
    assert left == 0, f"{left} of {JOBS} jobs still referenced once as_completed() gave them"
