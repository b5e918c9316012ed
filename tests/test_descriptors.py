"""The job-API descriptors as pure data: StateTable, JobModel, JobKind, JobApi, ClientOptions."""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import async_jobs as aj
from async_jobs.metafold import METAFOLD_API, METAFOLD_JOB
from async_jobs.models.zoo import CONVERSION_TABLE, OPERATION_TABLE
from async_jobs.zoo import ASYNC_OPERATION, DATASET_CONVERSION, ZOO_API

S = aj.JobState
TABLE = aj.StateTable(
    "test.thing",
    {"new": S.PENDING, "busy": S.RUNNING, "ok": S.SUCCEEDED, "stopped": S.CANCELED},
    prefixes={"err_": S.FAILED, "wait_": S.PENDING},
)


class Thing(aj.JobModel, kw_only=True, frozen=True):
    state_table: ClassVar[aj.StateTable] = TABLE
    status_field: ClassVar[str] = "phase"
    id: str
    phase: str
    error: str | None = None


def test_state_table_known_active_and_prefix_rules(caplog: pytest.LogCaptureFixture) -> None:
    assert TABLE.known == ("new", "busy", "ok", "stopped")
    assert TABLE.active == ("new", "busy")
    assert TABLE.state("busy") is S.RUNNING
    assert TABLE.state("err_disk_full") is S.FAILED
    assert TABLE.state("wait_for_gpu") is S.PENDING
    with caplog.at_level(logging.WARNING):
        assert TABLE.state("exploded") is S.UNKNOWN
        assert TABLE.state("exploded") is S.UNKNOWN
    assert [r.getMessage() for r in caplog.records].count(
        "test.thing: unknown status 'exploded'; treating it as not terminal"
    ) == 1


@given(st.text(max_size=30))
def test_prefix_rules_are_data(value: str) -> None:
    assert CONVERSION_TABLE.state("error_" + value) is S.FAILED
    assert OPERATION_TABLE.state("error_" + value) is S.UNKNOWN  # no rule there


def test_job_model_trio_from_its_table_and_status_field() -> None:
    thing = msgspec.json.decode(b'{"id": "t", "phase": "err_x"}', type=Thing)
    assert (thing.job_state, thing.is_terminal, thing.progress, thing.error) == (
        S.FAILED,
        True,
        1.0,
        None,
    )
    running = Thing(id="t", phase="busy")
    assert (running.job_state, running.is_terminal, running.progress) == (S.RUNNING, False, None)


def test_job_kind_paths_fill_ids_in_order_each_encoded_whole() -> None:
    kind = aj.JobKind("test.thing", Thing, "/v1/groups/{group}/things/{id}")
    assert kind.id_names == ("group", "id")
    assert kind.url_path("g 1", "a/b") == "/v1/groups/g%201/things/a%2Fb"
    assert kind.label == "thing"
    assert kind.states is TABLE
    with pytest.raises(ValueError, match="takes 2 ids"):
        kind.url_path("only-one")
    with pytest.raises(ValueError):
        kind.url_path("g", "")


@pytest.mark.parametrize(
    "path", ["v1/things/{id}", "/v1/things", "/v1/x{id}", "/v1//{id}", "/v1/{id}{other}"]
)
def test_job_kind_refuses_a_bad_path_template(path: str) -> None:
    with pytest.raises(ValueError):
        aj.JobKind("test.thing", Thing, path)


def test_job_kind_needs_a_state_table_and_a_whole_listing() -> None:
    class NoTable(msgspec.Struct):
        id: str

    with pytest.raises(TypeError, match="state_table"):
        aj.JobKind("test.none", NoTable, "/x/{id}")  # type: ignore[type-var]
    with pytest.raises(ValueError, match="group and list_active"):
        aj.JobKind("test.thing", Thing, "/x/{id}", group="things")


def test_the_built_in_apis_are_descriptors() -> None:
    assert ZOO_API.kind("zoo.async_operation") is ASYNC_OPERATION
    assert ZOO_API.kind("metafold.job") is None
    assert ZOO_API.request_id_header == "X-Api-Call-Id"
    assert METAFOLD_API.request_id_header is None
    assert METAFOLD_JOB.id_names == ("project_id", "id")
    assert DATASET_CONVERSION.url_path("d", "c") == "/org/datasets/d/conversions/c"
    assert aj.ZooClient.api is ZOO_API and aj.MetafoldClient.api is METAFOLD_API


@pytest.mark.anyio
async def test_client_refs_and_tokens_come_from_kinds() -> None:
    async with aj.ZooClient(token="t", base_url="http://127.0.0.1:9") as zoo:
        ref = zoo.ref(DATASET_CONVERSION, "d", "c")
        assert ref == zoo.dataset_conversion("d", "c")
        assert ref.listing is not None and ref.listing.name == "zoo.dataset_conversions:d"
        again = aj.JobRef.from_token(ref.to_token(), zoo)
        assert (again.kind, again.ids) == ("zoo.dataset_conversion", ("d", "c"))
        assert zoo.job_ref("metafold.job", ("p", "j")) is None
        with pytest.raises(ValueError, match="takes 2 ids"):
            zoo.job_ref("zoo.dataset_conversion", ("only-one",))


def test_client_options_replace_checks_names() -> None:
    options = aj.ClientOptions(timeout=5.0)
    assert options.replace(rate_limit=2.0) == aj.ClientOptions(timeout=5.0, rate_limit=2.0)
    with pytest.raises(TypeError):
        options.replace(timeot=1.0)


def test_client_settings_are_the_client_options() -> None:
    """The keyword arguments a client takes (``ClientSettings``, for type checkers) name
    exactly the fields of ``ClientOptions``: one list, written twice, kept in step here."""
    fields = {field.name for field in dataclasses.fields(aj.ClientOptions)}
    assert set(aj.ClientSettings.__annotations__) == fields
