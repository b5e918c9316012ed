"""Watcher end to end against FakeApiServer: coalescing, fallback, limits, resume, cleanup."""

from __future__ import annotations

import logging
import random
import uuid
from collections import Counter
from typing import Any

import anyio
import pytest

import async_jobs as aj
from async_jobs.models.zoo import CONVERSION_ACTIVE_STATUSES, OPERATION_ACTIVE_STATUSES
from async_jobs.testing import FakeApiServer

from .conftest import FAST_RETRY, TOKEN, client_tasks, eventually

pytestmark = pytest.mark.anyio

POLL = aj.PollPolicy(initial=0.02, multiplier=1.5, maximum=0.1, jitter=0.2)
OP_FINALS = {"completed": "succeeded", "failed": "failed"}
#: A step that lasts until a test advances the fake clock.
HOUR = 3600.0


def _zoo(server: FakeApiServer, **kw: Any) -> aj.ZooClient:
    return aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY, **kw)


def _scripted_ops(server: FakeApiServer, count: int, seed: int = 1) -> dict[str, str]:
    """Operations finishing at random within ~0.5 s; id -> expected JobState value."""
    rng = random.Random(seed)
    truth = {}
    for _ in range(count):
        final = rng.choice(["completed", "completed", "failed"])
        op = server.zoo.add_operation(
            rng.choice(["file_volume", "file_mass"]),
            [("queued", rng.uniform(0, 0.2)), ("in_progress", rng.uniform(0, 0.3)), (final, None)],
            error="bad mesh",
        )
        truth[op.id] = OP_FINALS[final]
    return truth


def _scripted_conversions(server: FakeApiServer, datasets: int, each: int) -> dict[str, str]:
    rng = random.Random(2)
    truth = {}
    for _ in range(datasets):
        dataset = server.conversions.add_dataset()
        for _ in range(each):
            final = rng.choice(["success", "success", "error_geometry_mismatch", "canceled"])
            conv = server.conversions.add_conversion(
                dataset,
                [
                    ("queued", rng.uniform(0, 0.2)),
                    ("in_progress", rng.uniform(0, 0.3)),
                    (final, None),
                ],
                error="geometry differs",
            )
            truth[f"{dataset}/{conv.id}"] = {"success": "succeeded", "canceled": "canceled"}.get(
                final, "failed"
            )
    return truth


def _count(server: FakeApiServer, prefix: str) -> int:
    return sum(1 for r in server.requests if r.path.startswith(prefix))


async def test_two_thousand_mixed_jobs_resolve_through_coalesced_listings(
    server: FakeApiServer,
) -> None:
    ops = _scripted_ops(server, 600)
    convs = _scripted_conversions(server, 5, 140)
    jobs = _scripted_metafold(server, 5, 140)
    total = len(ops) + len(convs) + len(jobs)
    assert total == 2000
    async with (
        _zoo(server) as zoo,
        aj.MetafoldClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY) as mf,
        aj.Watcher(zoo, mf, poll=POLL) as watcher,
    ):
        op_futures = {op_id: watcher.add(zoo.async_operation(op_id)) for op_id in ops}
        conv_futures = {key: watcher.add(zoo.dataset_conversion(*key.split("/"))) for key in convs}
        job_futures = {
            key: watcher.add(mf.job(key.split("/")[1], project_id=key.split("/")[0]))
            for key in jobs
        }
        assert watcher.pending == total
        results = await watcher.wait_all(timeout=60)
        assert len(results) == total
        assert watcher.pending == 0 and watcher.done == total
    assert {k: f.result().job_state.value for k, f in op_futures.items()} == ops
    assert {k: f.result().job_state.value for k, f in conv_futures.items()} == convs
    assert {k: f.result().job_state.value for k, f in job_futures.items()} == jobs
    # Coalesced: the listings carry the load, single GETs only confirm what left a listing.
    single_gets = sum(
        1
        for r in server.requests
        if "/conversions/" in r.path
        or r.path.startswith("/async/operations/")
        or "/jobs/" in r.path
    )
    assert single_gets <= 1.5 * total
    assert len(server.requests) < 3 * total


async def test_coalescing_costs_a_sweep_per_group_not_a_request_per_job(
    server: FakeApiServer,
) -> None:
    dataset = server.conversions.add_dataset()
    listing = f"/org/datasets/{dataset}/conversions"
    ids = [
        server.conversions.add_conversion(dataset, [("in_progress", HOUR), ("success", None)]).id
        for _ in range(100)
    ]
    sweep = len(CONVERSION_ACTIVE_STATUSES)  # one request per active status (a single page)
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL) as watcher:
        watcher.add_many(zoo.dataset_conversion(dataset, conv_id) for conv_id in ids)
        await eventually(lambda: _count(server, listing) >= 3 * sweep)
        # Three sweeps looked at 100 jobs, and no job cost a request of its own.
        assert _count(server, listing + "/") == 0
        server.clock.advance(HOUR)
        jobs = await watcher.wait_all(timeout=30)
    assert all(job.status == "success" for job in jobs)
    # Leaving the listing costs each job exactly one GET, to confirm how it ended.
    singles = Counter(r.path for r in server.requests if r.path.startswith(listing + "/"))
    assert singles == Counter(f"{listing}/{conv_id}" for conv_id in ids)
    assert _count(server, listing) - len(ids) < len(ids)  # the sweeps: far fewer than jobs


async def test_job_finishing_while_the_listing_is_paged_is_confirmed(
    server: FakeApiServer,
) -> None:
    quick = server.zoo.add_operation(timeline=[("queued", 0.1), ("completed", None)])
    steady = server.zoo.add_operation(timeline=[("in_progress", 0.5), ("failed", None)])
    # Every list page takes 0.2 s: `quick` completes while its listing is in flight, so it is
    # in no active list when the answers arrive.
    server.inject("latency", delay=0.2, times=None, route="/async/operations")
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL) as watcher:
        first = watcher.add(zoo.async_operation(quick.id))
        second = watcher.add(zoo.async_operation(steady.id))
        await watcher.wait_all(timeout=10)
    assert first.result().status == "completed"
    assert second.result().status == "failed"
    assert any(r.path == f"/async/operations/{quick.id}" for r in server.requests)


async def test_listing_forbidden_falls_back_to_per_job_polling(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    truth = _scripted_ops(server, 40)
    server.inject("status", status=403, times=None, route="/async/operations")
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL) as watcher:
        futures = {op_id: watcher.add(zoo.async_operation(op_id)) for op_id in truth}
        await watcher.wait_all(timeout=30)
        late = server.zoo.add_operation(timeline=[("completed", None)])
        assert (await watcher.add(zoo.async_operation(late.id))).status == "completed"
    assert {k: f.result().job_state.value for k, f in futures.items()} == truth
    # One sweep (a request per active status), then never again.
    listings = _count(server, "/async/operations") - _count(server, "/async/operations/")
    assert listings == len(OPERATION_ACTIVE_STATUSES)
    fallbacks = [r for r in caplog.records if "one by one" in r.getMessage()]
    assert len(fallbacks) == 1


async def test_rate_adapts_down_under_many_429s(server: FakeApiServer) -> None:
    ops = [
        server.zoo.add_operation(timeline=[("in_progress", 0.5), ("completed", None)])
        for _ in range(20)
    ]
    server.inject("status", status=429, retry_after="0.01", times=20, route="/async/operations/*")
    async with (
        _zoo(server) as zoo,
        aj.Watcher(zoo, poll=POLL, coalesce=False, rate_limit=200) as watcher,
    ):
        watcher.add_many(zoo.async_operation(op.id) for op in ops)
        jobs = await watcher.wait_all(timeout=20)
        own = watcher._limits.rate
        assert own.throttle_count == 20
        assert own.rate is not None and own.rate < 200  # it slowed itself down
        assert zoo._http.limiter.rate is None  # and left its client's limits alone
    assert all(job.status == "completed" for job in jobs)


async def test_snapshot_and_restore_resolve_the_rest(server: FakeApiServer) -> None:
    fast = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(5)]
    slow = [
        server.zoo.add_operation(timeline=[("queued", 3600), ("completed", None)]) for _ in range(5)
    ]
    dataset = server.conversions.add_dataset()
    convs = [
        server.conversions.add_conversion(dataset, [("queued", 3600), ("success", None)])
        for _ in range(5)
    ]
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL) as watcher:
        for op in fast + slow:
            watcher.add(zoo.async_operation(op.id))
        for conv in convs:
            watcher.add(zoo.dataset_conversion(dataset, conv.id))
        async for _ in watcher.as_completed():
            if watcher.done == len(fast):
                break
        data = watcher.snapshot()
    assert TOKEN.encode() not in data
    server.clock.advance(3600)
    async with _zoo(server) as fresh, aj.Watcher.restore(data, fresh, poll=POLL) as restored:
        assert restored.pending == 10
        jobs = await restored.wait_all(timeout=10)
    assert sorted(job.id for job in jobs) == sorted(x.id for x in slow + convs)
    assert all(job.job_state is aj.JobState.SUCCEEDED for job in jobs)


def test_job_ref_tokens_round_trip() -> None:
    zoo = aj.ZooClient(token="x" * 20, base_url="http://127.0.0.1:9")
    for ref in (zoo.async_operation("op-1"), zoo.dataset_conversion("ds/1", "c+1")):
        token = ref.to_token()
        assert "x" * 20 not in token
        again = aj.JobRef.from_token(token, zoo)
        assert again == ref and again.ids == ref.ids
    with pytest.raises(ValueError):
        aj.JobRef.from_token("garbage!", zoo)
    with pytest.raises(ValueError):
        aj.JobRef.from_token(zoo.async_operation("a").to_token())  # no client serves it


async def test_as_completed_add_twice_and_remove(server: FakeApiServer) -> None:
    ops = [
        server.zoo.add_operation(timeline=[("queued", 0.05 * i), ("completed", None)])
        for i in range(6)
    ]
    gone = server.zoo.add_operation(timeline=[("queued", None)])
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL) as watcher:
        futures = [watcher.add(zoo.async_operation(op.id)) for op in ops]
        again = watcher.add(zoo.async_operation(ops[0].id))
        assert again is not futures[0]  # each caller its own awaitable
        doomed = watcher.add(zoo.async_operation(gone.id))
        assert watcher.remove(zoo.async_operation(gone.id))
        assert not watcher.remove(zoo.async_operation(gone.id))
        seen = [job.id async for job in watcher.as_completed()]
    assert Counter(seen) == Counter(op.id for op in ops)
    assert doomed.cancelled()
    assert (await again).id == (await futures[0]).id == ops[0].id


async def test_a_missing_job_fails_alone(server: FakeApiServer) -> None:
    ok = server.zoo.add_operation(timeline=[("completed", None)])
    dataset = server.conversions.add_dataset()
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL) as watcher:
        good = watcher.add(zoo.async_operation(ok.id))
        missing = watcher.add(zoo.dataset_conversion(dataset, str(uuid.uuid4())))
        with pytest.raises(aj.NotFoundError):
            await missing
        assert (await good).status == "completed"


async def test_on_update_per_ref_and_for_the_watcher(server: FakeApiServer) -> None:
    op = server.zoo.add_operation(
        timeline=[("queued", HOUR), ("in_progress", HOUR), ("completed", None)]
    )
    mine: list[str] = []
    everyone: list[str] = []

    async def record(job: aj.AsyncOperation) -> None:
        everyone.append(job.status)
        server.clock.advance(HOUR)  # each status is seen before the job moves on

    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, on_update=record) as watcher:
        await watcher.add(zoo.async_operation(op.id), on_update=lambda j: mine.append(j.status))
    assert mine == everyone == ["queued", "in_progress", "completed"]


async def test_wait_all_timeout_lists_the_pending(server: FakeApiServer) -> None:
    stuck = server.zoo.add_operation(timeline=[("in_progress", None)])
    seen = anyio.Event()
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL) as watcher:
        watcher.add(zoo.async_operation(stuck.id), on_update=lambda _job: seen.set())
        await seen.wait()
        with pytest.raises(aj.WaitTimeout) as info:
            await watcher.wait_all(timeout=0.2)
    assert [job.status for job in info.value.last] == ["in_progress"]


async def test_cancelling_the_owner_leaves_no_task(server: FakeApiServer) -> None:
    _scripted_ops(server, 20)
    before = client_tasks()
    futures: list[Any] = []
    async with _zoo(server) as zoo:

        async def owner() -> None:
            async with aj.Watcher(zoo, poll=POLL) as watcher:
                futures.extend(
                    watcher.add(zoo.async_operation(op_id)) for op_id in server.zoo.operations
                )
                await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(owner)
            await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
    assert client_tasks() == before
    assert all(f.done() for f in futures)


async def test_fallback_logs_once_per_group(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="async_jobs")
    dataset = server.conversions.add_dataset()
    convs = [server.conversions.add_conversion(dataset) for _ in range(10)]
    server.inject("status", status=404, times=None, route=f"/org/datasets/{dataset}/conversions")
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL) as watcher:
        watcher.add_many(zoo.dataset_conversion(dataset, c.id) for c in convs)
        jobs = await watcher.wait_all(timeout=10)
    assert all(job.status == "success" for job in jobs)
    assert len([r for r in caplog.records if "one by one" in r.getMessage()]) == 1


def _scripted_metafold(server: FakeApiServer, projects: int, each: int) -> dict[str, str]:
    rng = random.Random(3)
    truth = {}
    for p in range(projects):
        project = f"proj-{p}"
        for _ in range(each):
            final = rng.choice(["success", "success", "failure", "canceled"])
            job = server.metafold.add_job(
                project,
                timeline=[
                    ("pending", rng.uniform(0, 0.2)),
                    ("started", rng.uniform(0, 0.3)),
                    (final, None),
                ],
                error="mesh too coarse",
            )
            truth[f"{project}/{job.id}"] = {
                "success": "succeeded",
                "failure": "failed",
                "canceled": "canceled",
            }[final]
    return truth


async def test_metafold_jobs_and_workflows_coalesce_per_project(server: FakeApiServer) -> None:
    truth = _scripted_metafold(server, 3, 60)
    workflow = server.metafold.add_workflow(
        "proj-0",
        [
            {"name": "mesh"},
            {"name": "lattice", "needs": ["mesh"]},
            {"name": "export", "needs": ["lattice"]},
        ],
    )
    ops = _scripted_ops(server, 30)
    async with (
        _zoo(server) as zoo,
        aj.MetafoldClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY) as mf,
        aj.Watcher(zoo, mf, poll=POLL) as watcher,
    ):
        jobs = {
            key: watcher.add(mf.job(key.split("/")[1], project_id=key.split("/")[0]))
            for key in truth
        }
        flow = watcher.add(mf.workflow(workflow.id, project_id="proj-0"))
        opf = {op_id: watcher.add(zoo.async_operation(op_id)) for op_id in ops}
        await watcher.wait_all(timeout=30)
    assert {k: f.result().job_state.value for k, f in jobs.items()} == truth
    assert {k: f.result().job_state.value for k, f in opf.items()} == ops
    assert flow.result().job_state is aj.JobState.SUCCEEDED
    listings = [r for r in server.requests if r.path.endswith("/jobs")]
    assert {r.query.get("q") for r in listings} == {"state:pending", "state:started"}
    single = [r for r in server.requests if "/jobs/" in r.path]
    assert len(single) <= len(truth) * 1.5  # only confirmations of jobs that left the lists


async def test_restore_across_apis(server: FakeApiServer) -> None:
    job = server.metafold.add_job("p", timeline=[("started", 3600), ("success", None)])
    op = server.zoo.add_operation(timeline=[("queued", 3600), ("completed", None)])
    async with (
        _zoo(server) as zoo,
        aj.MetafoldClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY) as mf,
    ):
        async with aj.Watcher(zoo, mf, poll=POLL) as watcher:
            watcher.add(mf.job(job.id, project_id="p"))
            watcher.add(zoo.async_operation(op.id))
            data = watcher.snapshot()
        server.clock.advance(3600)
        async with aj.Watcher.restore(data, mf, zoo, poll=POLL) as again:
            finals = await again.wait_all(timeout=10)
    assert sorted(j.id for j in finals) == sorted([job.id, op.id])
    assert all(j.job_state is aj.JobState.SUCCEEDED for j in finals)


async def test_keep_completed_false_keeps_nothing(server: FakeApiServer) -> None:
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(10)]
    async with _zoo(server) as zoo, aj.Watcher(zoo, poll=POLL, keep_completed=False) as watcher:
        futures = watcher.add_many(zoo.async_operation(op.id) for op in ops)
        for future in futures:
            assert (await future).status == "completed"
        assert watcher.done == 10
        assert [job async for job in watcher.as_completed()] == []
