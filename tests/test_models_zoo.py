"""Decoding Zoo async operations: seed bodies, unknown values, public decoding targets."""

from __future__ import annotations

import logging
from datetime import timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import async_jobs as aj
from async_jobs.models.zoo import OPERATION_STATES

SEED_PAGE = b"""{
  "items": [
    {
      "completed_at": "2024-04-29T19:58:23.472Z",
      "created_at": "2024-04-29T19:58:23.472Z",
      "error": "hgSg2J3xPWMTAvWTSpmcxyiSdKiZ",
      "id": "0ca1531a-ac9b-4e55-bff6-2ec246d5cc1d",
      "input": "{}",
      "output": "{}",
      "started_at": "2024-04-29T19:58:23.473Z",
      "status": "failed",
      "type": "file_center_of_mass",
      "updated_at": "2024-04-29T19:58:23.473Z",
      "user_id": "550908b9-1249-4b96-a0ad-5bbe9dde4395",
      "worker": "WPVfuf6GvdhG6a7oMb"
    }
  ],
  "next_page": "wWmdK"
}"""


def test_seed_page_decodes_as_public_target() -> None:
    page = msgspec.json.decode(SEED_PAGE, type=aj.Page[aj.AsyncOperation])
    assert page.next_page == "wWmdK"
    (op,) = page.items
    assert op.status == "failed"
    assert op.job_state is aj.JobState.FAILED
    assert op.is_terminal
    assert op.progress == 1.0
    assert op.error == "hgSg2J3xPWMTAvWTSpmcxyiSdKiZ"
    assert op.created_at is not None and op.created_at.tzinfo is not None
    assert op.created_at.utcoffset() == timezone.utc.utcoffset(None)
    assert op.input == "{}"
    assert op.attempts == 0


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("queued", aj.JobState.PENDING),
        ("uploaded", aj.JobState.PENDING),
        ("in_progress", aj.JobState.RUNNING),
        ("completed", aj.JobState.SUCCEEDED),
        ("failed", aj.JobState.FAILED),
    ],
)
def test_state_table(status: str, state: aj.JobState) -> None:
    op = aj.AsyncOperation(id="x", status=status)
    assert op.job_state is state
    assert op.is_terminal == (state in aj.TERMINAL_STATES)
    assert op.progress == (1.0 if op.is_terminal else None)


def test_unknown_status_and_type_decode_and_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    body = b'{"id": "x", "status": "paused_for_review", "type": "hologram_export", "new": 1}'
    op = msgspec.json.decode(body, type=aj.AsyncOperation)
    with caplog.at_level(logging.WARNING, logger="async_jobs"):
        assert op.job_state is aj.JobState.UNKNOWN
        assert op.job_state is aj.JobState.UNKNOWN
        assert not op.is_terminal
    warnings = [r for r in caplog.records if "paused_for_review" in r.getMessage()]
    assert len(warnings) == 1
    assert op.type == "hologram_export"


def test_detail_fields_of_get_are_kept() -> None:
    body = (
        b'{"id": "x", "status": "completed", "type": "file_volume", "src_format": "obj",'
        b' "output_unit": "cm3", "volume": 42.5, "created_at": "2024-01-01T00:00:00Z",'
        b' "updated_at": "2024-01-01T00:00:01Z", "user_id": "u"}'
    )
    op = msgspec.json.decode(body, type=aj.AsyncOperation)
    assert (op.volume, op.output_unit, op.src_format) == (42.5, "cm3", "obj")


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"status": "queued"}', b'{"id": 3, "status": "queued"}', b"<html>"],
)
def test_wrong_shapes_raise_msgspec_errors(body: bytes) -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        msgspec.json.decode(body, type=aj.AsyncOperation)


@given(st.sampled_from(sorted(OPERATION_STATES)) | st.text(max_size=20))
def test_any_status_string_decodes(status: str) -> None:
    op = msgspec.json.decode(
        msgspec.json.encode({"id": "x", "status": status}), type=aj.AsyncOperation
    )
    assert op.job_state in set(aj.JobState)
    assert op.job_state is OPERATION_STATES.get(status, aj.JobState.UNKNOWN)


def test_models_round_trip_through_msgspec() -> None:
    page = msgspec.json.decode(SEED_PAGE, type=aj.Page[aj.AsyncOperation])
    again = msgspec.json.decode(msgspec.json.encode(page), type=aj.Page[aj.AsyncOperation])
    assert again == page
