"""Decoding Zoo dataset conversions: seed and spec bodies, the state table, phases, progress."""

from __future__ import annotations

import base64
import json
import logging
from datetime import timezone
from itertools import pairwise
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import async_jobs as aj
from async_jobs.models.zoo import (
    CONVERSION_ERROR_PREFIX,
    CONVERSION_PHASES,
    CONVERSION_SORT_MODES,
    CONVERSION_STATES,
    CONVERSION_STATUSES,
    conversion_state,
)

from ._specs import zoo_schema

#: The seed doc's phase order, index 0-10 (no manual_kcl_override).
SEED_PHASES = (
    "queued",
    "zoo_generated_original_metadata",
    "snapshot_original",
    "user_provided_metadata",
    "convert_raw_kcl",
    "zoo_generated_raw_kcl_metadata",
    "snapshot_raw_kcl",
    "salon",
    "zoo_generated_salon_kcl_metadata",
    "snapshot_salon_kcl",
    "completed",
)
SEED_STATUSES = (
    "queued",
    "canceled",
    "in_progress",
    "success",
    "error_user",
    "error_unsupported",
    "error_internal",
)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()

#: Every field of the seed doc and of OrgDatasetFileConversionDetails, plus one unknown.
DETAIL = {
    "completed_at": "2025-03-01T10:00:05Z",
    "created_at": "2025-03-01T10:00:00Z",
    "dataset_id": "6f1c2d1e-7b0f-4a7c-9c55-0b4ad1c0de01",
    "file_etag": '"9b2cf535f27731c974343645a3985328"',
    "file_path": "brackets/l-bracket.step",
    "file_size": 48213,
    "id": "a3e0c1b2-5d6f-4e78-9a0b-1c2d3e4f5a6b",
    "importer_version": "kcl-importer 0.9.3",
    "manual_kcl_override": "const part = startSketchOn(XY)",
    "manual_kcl_override_active": True,
    "manual_kcl_override_updated_at": "2025-02-28T09:00:00Z",
    "metadata": {"source": "upload", "owner": "cad-team"},
    "original_snapshot_images": [{"data_base64": PNG, "mime_type": "image/png"}],
    "output": "const bracket = startSketchOn(XY)",
    "phase": "completed",
    "raw_kcl_output": "const raw = startSketchOn(XY)",
    "raw_kcl_similarity_score": 0.97,
    "raw_kcl_snapshot_images": [{"data_base64": PNG, "mime_type": "image/png"}],
    "salon_kcl_output": "const bracket = startSketchOn(XY)",
    "salon_kcl_similarity_score": 0.99,
    "salon_kcl_snapshot_images": [
        {"data_base64": PNG, "mime_type": "image/png"},
        {"data_base64": PNG, "mime_type": "image/webp"},
    ],
    "started_at": "2025-03-01T10:00:01Z",
    "status": "success",
    "status_message": None,
    "updated_at": "2025-03-01T10:00:05Z",
    "a_field_from_the_future": {"nested": [1, 2, 3]},
}
SUMMARY_KEYS = (
    "completed_at",
    "created_at",
    "dataset_id",
    "file_etag",
    "file_path",
    "file_size",
    "id",
    "importer_version",
    "manual_kcl_override_active",
    "manual_kcl_override_updated_at",
    "metadata",
    "phase",
    "raw_kcl_similarity_score",
    "salon_kcl_similarity_score",
    "started_at",
    "status",
    "status_message",
    "updated_at",
)


def _conversion(**fields: Any) -> aj.DatasetConversion:
    body = {"id": "c", "status": "in_progress", **fields}
    return msgspec.json.decode(msgspec.json.encode(body), type=aj.DatasetConversion)


def _spec_enum(name: str) -> list[str]:
    schema = zoo_schema(name)
    return [value for variant in schema["oneOf"] for value in variant["enum"]]


def test_detail_body_decodes_every_field() -> None:
    conv = msgspec.json.decode(json.dumps(DETAIL).encode(), type=aj.DatasetConversion)
    assert (conv.id, conv.status, conv.phase) == (DETAIL["id"], "success", "completed")
    assert conv.dataset_id == DETAIL["dataset_id"]
    assert conv.created_at is not None and conv.created_at.utcoffset() == timezone.utc.utcoffset(
        None
    )
    assert conv.completed_at is not None and conv.started_at is not None
    assert conv.updated_at is not None and conv.manual_kcl_override_updated_at is not None
    assert (conv.file_path, conv.file_size, conv.file_etag) == (
        "brackets/l-bracket.step",
        48213,
        DETAIL["file_etag"],
    )
    assert conv.importer_version == "kcl-importer 0.9.3"
    assert conv.metadata == {"source": "upload", "owner": "cad-team"}
    assert conv.output == conv.salon_kcl_output == "const bracket = startSketchOn(XY)"
    assert conv.raw_kcl_output == "const raw = startSketchOn(XY)"
    assert (conv.raw_kcl_similarity_score, conv.salon_kcl_similarity_score) == (0.97, 0.99)
    assert conv.manual_kcl_override_active is True
    assert conv.manual_kcl_override == "const part = startSketchOn(XY)"
    assert len(conv.original_snapshot_images) == len(conv.raw_kcl_snapshot_images) == 1
    assert [i.mime_type for i in conv.salon_kcl_snapshot_images] == ["image/png", "image/webp"]
    assert conv.salon_kcl_snapshot_images[0].data == b"\x89PNG\r\n\x1a\nfake"
    assert conv.job_state is aj.JobState.SUCCEEDED
    assert conv.is_terminal and conv.progress == 1.0 and conv.phase_index == 11
    assert conv.error is None


def test_summary_page_decodes_as_public_target() -> None:
    item = {key: DETAIL[key] for key in SUMMARY_KEYS}
    item.update(status="in_progress", phase="salon", completed_at=None)
    body = json.dumps({"items": [item, item], "next_page": "o=2&k=ab+c/=="}).encode()
    page = msgspec.json.decode(body, type=aj.Page[aj.DatasetConversion])
    assert page.next_page == "o=2&k=ab+c/=="
    conv = page.items[0]
    assert conv.job_state is aj.JobState.RUNNING and not conv.is_terminal
    assert conv.phase_index == CONVERSION_PHASES.index("salon")
    assert conv.output is None and conv.raw_kcl_output is None
    assert conv.original_snapshot_images == conv.salon_kcl_snapshot_images == ()
    assert conv.manual_kcl_override is None and conv.manual_kcl_override_active is True


def test_minimal_body_uses_defaults() -> None:
    conv = msgspec.json.decode(b'{"id": "c", "status": "queued"}', type=aj.DatasetConversion)
    assert conv.phase is None and conv.phase_index is None
    assert conv.progress is None  # no phase: nothing to go by
    assert conv.manual_kcl_override_active is False
    assert conv.raw_kcl_snapshot_images == ()
    assert conv.job_state is aj.JobState.PENDING


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("queued", aj.JobState.PENDING),
        ("in_progress", aj.JobState.RUNNING),
        ("success", aj.JobState.SUCCEEDED),
        ("canceled", aj.JobState.CANCELED),
        ("error_user", aj.JobState.FAILED),
        ("error_unsupported", aj.JobState.FAILED),
        ("error_internal", aj.JobState.FAILED),
        ("error_geometry_mismatch", aj.JobState.FAILED),
        ("error_execution", aj.JobState.FAILED),
        ("error_connection", aj.JobState.FAILED),
    ],
)
def test_state_table(status: str, state: aj.JobState) -> None:
    conv = aj.DatasetConversion(id="c", status=status, phase="salon")
    assert conv.job_state is state
    assert conv.is_terminal == (state in aj.TERMINAL_STATES)
    if conv.is_terminal:
        assert conv.progress == 1.0
    else:
        assert conv.progress == CONVERSION_PHASES.index("salon") / 11


def test_seed_statuses_are_all_known() -> None:
    assert set(SEED_STATUSES) <= set(CONVERSION_STATES)


@given(st.text(max_size=30))
def test_any_error_prefixed_status_is_a_failure(suffix: str) -> None:
    status = CONVERSION_ERROR_PREFIX + suffix
    conv = _conversion(status=status, phase="convert_raw_kcl")
    assert conv.job_state is aj.JobState.FAILED
    assert conv.is_terminal and conv.progress == 1.0
    assert conv.error == status  # no status_message: the status names the failure
    with_message = _conversion(status=status, status_message="mesh is not watertight")
    assert with_message.error == "mesh is not watertight"


def test_new_error_status_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="async_jobs"):
        assert conversion_state("error_quota_exceeded") is aj.JobState.FAILED
    assert caplog.records == []


def test_unknown_status_is_unknown_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    conv = _conversion(status="paused_for_review_7f3", phase="salon")
    with caplog.at_level(logging.WARNING, logger="async_jobs"):
        assert conv.job_state is aj.JobState.UNKNOWN
        assert conv.job_state is aj.JobState.UNKNOWN
        assert not conv.is_terminal
    warnings = [r for r in caplog.records if "paused_for_review_7f3" in r.getMessage()]
    assert len(warnings) == 1
    assert conv.progress == CONVERSION_PHASES.index("salon") / 11  # the phase still counts
    assert conv.error is None


@pytest.mark.parametrize("status", ["queued", "in_progress", "success", "canceled", "paused"])
def test_error_is_only_for_failures(status: str) -> None:
    assert _conversion(status=status, status_message="retrying on a new worker").error is None


@given(
    st.sampled_from(CONVERSION_STATUSES) | st.text(max_size=20),
    st.none() | st.sampled_from(CONVERSION_PHASES) | st.text(max_size=20),
)
def test_any_status_and_phase_decode(status: str, phase: str | None) -> None:
    conv = _conversion(status=status, phase=phase)
    expected = CONVERSION_STATES.get(status)
    if expected is None:
        expected = (
            aj.JobState.FAILED
            if status.startswith(CONVERSION_ERROR_PREFIX)
            else aj.JobState.UNKNOWN
        )
    assert conv.job_state is expected
    progress = conv.progress
    if conv.is_terminal:
        assert progress == 1.0
    elif phase in CONVERSION_PHASES:
        assert progress == CONVERSION_PHASES.index(phase) / (len(CONVERSION_PHASES) - 1)
    else:
        assert progress is None and conv.phase_index is None


def test_phases_follow_the_live_spec() -> None:
    assert list(CONVERSION_PHASES) == _spec_enum("OrgDatasetFileConversionPhase")
    assert CONVERSION_PHASES.index("manual_kcl_override") == 4
    assert CONVERSION_PHASES.index("completed") == 11


def test_statuses_and_sort_modes_follow_the_live_spec() -> None:
    assert list(CONVERSION_STATUSES) == _spec_enum("OrgDatasetFileConversionStatus")
    assert list(CONVERSION_SORT_MODES) == _spec_enum("ConversionSortMode")


@pytest.mark.parametrize("order", [CONVERSION_PHASES, SEED_PHASES], ids=["live", "seed"])
def test_progress_rises_through_either_known_order(order: tuple[str, ...]) -> None:
    running = [_conversion(status="in_progress", phase=p).progress for p in order[:-1]]
    assert running[0] == 0.0
    assert all(a is not None and b is not None and a < b for a, b in pairwise(running))
    assert _conversion(status="in_progress", phase="completed").progress == 1.0
    assert _conversion(status="success", phase=order[-1]).progress == 1.0


def test_phase_index_is_by_name() -> None:
    for index, phase in enumerate(CONVERSION_PHASES):
        assert _conversion(phase=phase).phase_index == index
    # The seed doc's indexes are not ours: convert_raw_kcl was 4 there, 5 live.
    assert _conversion(phase="convert_raw_kcl").phase_index == 5
    assert _conversion(phase="mesh_repair").phase_index is None


@pytest.mark.parametrize("status", ["queued", "in_progress", "paused"])
def test_unknown_phase_never_raises(status: str) -> None:
    conv = _conversion(status=status, phase="mesh_repair")
    assert conv.phase == "mesh_repair"
    assert conv.progress is None  # the caller keeps its last known value
    assert _conversion(status="success", phase="mesh_repair").progress == 1.0
    assert _conversion(status="error_user", phase="mesh_repair").progress == 1.0


@given(st.binary(max_size=300), st.booleans(), st.booleans())
def test_snapshot_image_data_any_base64_flavour(data: bytes, urlsafe: bool, pad: bool) -> None:
    text = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode()
    if not pad:
        text = text.rstrip("=")
    image = msgspec.json.decode(
        msgspec.json.encode({"data_base64": text, "mime_type": "image/png"}),
        type=aj.DatasetSnapshotImage,
    )
    assert image.data == data


def test_snapshot_image_junk_raises_value_error() -> None:
    with pytest.raises(ValueError):
        _ = aj.DatasetSnapshotImage(data_base64="not base64 at all!").data


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"status": "queued"}',
        b'{"id": "c"}',
        b'{"id": 3, "status": "queued"}',
        b'{"id": "c", "status": "queued", "file_size": "big"}',
        b'{"id": "c", "status": "queued", "original_snapshot_images": {}}',
        b"<html>",
    ],
)
def test_wrong_shapes_raise_msgspec_errors(body: bytes) -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        msgspec.json.decode(body, type=aj.DatasetConversion)


def test_round_trip_through_msgspec() -> None:
    conv = msgspec.json.decode(json.dumps(DETAIL).encode(), type=aj.DatasetConversion)
    again = msgspec.json.decode(msgspec.json.encode(conv), type=aj.DatasetConversion)
    assert again == conv


def test_public_members_are_documented() -> None:
    import inspect

    for cls in (aj.DatasetConversion, aj.DatasetSnapshotImage):
        assert inspect.getdoc(cls)
        for name, member in vars(cls).items():
            if not name.startswith("_") and isinstance(member, property):
                assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"
