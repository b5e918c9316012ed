"""The fake's Zoo bodies match the spec's schemas field for field (what the official SDK's
models, which forbid extra fields, parse: tests/test_vendor_sdk_*.py). Needs no SDK, so it runs
on every Python version, 3.10 included, where kittycad 1.x cannot be installed."""

from __future__ import annotations

import uuid

from async_jobs.testing import FakeApiServer

from ._specs import zoo_schema


def test_fake_list_item_matches_the_spec_schema() -> None:
    """``AsyncApiCall`` (the list item): every required field present, nothing unknown."""
    schema = zoo_schema("AsyncApiCall")
    fake = FakeApiServer()
    item = fake.zoo.list_item(fake.zoo.add_operation("file_volume", [("completed", None)]))
    assert set(schema["required"]) <= set(item)
    assert set(item) <= set(schema["properties"])


def test_fake_bodies_match_the_spec_schemas() -> None:
    """Summary and details: every required field present, nothing the schema lacks (the SDK
    models forbid extra fields)."""
    summary_schema = zoo_schema("OrgDatasetFileConversionSummary")
    detail_schema = zoo_schema("OrgDatasetFileConversionDetails")
    image_schema = zoo_schema("OrgDatasetSnapshotImage")
    fake = FakeApiServer()
    dataset = str(uuid.uuid4())
    for timeline in ([("queued", None)], [("success", None)], [("error_user", None)]):
        conversion = fake.conversions.add_conversion(dataset, timeline)
        summary = fake.conversions.summary(conversion)
        assert set(summary_schema["required"]) <= set(summary)
        assert set(summary) == set(summary_schema["properties"])
        detail = fake.conversions.detail(conversion)
        assert set(detail_schema["required"]) <= set(detail)
        assert set(detail) == set(detail_schema["properties"])
        for image in detail["raw_kcl_snapshot_images"]:
            assert set(image) == set(image_schema["properties"])


def test_fake_stats_body_matches_the_spec_schema() -> None:
    schema = zoo_schema("OrgDatasetConversionStatsResponse")
    fake = FakeApiServer()
    dataset = fake.conversions.add_dataset()
    fake.conversions.add_conversion(dataset, [("error_user", None)])
    body = fake.conversions.stats(dataset)
    assert set(schema["required"]) <= set(body) and set(body) == set(schema["properties"])
    assert all(isinstance(count, int) for count in body["by_status"].values())
