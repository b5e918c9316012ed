"""Whole Zoo datasets (issue 15): ``aj.DatasetStats`` and ``zoo.dataset(id)`` (a dataset as one
job), conversion and dataset retriggers (POSTs that reach the server exactly once), the
operations list sorted ``created_at_ascending`` by default with out-of-order streams detected,
and the CLI commands on them; all against FakeApiServer, time driven by the fake's clock."""

from __future__ import annotations

import argparse
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import msgspec
import pytest
import rich.console as rich_console

import async_jobs as aj
from async_jobs import cli
from async_jobs._cli_output import JsonOutput, RichOutput
from async_jobs.testing import FakeApiServer, FakeClock
from async_jobs.testing._conversions import STUCK_AFTER
from async_jobs.zoo import DATASET

from .conftest import FAST_POLL, FAST_RETRY, TOKEN

pytestmark = pytest.mark.anyio


@pytest.fixture
async def frozen() -> AsyncIterator[FakeApiServer]:
    """A fake whose clock moves only when a test advances it."""
    async with FakeApiServer(token=TOKEN, clock=FakeClock(speed=0)) as fake:
        yield fake


@pytest.fixture
async def fzoo(frozen: FakeApiServer) -> AsyncIterator[aj.ZooClient]:
    async with aj.ZooClient(
        token=TOKEN, base_url=frozen.url, retry=FAST_RETRY, poll=FAST_POLL, timeout=5
    ) as client:
        yield client


@contextmanager
def ticking(server: FakeApiServer, seconds: float) -> Iterator[None]:
    """While the block runs, every poll of any wait moves the fake clock on by ``seconds``
    (changed or not, so no wait can stall), whatever the machine's speed."""

    def tick(event: aj.events.Event) -> None:
        if isinstance(event, aj.events.PollDone):
            server.clock.advance(seconds)

    remove = aj.add_listener(tick)
    try:
        yield
    finally:
        remove()


def _posts(server: FakeApiServer, suffix: str) -> list[aj.testing.RecordedRequest]:
    return [r for r in server.requests if r.method == "POST" and r.path.endswith(suffix)]


# -- the model -------------------------------------------------------------------------------


def test_stats_decode_from_a_raw_body_and_read_as_one_job() -> None:
    body = (
        b'{"by_status": {"success": 197, "error_user": 2, "error_internal": 1},'
        b' "dataset_id": "6f1c2d1e-7b0f-4a7c-9c55-0b4ad1c0de01",'
        b' "failures": 3, "successes": 197, "total": 200, "later": "ignored"}'
    )
    stats = msgspec.json.decode(body, type=aj.DatasetStats)
    assert stats.id == stats.dataset_id == "6f1c2d1e-7b0f-4a7c-9c55-0b4ad1c0de01"
    assert stats.job_state is aj.JobState.FAILED and stats.is_terminal
    assert stats.progress == 1.0
    assert stats.error == "3 of 200 conversions failed"
    assert stats.summary == "success 197, error_user 2, error_internal 1"


@pytest.mark.parametrize(
    ("by_status", "failures", "state", "progress"),
    [
        ({}, 0, aj.JobState.SUCCEEDED, 1.0),  # an empty dataset
        ({"success": 4}, 0, aj.JobState.SUCCEEDED, 1.0),
        ({"success": 3, "canceled": 1}, 0, aj.JobState.SUCCEEDED, 1.0),
        ({"success": 3, "error_user": 1}, 1, aj.JobState.FAILED, 1.0),
        ({"success": 3, "error_mesh_melted": 1}, 0, aj.JobState.FAILED, 1.0),  # error_* rule
        ({"success": 3}, 1, aj.JobState.FAILED, 1.0),  # the server's failure count wins
        ({"success": 1, "queued": 3}, 0, aj.JobState.RUNNING, 0.25),
        ({"success": 2, "in_progress": 1, "error_user": 1}, 1, aj.JobState.RUNNING, 0.75),
        ({"success": 3, "thinking_hard": 1}, 0, aj.JobState.RUNNING, 0.75),  # unknown: active
        ({"success": 3, "queued": 0}, 0, aj.JobState.SUCCEEDED, 1.0),  # zero counts nothing
    ],
)
def test_state_and_progress_from_the_counts(
    by_status: dict[str, int], failures: int, state: aj.JobState, progress: float
) -> None:
    total = sum(by_status.values())
    stats = aj.DatasetStats(
        dataset_id="d", by_status=by_status, total=total, failures=failures, successes=0
    )
    assert stats.job_state is state
    assert stats.is_terminal == state.is_terminal
    assert stats.progress == progress
    assert (stats.error is not None) == (state is aj.JobState.FAILED)


def test_conversions_the_total_counts_but_no_status_names_are_under_way() -> None:
    stats = aj.DatasetStats(dataset_id="d", by_status={"success": 3}, total=4, successes=3)
    assert stats.job_state is aj.JobState.RUNNING and stats.progress == 0.75
    assert stats.status_detail == "3/4 finished"


# -- the dataset as one job ------------------------------------------------------------------


def _dataset_of(server: FakeApiServer, count: int, failing: int = 0) -> str:
    """``count`` conversions finishing over 20 fake seconds (``count / 20`` a second), the
    last ``failing`` of them in ``error_user``."""
    dataset = server.conversions.add_dataset()
    for index in range(count):
        half = ((index % 20) + 1) * 0.5
        end = ("error_user", None) if index >= count - failing else ("completed", None)
        server.conversions.add_conversion(
            dataset, [("queued", half), ("salon", half), end], error="bad mesh"
        )
    return dataset


@pytest.mark.parametrize(
    ("failing", "state"), [(0, aj.JobState.SUCCEEDED), (7, aj.JobState.FAILED)]
)
async def test_a_dataset_of_200_conversions_is_waited_as_one_job(
    frozen: FakeApiServer, fzoo: aj.ZooClient, failing: int, state: aj.JobState
) -> None:
    dataset = _dataset_of(frozen, 200, failing)
    seen: list[aj.DatasetStats] = []
    with ticking(frozen, 1.0):
        final = await aj.wait_until_terminal(
            fzoo.dataset(dataset), timeout=30, on_update=seen.append
        )
    progress = [stats.progress for stats in seen]
    assert progress == sorted(progress) and progress[0] == 0.0 and progress[-1] == 1.0
    assert len(set(progress)) == 21  # 10 more conversions finish each fake second
    assert final == seen[-1] and final.job_state is state and final.total == 200
    assert all(not stats.is_terminal for stats in seen[:-1])
    assert final.failures == failing and final.successes == 200 - failing
    assert final.error == (f"{failing} of 200 conversions failed" if failing else None)
    stats_requests = [r for r in frozen.requests if r.path == f"/org/datasets/{dataset}/stats"]
    assert len(stats_requests) == len(seen)  # one request a poll, however large the dataset


async def test_stats_route_counts_404s_and_faults(
    frozen: FakeApiServer, fzoo: aj.ZooClient
) -> None:
    dataset = frozen.conversions.add_dataset()
    assert await fzoo.get_dataset_stats(dataset) == aj.DatasetStats(dataset_id=dataset)
    frozen.conversions.add_conversion(dataset, [("in_progress", "salon", None)])
    frozen.conversions.add_conversion(dataset, [("error_geometry_mismatch", None)])
    frozen.conversions.add_conversion(dataset, [("success", None)])
    frozen.conversions.add_conversion(dataset, [("canceled", None)])
    frozen.inject("status", status=503, route=f"/org/datasets/{dataset}/stats")  # a GET: retried
    stats = await fzoo.get_dataset_stats(dataset)
    assert stats.by_status == {
        "in_progress": 1,
        "error_geometry_mismatch": 1,
        "success": 1,
        "canceled": 1,
    }
    assert (stats.total, stats.successes, stats.failures) == (4, 1, 1)
    assert frozen.faults.injected == {"status": 1}
    with pytest.raises(aj.NotFoundError) as missing:
        await fzoo.get_dataset_stats(str(uuid.uuid4()))
    assert missing.value.request_id  # the X-Api-Call-Id of Zoo's error body
    with pytest.raises(aj.BadRequestError):
        await fzoo.get_dataset_stats("not-a-uuid")


async def test_a_dataset_ref_round_trips_a_resume_token(
    frozen: FakeApiServer, fzoo: aj.ZooClient
) -> None:
    dataset = _dataset_of(frozen, 3)
    ref = fzoo.dataset(dataset)
    again = aj.JobRef.from_token(ref.to_token(), fzoo)
    assert again == ref and again.key == f"zoo.dataset:{dataset}" and again.ids == (dataset,)
    assert fzoo.job_ref("zoo.dataset", [dataset]) == ref
    assert DATASET in fzoo.api.kinds and DATASET.label == "dataset"
    assert (await again.fetch()).total == 3


# -- retriggers ------------------------------------------------------------------------------


async def test_a_retriggered_conversion_walks_again_to_its_new_end(
    frozen: FakeApiServer, fzoo: aj.ZooClient
) -> None:
    dataset = frozen.conversions.add_dataset()
    failed = frozen.conversions.add_conversion(
        dataset, [("queued", 1), ("error_internal", None)], error="worker lost"
    )
    frozen.clock.advance(2)
    assert frozen.conversions.state(failed.id)[0] == "error_internal"
    await fzoo.retrigger_conversion(dataset, failed.id)
    assert failed.retriggers == 1 and len(_posts(frozen, f"{failed.id}/retrigger")) == 1
    seen: list[aj.DatasetConversion] = []
    with ticking(frozen, 0.015):
        final = await aj.wait_until_terminal(
            fzoo.dataset_conversion(dataset, failed.id), timeout=30, on_update=seen.append
        )
    assert final.status == "success" and final.phase == "completed"
    assert (seen[0].status, seen[0].phase) == ("queued", "queued")  # from the start again
    phases = [c.phase_index if c.phase_index is not None else -1 for c in seen]
    assert len(seen) > 5 and phases == sorted(phases) and phases[0] == 0  # forward
    assert final.error is None and final.started_at is not None
    assert final.started_at > final.created_at  # type: ignore[operator]  # the new run's start

    # The test chooses where a run ends: this time it fails again.
    failed.rerun = [("queued", 1), ("convert_raw_kcl", 1), ("error_user", None)]
    await fzoo.retrigger_conversion(dataset, failed.id)
    with ticking(frozen, 1.0):
        final = await aj.wait_until_terminal(
            fzoo.dataset_conversion(dataset, failed.id), timeout=30
        )
    assert final.status == "error_user" and failed.retriggers == 2


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_a_post_failing_after_the_server_acted_is_not_sent_again(
    frozen: FakeApiServer, fzoo: aj.ZooClient, status: int
) -> None:
    """A 5xx (a 503 without Retry-After included) may come after the work was done: the
    retrigger is raised as a ServerError, never sent a second time."""
    dataset = frozen.conversions.add_dataset()
    conversion = frozen.conversions.add_conversion(dataset, [("error_user", None)])
    frozen.inject("status", status=status, served=True, route="*/retrigger")
    with pytest.raises(aj.ServerError) as raised:
        await fzoo.retrigger_conversion(dataset, conversion.id)
    assert raised.value.status == status
    assert conversion.retriggers == 1  # the server acted; a retry would have run it twice
    assert len(_posts(frozen, "/retrigger")) == 1
    frozen.inject("status", status=status, served=True, route="*/retrigger")
    with pytest.raises(aj.ServerError):
        await fzoo.retrigger_dataset(dataset)
    assert frozen.conversions.dataset_retriggers[dataset] == 1 and conversion.retriggers == 2
    assert len(_posts(frozen, f"{dataset}/retrigger")) == 1


@pytest.mark.parametrize(("status", "retry_after"), [(429, None), (429, "0"), (503, "0")])
async def test_a_post_the_server_refused_is_sent_again_and_acted_on_once(
    frozen: FakeApiServer, fzoo: aj.ZooClient, status: int, retry_after: str | None
) -> None:
    dataset = frozen.conversions.add_dataset()
    conversion = frozen.conversions.add_conversion(dataset, [("error_user", None)])
    frozen.inject("status", status=status, retry_after=retry_after, route="*/retrigger")
    await fzoo.retrigger_conversion(dataset, conversion.id)
    assert conversion.retriggers == 1  # the refusal did nothing; the retry did it once
    assert len(_posts(frozen, f"{conversion.id}/retrigger")) == 2
    frozen.inject("status", status=status, retry_after=retry_after, route="*/retrigger")
    await fzoo.retrigger_dataset(dataset, ["queued"])  # the conversion is queued again now
    assert frozen.conversions.dataset_retriggers[dataset] == 1 and conversion.retriggers == 2
    assert len(_posts(frozen, f"{dataset}/retrigger")) == 2


async def test_retrigger_dataset_sends_statuses_as_one_value_and_waits_the_dataset(
    frozen: FakeApiServer, fzoo: aj.ZooClient
) -> None:
    dataset = frozen.conversions.add_dataset()
    ok = frozen.conversions.add_conversion(dataset, [("success", None)])
    bad = frozen.conversions.add_conversion(dataset, [("error_user", None)], error="x")
    gone = frozen.conversions.add_conversion(dataset, [("canceled", None)])
    stuck = frozen.conversions.add_conversion(dataset, [("in_progress", "salon", None)])
    assert (await fzoo.get_dataset_stats(dataset)).job_state is aj.JobState.RUNNING
    await fzoo.retrigger_dataset(dataset, ["error_user", "canceled", "error_user"])
    (post,) = _posts(frozen, f"{dataset}/retrigger")
    assert post.query == {"statuses": "error_user,canceled"}  # one comma-separated value
    assert [c.retriggers for c in (ok, bad, gone, stuck)] == [0, 1, 1, 0]
    frozen.conversions.set_status(stuck.id, "success")
    seen: list[aj.DatasetStats] = []
    with ticking(frozen, 0.05):
        final = await aj.wait_until_terminal(
            fzoo.dataset(dataset), timeout=30, on_update=seen.append
        )
    assert seen[0].by_status == {"success": 2, "queued": 2}
    assert final.job_state is aj.JobState.SUCCEEDED and final.by_status == {"success": 4}


async def test_without_statuses_the_server_picks_as_the_spec_says(
    frozen: FakeApiServer, fzoo: aj.ZooClient
) -> None:
    """Every conversion that did not succeed; ``in_progress`` only after 5 minutes of it."""
    dataset = frozen.conversions.add_dataset()
    add = partial(frozen.conversions.add_conversion, dataset)
    old = add([("in_progress", "salon", None)])  # running since 0
    frozen.clock.advance(1)
    exactly = add([("in_progress", "salon", None)])  # running since 1
    ok = add([("success", None)])
    failed = add([("error_connection", None)])
    gone = add([("canceled", None)])
    waiting = add([("queued", None)])
    strange = add([("on_hold", None)])
    frozen.clock.advance(200)
    young = add([("queued", 50), ("salon", None)])  # running since 251
    back = add([("in_progress", "salon", 10), ("queued", 20), ("salon", None)])  # since 231
    frozen.clock.advance(STUCK_AFTER - 200)  # now 301
    await fzoo.retrigger_dataset(dataset)
    (post,) = _posts(frozen, f"{dataset}/retrigger")
    assert "statuses" not in post.query
    retriggered = {c.id for c in (old, failed, gone, waiting, strange)}
    everyone = (old, exactly, ok, failed, gone, waiting, strange, young, back)
    assert {c.id for c in everyone if c.retriggers} == retriggered
    assert all(c.retriggers <= 1 for c in everyone)
    assert {frozen.conversions.state(c)[0] for c in retriggered} == {"queued"}


async def test_retrigger_errors_and_arguments(frozen: FakeApiServer, fzoo: aj.ZooClient) -> None:
    dataset = frozen.conversions.add_dataset()
    conversion = frozen.conversions.add_conversion(dataset, [("success", None)])
    with pytest.raises(aj.NotFoundError):
        await fzoo.retrigger_conversion(dataset, str(uuid.uuid4()))
    with pytest.raises(aj.NotFoundError):
        await fzoo.retrigger_conversion(str(uuid.uuid4()), conversion.id)
    with pytest.raises(aj.NotFoundError):
        await fzoo.retrigger_dataset(str(uuid.uuid4()))
    with pytest.raises(aj.BadRequestError, match="invalid statuses"):
        await fzoo.retrigger_dataset(dataset, ["success", "sparkling"])
    sent = len(frozen.requests)
    for statuses in ([], ["success", ""], ["a,b"], "success,,error_user"):
        with pytest.raises(ValueError, match="status"):
            await fzoo.retrigger_dataset(dataset, statuses)
    with pytest.raises(ValueError):
        await fzoo.retrigger_conversion(dataset, "")
    assert len(frozen.requests) == sent  # checked before any request
    await fzoo.retrigger_dataset(dataset, "success,error_user")  # a str is the list itself
    assert frozen.requests[-1].query == {"statuses": "success,error_user"}
    assert conversion.retriggers == 1 and frozen.conversions.dataset_retriggers[dataset] == 1


# -- operations: ascending by default, out-of-order streams detected --------------------------


async def test_operations_are_listed_ascending_by_default(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    created = [server.zoo.add_operation(timeline=[("completed", None)]).id for _ in range(5)]
    page = await zoo.list_async_operations()
    assert server.requests[-1].query["sort_by"] == "created_at_ascending"
    assert [op.id for op in page.items] == created
    got = [op.id async for op in zoo.iter_async_operations(limit=2)]
    assert got == created
    assert {r.query["sort_by"] for r in server.requests} == {"created_at_ascending"}


@pytest.mark.parametrize(
    ("status", "limit"),
    [("completed", 100), ("completed", 1), (None, 2)],
    ids=["within-a-page", "across-pages", "merged-streams"],
)
async def test_a_server_ignoring_descending_is_a_decode_error_naming_the_sort(
    server: FakeApiServer, zoo: aj.ZooClient, status: str | None, limit: int
) -> None:
    for _ in range(3):
        server.zoo.add_operation(timeline=[("completed", None)])
        server.zoo.add_operation(timeline=[("failed", None)])
    descending = [
        op.id
        async for op in zoo.iter_async_operations(
            status, sort_by="created_at_descending", limit=limit
        )
    ]
    assert len(descending) == (3 if status else 6)
    server.zoo.options.ascending_only = True  # the real server may answer ascending regardless
    with pytest.raises(aj.DecodeError, match="created_at_descending") as raised:
        async for _ in zoo.iter_async_operations(
            status, sort_by="created_at_descending", limit=limit
        ):
            pass
    assert "operations came back out of created_at_descending order" in str(raised.value)
    ascending = [op.id async for op in zoo.iter_async_operations(status, limit=limit)]
    assert ascending == list(reversed(descending))


# -- CLI -------------------------------------------------------------------------------------


def _cli_args(server: FakeApiServer, *argv: str) -> argparse.Namespace:
    args = cli.build_parser().parse_args([*argv, "--base-url", server.url])
    args.token_file = None
    args.client = partial(aj.ZooClient, poll=FAST_POLL, retry=FAST_RETRY, timeout=5)
    return args


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_cli_datasets_stats_and_wait(
    frozen: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOO_API_TOKEN", TOKEN)
    dataset = _dataset_of(frozen, 40, failing=1)
    stream = io.StringIO()
    assert (
        await cli.get_job(
            _cli_args(frozen, "zoo", "datasets", "stats", dataset), JsonOutput(stream)
        )
        == 0
    )
    (record,) = _records(stream)
    assert (record["event"], record["kind"], record["id"]) == ("job", "zoo.dataset", dataset)
    assert record["state"] == "running" and record["progress"] == 0.0
    assert record["job"]["by_status"] == {"queued": 40} and record["job"]["total"] == 40
    assert record["status"] == "queued 40"

    console = rich_console.Console(record=True, width=160, file=io.StringIO(), color_system=None)
    args = _cli_args(frozen, "zoo", "datasets", "stats", dataset)
    await args.handler(args, RichOutput(console=console))
    text = console.export_text()
    for row in ("by_status.queued", "total", "successes", "failures"):
        assert row in text

    frozen.clock.advance(10)  # half the conversions are done
    stream = io.StringIO()
    args = _cli_args(frozen, "zoo", "datasets", "wait", dataset, "--timeout", "30")
    with ticking(frozen, 1.0):
        assert await args.handler(args, JsonOutput(stream)) == cli.EXIT_FAILED  # one failed
    records = _records(stream)
    assert {r["id"] for r in records} == {dataset}  # one job: the whole dataset
    progress = [r["progress"] for r in records]
    assert progress == sorted(progress) and progress[0] == 0.5 and progress[-1] == 1.0
    assert records[-1]["event"] == "final" and records[-1]["error"] == "1 of 40 conversions failed"

    console = rich_console.Console(record=True, width=160, file=io.StringIO(), color_system=None)
    args = _cli_args(frozen, "zoo", "datasets", "wait", dataset)
    assert await args.handler(args, RichOutput(console=console)) == cli.EXIT_FAILED
    bars = [line for line in console.export_text().splitlines() if line.startswith("dataset")]
    assert len(bars) == 1 and "failed (1 of 40 conversions failed)" in bars[0]


async def test_cli_conversions_retrigger(
    frozen: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZOO_API_TOKEN", TOKEN)
    dataset = frozen.conversions.add_dataset()
    one = frozen.conversions.add_conversion(dataset, [("error_user", None)])
    two = frozen.conversions.add_conversion(dataset, [("canceled", None)])
    stream = io.StringIO()
    args = _cli_args(frozen, "zoo", "conversions", "retrigger", dataset, one.id)
    assert await args.handler(args, JsonOutput(stream)) == cli.EXIT_OK
    args = _cli_args(frozen, "zoo", "conversions", "retrigger", dataset, "--statuses", "canceled")
    assert await args.handler(args, JsonOutput(stream)) == cli.EXIT_OK
    assert _records(stream) == [
        {"event": "retriggered", "dataset_id": dataset, "conversion_id": one.id, "statuses": None},
        {
            "event": "retriggered",
            "dataset_id": dataset,
            "conversion_id": None,
            "statuses": ["canceled"],
        },
    ]
    assert (one.retriggers, two.retriggers) == (1, 1)
    assert [r.path.rsplit("/", 2)[-2] for r in _posts(frozen, "/retrigger")] == [one.id, dataset]
    assert frozen.requests[-1].query == {"statuses": "canceled"}
    console = rich_console.Console(record=True, width=160, file=io.StringIO(), color_system=None)
    args = _cli_args(frozen, "zoo", "conversions", "retrigger", dataset)
    assert await args.handler(args, RichOutput(console=console)) == cli.EXIT_OK
    assert "statuses" not in frozen.requests[-1].query
    assert f"retriggered conversions of dataset {dataset}" in console.export_text()
    sent = len(frozen.requests)
    args = _cli_args(frozen, "zoo", "conversions", "retrigger", dataset, one.id, "--statuses", "x")
    with pytest.raises(ValueError, match="--statuses"):
        await args.handler(args, JsonOutput(io.StringIO()))
    assert len(frozen.requests) == sent
