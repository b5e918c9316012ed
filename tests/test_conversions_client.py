"""Dataset conversions end to end: ZooClient, JobRef and the poller against FakeApiServer."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from itertools import pairwise

import pytest

import async_jobs as aj
from async_jobs.models.zoo import CONVERSION_PHASES, CONVERSION_SORT_MODES, CONVERSION_STATUSES
from async_jobs.testing import FakeApiServer

from .conftest import TOKEN, client_tasks

pytestmark = pytest.mark.anyio

#: A step long enough that only the test moves the fake clock past it.
STEP = 1000.0
FINAL_STATUSES = ["success", "canceled", "error_user", "error_geometry_mismatch", "queued"]


def _stepper(server: FakeApiServer, seen: list[aj.DatasetConversion]) -> Callable[..., None]:
    """An on_update that records each conversion and moves the fake clock one step on."""

    def step(conv: aj.DatasetConversion) -> None:
        seen.append(conv)
        server.clock.advance(STEP)

    return step


def _populate(server: FakeApiServer, dataset_id: str, count: int) -> dict[str, tuple[str, str]]:
    """``count`` conversions parked in assorted statuses and phases; id -> (status, phase)."""
    rng = random.Random(11)
    truth = {}
    for n in range(count):
        status = rng.choice([*FINAL_STATUSES, "in_progress"])
        phase = "completed" if status == "success" else rng.choice(CONVERSION_PHASES[:-1])
        fake = server.conversions.add_conversion(
            dataset_id,
            [(status, phase, None)],
            file_path=f"{rng.choice(['gears', 'brackets'])}/part-{n:04d}.step",
        )
        truth[fake.id] = (status, phase)
    return truth


async def test_get_dataset_conversion(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(
        dataset,
        [("success", None)],
        manual_kcl_override="const part = startSketchOn(XY)",
        metadata={"owner": "cad-team"},
    )
    conv = await zoo.get_dataset_conversion(dataset, fake.id)
    assert isinstance(conv, aj.DatasetConversion)
    assert (conv.id, conv.dataset_id, conv.status, conv.phase) == (
        fake.id,
        dataset,
        "success",
        "completed",
    )
    assert conv.job_state is aj.JobState.SUCCEEDED and conv.progress == 1.0
    assert conv.output and conv.raw_kcl_output and conv.salon_kcl_output
    assert conv.raw_kcl_similarity_score is not None
    assert conv.salon_kcl_snapshot_images[0].data.startswith(b"\x89PNG")
    assert conv.manual_kcl_override_active and conv.manual_kcl_override
    assert conv.metadata == {"owner": "cad-team"}
    assert conv.created_at is not None and conv.created_at.tzinfo is not None
    request = server.requests[-1]
    assert request.path == f"/org/datasets/{dataset}/conversions/{fake.id}"
    assert request.authorization == f"Bearer {TOKEN}"


async def test_unknown_conversion_or_dataset_is_not_found(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    dataset = server.conversions.add_dataset()
    other = server.conversions.add_conversion(server.conversions.add_dataset())
    with pytest.raises(aj.NotFoundError) as info:
        await zoo.get_dataset_conversion(dataset, str(uuid.uuid4()))
    assert info.value.code == "not_found" and info.value.request_id
    with pytest.raises(aj.NotFoundError):
        await zoo.get_dataset_conversion(dataset, other.id)  # belongs to another dataset
    with pytest.raises(aj.NotFoundError):
        await zoo.list_dataset_conversions(str(uuid.uuid4()))
    with pytest.raises(aj.NotFoundError):
        await aj.wait_until_terminal(zoo.dataset_conversion(dataset, str(uuid.uuid4())), timeout=5)


async def test_walks_every_live_phase_with_rising_progress(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    dataset = server.conversions.add_dataset()
    walk = [(phase, STEP) for phase in CONVERSION_PHASES[:-1]] + [("completed", None)]
    fake = server.conversions.add_conversion(dataset, walk)
    seen: list[aj.DatasetConversion] = []
    final = await aj.wait_until_terminal(
        zoo.dataset_conversion(dataset, fake.id), timeout=10, on_update=_stepper(server, seen)
    )
    assert [c.phase for c in seen] == list(CONVERSION_PHASES)
    assert [c.phase_index for c in seen] == list(range(12))
    progress = [c.progress for c in seen]
    assert progress[0] == 0.0 and progress[-1] == 1.0
    assert all(a is not None and b is not None and a < b for a, b in pairwise(progress))
    assert [c.status for c in seen] == ["queued"] + ["in_progress"] * 10 + ["success"]
    assert final.job_state is aj.JobState.SUCCEEDED
    assert final.output is not None and final.salon_kcl_snapshot_images


async def test_real_time_walk_reports_monotone_progress(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(dataset, manual_kcl_override="// by hand")
    progress: list[float | None] = []
    final = await aj.wait_until_terminal(
        zoo.dataset_conversion(dataset, fake.id),
        timeout=10,
        on_update=lambda c: progress.append(c.progress),
    )
    assert final.status == "success" and final.manual_kcl_override == "// by hand"
    assert None not in progress and progress[-1] == 1.0
    assert progress == sorted(progress)  # type: ignore[type-var]


async def test_geometry_mismatch_ends_the_wait_failed(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(
        dataset,
        [
            ("queued", STEP),
            ("convert_raw_kcl", STEP),
            ("snapshot_raw_kcl", STEP),
            ("error_geometry_mismatch", None),
        ],
        error="raw KCL diverged from the source model",
    )
    seen: list[aj.DatasetConversion] = []
    ref = zoo.dataset_conversion(dataset, fake.id)
    final = await aj.wait_until_terminal(ref, timeout=10, on_update=_stepper(server, seen))
    assert [c.status for c in seen] == [
        "queued",
        "in_progress",
        "in_progress",
        "error_geometry_mismatch",
    ]
    assert final.job_state is aj.JobState.FAILED and final.is_terminal
    assert final.error == "raw KCL diverged from the source model"
    assert final.progress == 1.0 and final.phase == "snapshot_raw_kcl"
    assert final.raw_kcl_output is not None and final.salon_kcl_output is None
    with pytest.raises(aj.JobFailed) as info:
        await aj.wait_until_terminal(ref, timeout=10, raise_on_failure=True)
    assert info.value.job.id == fake.id
    assert "raw KCL diverged" in str(info.value)


async def test_unknown_status_then_success(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(
        dataset, [("salon", STEP), ("paused", STEP), ("success", None)]
    )
    seen: list[aj.DatasetConversion] = []
    final = await aj.wait_until_terminal(
        zoo.dataset_conversion(dataset, fake.id), timeout=10, on_update=_stepper(server, seen)
    )
    assert [(c.status, c.job_state) for c in seen] == [
        ("in_progress", aj.JobState.RUNNING),
        ("paused", aj.JobState.UNKNOWN),
        ("success", aj.JobState.SUCCEEDED),
    ]
    assert seen[1].phase == "salon" and seen[1].progress == seen[0].progress
    assert final.status == "success"


async def test_unknown_phase_keeps_waiting(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(
        dataset,
        [
            ("snapshot_original", STEP),
            ("in_progress", "mesh_repair", STEP),
            ("salon", STEP),
            ("completed", None),
        ],
    )
    seen: list[aj.DatasetConversion] = []
    final = await aj.wait_until_terminal(
        zoo.dataset_conversion(dataset, fake.id), timeout=10, on_update=_stepper(server, seen)
    )
    assert [c.phase for c in seen] == ["snapshot_original", "mesh_repair", "salon", "completed"]
    # DESIGN.md: an unknown phase keeps the last known progress in everything a wait reports.
    assert seen[1].phase_index is None and seen[1].job_state is aj.JobState.RUNNING
    assert seen[0].progress is not None and seen[1].progress == seen[0].progress
    progress = [conv.progress for conv in seen]
    assert None not in progress and progress == sorted(progress)
    assert final.job_state is aj.JobState.SUCCEEDED


async def test_retry_back_to_queued_is_reported_and_resolved(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(
        dataset,
        [
            ("queued", STEP),
            ("convert_raw_kcl", STEP),
            ("queued", STEP),  # the worker was dropped: the server queues it again
            ("convert_raw_kcl", STEP),
            ("salon", STEP),
            ("completed", None),
        ],
    )
    seen: list[aj.DatasetConversion] = []
    final = await aj.wait_until_terminal(
        zoo.dataset_conversion(dataset, fake.id), timeout=10, on_update=_stepper(server, seen)
    )
    assert [c.status for c in seen] == [
        "queued",
        "in_progress",
        "queued",
        "in_progress",
        "in_progress",
        "success",
    ]
    assert [c.job_state for c in seen][:3] == [
        aj.JobState.PENDING,
        aj.JobState.RUNNING,
        aj.JobState.PENDING,
    ]
    assert seen[2].progress == 0.0 and seen[2].started_at is None  # a new run, not started yet
    assert seen[3].started_at is not None and seen[3].started_at > seen[1].started_at  # type: ignore[operator]
    assert final.job_state is aj.JobState.SUCCEEDED


async def test_canceled_is_canceled(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(dataset, [("queued", STEP), ("canceled", None)])
    seen: list[aj.DatasetConversion] = []
    final = await aj.wait_until_terminal(
        zoo.dataset_conversion(dataset, fake.id), timeout=10, on_update=_stepper(server, seen)
    )
    assert [c.job_state for c in seen] == [aj.JobState.PENDING, aj.JobState.CANCELED]
    assert final.is_terminal and final.error is None and final.completed_at is not None
    with pytest.raises(aj.JobFailed):
        await aj.wait_until_terminal(
            zoo.dataset_conversion(dataset, fake.id), timeout=10, raise_on_failure=True
        )


async def test_cancel_during_the_wait(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(dataset, [("salon", None)])

    def cancel(conv: aj.DatasetConversion) -> None:
        if conv.status == "in_progress":
            server.conversions.cancel(fake.id)

    final = await aj.wait_until_terminal(
        zoo.dataset_conversion(dataset, fake.id), timeout=10, on_update=cancel
    )
    assert final.job_state is aj.JobState.CANCELED and final.phase == "salon"
    assert server.conversions.state(fake.id) == ("canceled", "salon")


async def test_wait_survives_transient_trouble(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(dataset, [("salon", 0.05), ("completed", None)])
    route = f"/org/datasets/{dataset}/conversions/{fake.id}"
    server.inject("status", status=503, times=6, route=route)
    server.inject("malformed", times=2, route=route)
    server.inject("truncated", times=1, route=route)
    final = await aj.wait_until_terminal(zoo.dataset_conversion(dataset, fake.id), timeout=10)
    assert final.status == "success"
    assert all(f.hits == f.times for f in server.faults.faults)


async def test_job_ref_identity(zoo: aj.ZooClient) -> None:
    ref = zoo.dataset_conversion("ds", "c1")
    assert (ref.kind, ref.ids, ref.key) == (
        "zoo.dataset_conversion",
        ("ds", "c1"),
        "zoo.dataset_conversion:ds/c1",
    )
    assert ref == zoo.dataset_conversion("ds", "c1") != zoo.dataset_conversion("ds", "c2")
    with pytest.raises(ValueError):
        zoo.dataset_conversion("", "c1")
    with pytest.raises(ValueError):
        zoo.dataset_conversion("ds", "")


# -- listing -----------------------------------------------------------------------------------


def _expected_order(
    truth: dict[str, tuple[str, str]], created: list[str], sort_by: str
) -> list[tuple[int, ...]]:
    """The sort key sequence a listing in ``sort_by`` order must follow (ties: any order)."""
    field = sort_by.rsplit("_", 1)[0]
    keys = []
    for conv_id in created:
        status, phase = truth[conv_id]
        if field == "status":
            keys.append((CONVERSION_STATUSES.index(status),))
        elif field == "phase":
            keys.append((CONVERSION_PHASES.index(phase),))
        else:
            keys.append((created.index(conv_id),))
    return sorted(keys, reverse=sort_by.endswith("descending"))


@pytest.mark.parametrize("sort_by", CONVERSION_SORT_MODES)
async def test_iter_every_sort_mode_without_loss_or_duplicates(
    server: FakeApiServer, zoo: aj.ZooClient, sort_by: str
) -> None:
    dataset = server.conversions.add_dataset()
    truth = _populate(server, dataset, 60)
    created = list(truth)
    seen = [c async for c in zoo.iter_dataset_conversions(dataset, sort_by=sort_by, limit=7)]
    ids = [c.id for c in seen]
    assert len(ids) == len(set(ids)) == 60
    assert {c.id: (c.status, c.phase) for c in seen} == truth
    field = sort_by.rsplit("_", 1)[0]
    if field == "status":
        got = [(CONVERSION_STATUSES.index(c.status),) for c in seen]
    elif field == "phase":
        got = [(CONVERSION_PHASES.index(c.phase or ""),) for c in seen]
    else:
        got = [(created.index(c.id),) for c in seen]
    assert got == _expected_order(truth, created, sort_by)
    lists = [r for r in server.requests if r.path == f"/org/datasets/{dataset}/conversions"]
    assert len(lists) == -(-60 // 7)
    assert all(r.query["sort_by"] == sort_by and r.query["limit"] == "7" for r in lists)
    tokens = [r.query["page_token"] for r in lists[1:]]
    assert tokens and all(set("+/=&") <= set(t) for t in tokens)  # opaque, arrived intact


async def test_filter_phase_and_q(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    dataset = server.conversions.add_dataset()
    truth = _populate(server, dataset, 80)
    successes = {k for k, (s, _) in truth.items() if s == "success"}
    got = [c.id async for c in zoo.iter_dataset_conversions(dataset, filter="status:success")]
    assert set(got) == successes and len(got) == len(successes)
    at_salon = {k for k, (_, p) in truth.items() if p == "salon"}
    got = [c.id async for c in zoo.iter_dataset_conversions(dataset, phase="salon", limit=3)]
    assert set(got) == at_salon and len(got) == len(at_salon)
    gears = [c async for c in zoo.iter_dataset_conversions(dataset, q="GEARS/", limit=5)]
    assert gears and all(c.file_path and c.file_path.startswith("gears/") for c in gears)
    assert len(gears) == sum(
        1 for r in server.conversions.datasets[dataset].values() if r.file_path.startswith("gears/")
    )
    one = next(iter(truth))
    by_id = await zoo.list_dataset_conversions(dataset, q=one[:13])
    assert one in {c.id for c in by_id.items}
    both = [
        c
        async for c in zoo.iter_dataset_conversions(
            dataset, filter="status:in_progress", phase="salon", q="part-", limit=2
        )
    ]
    assert {c.id for c in both} == {k for k, v in truth.items() if v == ("in_progress", "salon")}
    request = server.requests[-1]
    assert (request.query["filter"], request.query["phase"], request.query["q"]) == (
        "status:in_progress",
        "salon",
        "part-",
    )


async def test_list_one_page_and_follow(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    dataset = server.conversions.add_dataset()
    _populate(server, dataset, 12)
    page = await zoo.list_dataset_conversions(dataset, sort_by="created_at_ascending", limit=5)
    assert len(page.items) == 5 and page.next_page is not None
    follow = await zoo.list_dataset_conversions(
        dataset, sort_by="created_at_ascending", limit=5, page_token=page.next_page
    )
    assert {c.id for c in follow.items}.isdisjoint(c.id for c in page.items)
    assert server.requests[-1].query["page_token"] == page.next_page
    # Summaries carry no outputs or images; the detail does.
    assert all(c.output is None and c.raw_kcl_snapshot_images == () for c in page.items)
    with pytest.raises(aj.BadRequestError):  # a token is bound to its query
        await zoo.list_dataset_conversions(dataset, limit=5, page_token=page.next_page)


async def test_max_items_and_early_exit_leave_no_task(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    dataset = server.conversions.add_dataset()
    _populate(server, dataset, 40)
    first = [c async for c in zoo.iter_dataset_conversions(dataset, limit=4, max_items=10)]
    assert len(first) == 10
    stamps = [c.created_at for c in first]
    assert stamps == sorted(stamps, reverse=True)  # type: ignore[type-var]
    before = client_tasks()
    iterator = zoo.iter_dataset_conversions(dataset, limit=3)
    async for _ in iterator:
        break
    await iterator.aclose()
    assert client_tasks() == before


async def test_page_token_reaches_server_byte_for_byte(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    dataset = server.conversions.add_dataset()
    with pytest.raises(aj.BadRequestError):
        await zoo.list_dataset_conversions(
            dataset, page_token="a+b&c=d/==", q="x y&z=1+2", filter="status:success"
        )
    query = server.requests[-1].query
    assert query["page_token"] == "a+b&c=d/=="
    assert query["q"] == "x y&z=1+2"
    assert query["filter"] == "status:success"
    assert set(query) == {"page_token", "q", "filter", "sort_by"}


async def test_ids_are_single_path_segments(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    server.conversions.options.uuid_ids = False  # the real ids are UUIDs; any id is encoded
    fake = server.conversions.add_conversion("a/b", [("success", None)], id="c?d=1#e")
    conv = await zoo.get_dataset_conversion("a/b", "c?d=1#e")
    assert (conv.dataset_id, conv.id) == ("a/b", "c?d=1#e")
    assert server.requests[-1].path == "/org/datasets/a/b/conversions/c?d=1#e"  # decoded
    page = await zoo.list_dataset_conversions("a/b")
    assert [c.id for c in page.items] == [fake.id]


@pytest.mark.parametrize(
    "call",
    [
        lambda z: z.list_dataset_conversions("ds", sort_by=""),
        lambda z: z.list_dataset_conversions("ds", sort_by=3),
        lambda z: z.list_dataset_conversions("ds", limit=0),
        lambda z: z.list_dataset_conversions("ds", limit=True),
        lambda z: z.list_dataset_conversions("ds", limit=2.5),
        lambda z: z.list_dataset_conversions("ds", filter=""),
        lambda z: z.list_dataset_conversions("ds", filter=["status:success"]),
        lambda z: z.list_dataset_conversions("ds", q=3),
        lambda z: z.list_dataset_conversions("ds", phase=""),
        lambda z: z.list_dataset_conversions("ds", page_token=""),
        lambda z: z.list_dataset_conversions(""),
        lambda z: z.get_dataset_conversion("ds", ""),
        lambda z: z.get_dataset_conversion(None, "c"),
    ],
)
async def test_bad_arguments_raise_before_any_request(
    server: FakeApiServer, zoo: aj.ZooClient, call: object
) -> None:
    with pytest.raises(ValueError):
        await call(zoo)  # type: ignore[operator]
    assert server.requests == []


async def test_bad_iter_arguments_raise_at_call_time(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    for kwargs in (
        {"sort_by": ""},
        {"limit": -1},
        {"max_items": -1},
        {"filter": ""},
        {"phase": 4},
        {"q": b"bytes"},
    ):
        with pytest.raises(ValueError):
            zoo.iter_dataset_conversions("ds", **kwargs)
    with pytest.raises(ValueError):
        zoo.iter_dataset_conversions("")
    assert server.requests == []
