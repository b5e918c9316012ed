"""The fake's dataset conversions speak the real wire format: the official kittycad SDK lists
and gets them, and the shapes match the spec's schemas field for field."""

from __future__ import annotations

import inspect
import uuid

import kittycad
import msgspec
import pytest

import async_jobs as aj
from async_jobs.models.zoo import (
    CONVERSION_PHASES,
    CONVERSION_SORT_MODES,
    CONVERSION_STATUSES,
    OPERATION_SORT_MODES,
)
from async_jobs.testing import FakeApiServer

from .conftest import FAST_RETRY, TOKEN

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ("queued", "queued"),
        ("in_progress", "manual_kcl_override"),
        ("in_progress", "snapshot_salon_kcl"),
        ("success", "completed"),
        ("canceled", "salon"),
        *((status, "snapshot_raw_kcl") for status in CONVERSION_STATUSES[4:]),
    ],
)
async def test_sdk_gets_a_conversion_from_the_fake(
    server: FakeApiServer, status: str, phase: str
) -> None:
    dataset = server.conversions.add_dataset()
    fake = server.conversions.add_conversion(
        dataset,
        [(status, phase, None)],
        error="it broke",
        manual_kcl_override="// by hand" if phase == "manual_kcl_override" else None,
        metadata={"owner": "cad-team"},
    )
    client = kittycad.AsyncKittyCAD(token=TOKEN, base_url=server.url)
    try:
        details = await client.orgs.get_org_dataset_conversion(id=dataset, conversion_id=fake.id)
    finally:
        await client.get_http_client().aclose()
    assert str(details.id) == fake.id and str(details.dataset_id) == dataset
    assert details.status == status and details.phase == phase  # str enums
    assert details.created_at.tzinfo is not None and details.updated_at.tzinfo is not None
    assert details.manual_kcl_override_active == (phase == "manual_kcl_override")
    if status.startswith("error_"):
        assert details.status_message == "it broke"
    if status == "success":
        assert details.output and details.salon_kcl_snapshot_images
        assert bytes(details.salon_kcl_snapshot_images[0].data_base64).startswith(b"\x89PNG")


async def test_sdk_lists_conversions_from_the_fake(server: FakeApiServer) -> None:
    dataset = server.conversions.add_dataset()
    wanted = {server.conversions.add_conversion(dataset, [("success", None)]).id for _ in range(4)}
    server.conversions.add_conversion(dataset, [("error_user", None)])
    server.conversions.add_conversion(dataset, [("in_progress", "salon", None)])
    client = kittycad.AsyncKittyCAD(token=TOKEN, base_url=server.url)
    try:
        everything = [i async for i in client.orgs.list_org_dataset_conversions(id=dataset)]
        successes = [
            i
            async for i in client.orgs.list_org_dataset_conversions(
                id=dataset, filter="status:success", sort_by="updated_at_ascending", limit=50
            )
        ]
        salon = [
            i
            async for i in client.orgs.list_org_dataset_conversions(
                id=dataset, phase="salon", q="part-"
            )
        ]
    finally:
        await client.get_http_client().aclose()
    assert len(everything) == 6
    assert {str(i.id) for i in successes} == wanted
    assert all(i.phase == "completed" for i in successes)
    assert [i.status for i in salon] == ["in_progress"]


async def test_sdk_breaks_multi_page_tokens_that_our_client_keeps(server: FakeApiServer) -> None:
    """DESIGN: the official client does not URL-encode page tokens. The fake's tokens carry
    ``+ & / =``, so the SDK's second page request reaches the server corrupted; ours does not."""
    dataset = server.conversions.add_dataset()
    for _ in range(5):
        server.conversions.add_conversion(dataset, [("success", None)])
    client = kittycad.AsyncKittyCAD(token=TOKEN, base_url=server.url)
    try:
        got = [i async for i in client.orgs.list_org_dataset_conversions(id=dataset, limit=2)]
    except kittycad.exceptions.KittyCADAPIError as exc:
        (first, second) = server.requests[-2:]
        assert "invalid page_token" in str(exc)
        assert "page_token" not in first.query
        assert "&" not in second.query["page_token"]  # cut at the first '&'
    else:  # a later SDK encodes its tokens: then it must see everything
        assert len(got) == 5
    finally:
        await client.get_http_client().aclose()
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY, timeout=5) as zoo:
        ours = [c async for c in zoo.iter_dataset_conversions(dataset, limit=2)]
    assert len({c.id for c in ours}) == 5


def test_our_tables_match_the_sdk_enums() -> None:
    from kittycad.models.conversion_sort_mode import ConversionSortMode
    from kittycad.models.org_dataset_file_conversion_phase import OrgDatasetFileConversionPhase
    from kittycad.models.org_dataset_file_conversion_status import (
        OrgDatasetFileConversionStatus,
    )

    assert list(CONVERSION_PHASES) == [p.value for p in OrgDatasetFileConversionPhase]
    assert list(CONVERSION_STATUSES) == [s.value for s in OrgDatasetFileConversionStatus]
    assert list(CONVERSION_SORT_MODES) == [m.value for m in ConversionSortMode]


# -- whole datasets: stats and retriggers (issue 15) -----------------------------------------


async def test_sdk_reads_the_fakes_dataset_stats(server: FakeApiServer) -> None:
    from kittycad.models.org_dataset_conversion_stats_response import (
        OrgDatasetConversionStatsResponse,
    )

    dataset = server.conversions.add_dataset()
    empty = server.conversions.add_dataset()
    for timeline in (
        [("success", None)],
        [("success", None)],
        [("error_user", None)],
        [("error_geometry_mismatch", None)],
        [("in_progress", "salon", None)],
        [("canceled", None)],
    ):
        server.conversions.add_conversion(dataset, timeline)
    client = kittycad.AsyncKittyCAD(token=TOKEN, base_url=server.url)
    try:
        stats = await client.orgs.get_org_dataset_conversion_stats(id=dataset)
        none = await client.orgs.get_org_dataset_conversion_stats(id=empty)
    finally:
        await client.get_http_client().aclose()
    assert isinstance(stats, OrgDatasetConversionStatsResponse)
    assert str(stats.dataset_id) == dataset
    assert (stats.total, stats.successes, stats.failures) == (6, 2, 2)
    assert stats.by_status == {
        "success": 2,
        "error_user": 1,
        "error_geometry_mismatch": 1,
        "in_progress": 1,
        "canceled": 1,
    }
    assert (none.total, none.by_status) == (0, {})
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY, timeout=5) as zoo:
        ours = await zoo.get_dataset_stats(dataset)
    assert msgspec.to_builtins(ours) == stats.model_dump(mode="json")  # field for field


async def test_sdk_retriggers_on_the_fake(server: FakeApiServer) -> None:
    dataset = server.conversions.add_dataset()
    failed = server.conversions.add_conversion(dataset, [("error_user", None)])
    gone = server.conversions.add_conversion(dataset, [("canceled", None)])
    done = server.conversions.add_conversion(dataset, [("success", None)])
    client = kittycad.AsyncKittyCAD(token=TOKEN, base_url=server.url)
    try:
        one = await client.orgs.retrigger_org_dataset_conversion(
            id=dataset, conversion_id=failed.id
        )
        some = await client.orgs.retrigger_org_dataset(id=dataset, statuses="canceled,success")
        with pytest.raises(kittycad.exceptions.KittyCADAPIError):
            await client.orgs.retrigger_org_dataset(id=str(uuid.uuid4()))
    finally:
        await client.get_http_client().aclose()
    assert one is None and some is None  # 204, no body
    assert [c.retriggers for c in (failed, gone, done)] == [1, 1, 1]
    posts = [r for r in server.requests if r.method == "POST"]
    assert [r.query for r in posts[:2]] == [{}, {"statuses": "canceled,success"}]


def test_our_operation_sort_modes_match_the_sdk_enum() -> None:
    """``CreatedAtSortMode``: the library's default, ``created_at_ascending``, is the first."""
    from kittycad.models.created_at_sort_mode import CreatedAtSortMode

    assert list(OPERATION_SORT_MODES) == [m.value for m in CreatedAtSortMode]
    assert (
        inspect.signature(aj.ZooClient.iter_async_operations).parameters["sort_by"].default
        == OPERATION_SORT_MODES[0]
    )
