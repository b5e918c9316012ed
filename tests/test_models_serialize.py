"""Models that serialize (issue 17): enums print as their values, reprs omit defaults,
``aj.to_builtins`` gives JSON-ready builtins (a FastAPI endpoint returns a job), and
``aj.wait_all`` is public."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import anyio
import msgspec
import pytest

import async_jobs as aj
import async_jobs._poll
from async_jobs import events
from async_jobs.testing import FakeApiServer

from .conftest import FAST_POLL, FAST_RETRY, TOKEN

pytestmark = pytest.mark.anyio

PROJECT = "proj-serialize"
HANG_GUARD = 20.0


def _public_str_enums() -> list[type[enum.Enum]]:
    found: dict[str, type[enum.Enum]] = {}
    for namespace in (aj, events):
        for name in getattr(namespace, "__all__", dir(namespace)):
            obj = getattr(namespace, name)
            if isinstance(obj, type) and issubclass(obj, enum.Enum) and issubclass(obj, str):
                found[obj.__qualname__] = obj
    return list(found.values())


def test_every_public_str_enum_prints_its_value() -> None:
    enums = _public_str_enums()
    assert aj.JobState in enums
    for cls in enums:
        for member in cls:
            assert str(member) == member.value
            assert f"{member}" == member.value
            assert f"{member:>12}" == f"{member.value:>12}"
            assert msgspec.json.encode(member) == json.dumps(member.value).encode()
    assert f"{aj.JobState.RUNNING}" == "running"
    assert repr(aj.JobState.RUNNING) == "<JobState.RUNNING: 'running'>"  # repr unchanged


async def test_a_conversions_repr_is_short_and_names_id_and_state(
    server: FakeApiServer, zoo: aj.ZooClient
) -> None:
    dataset = str(uuid.uuid4())
    fake = server.conversions.add_conversion(dataset, [("in_progress", "salon", None)])
    [listed] = [c async for c in zoo.iter_dataset_conversions(dataset)]
    text = repr(listed)
    assert text.startswith(f"DatasetConversion(id={fake.id!r}, status='in_progress', ")
    assert "phase='salon'" in text
    assert "=None" not in text and "=()" not in text and "=False" not in text
    assert len(text) < 700, text  # 1.3 KB with every None field; ~600 here (3 datetimes)
    # The details: every field at its default left out; snapshot images by size only.
    detail = await zoo.get_dataset_conversion(dataset, fake.id)
    text = repr(detail)
    assert f"id={fake.id!r}" in text and "status='in_progress'" in text
    for field in msgspec.structs.fields(detail):
        if getattr(detail, field.name) == field.default:
            assert f" {field.name}=" not in text
    assert "=None" not in text and "mime_type='image/png', <" in text
    assert detail.raw_kcl_snapshot_images[0].data_base64 not in text
    # Fields off their defaults are still shown.
    op = msgspec.convert({"id": "op-1", "status": "failed", "attempts": 2}, aj.AsyncOperation)
    assert repr(op) == "AsyncOperation(id='op-1', status='failed', attempts=2)"
    page = aj.Page(items=[op])
    assert repr(page) == f"Page(items=[{op!r}])"
    job = aj.MetafoldJob(id="j", state="started", inputs=aj.MetafoldIO())
    assert repr(job) == "MetafoldJob(id='j', state='started', inputs=MetafoldIO())"


def test_to_builtins_of_a_model_is_json_with_what_it_works_out() -> None:
    body = {"id": "op-1", "status": "failed", "error": "bad", "created_at": "2024-05-01T12:00:00Z"}
    op = msgspec.convert(body, aj.AsyncOperation)
    data = aj.to_builtins(op)
    assert json.loads(json.dumps(data)) == data  # plain builtins only
    assert data["created_at"] == "2024-05-01T12:00:00Z"
    assert data["job_state"] == "failed" and data["is_terminal"] is True
    assert data["progress"] == 1.0 and data["error"] == "bad"
    assert set(data) == {f.encode_name for f in msgspec.structs.fields(op)} | {
        "job_state",
        "is_terminal",
        "progress",
    }
    assert msgspec.convert(data, aj.AsyncOperation) == op  # decodes back
    assert aj.to_builtins(op, derived=False) == msgspec.to_builtins(op)
    assert aj.to_builtins(op, omit_defaults=True) == {
        **body,
        "job_state": "failed",
        "is_terminal": True,
        "progress": 1.0,
    }
    # A model without an id field (the dataset's id) or an error field gets both.
    stats = aj.DatasetStats(dataset_id="d", by_status={"success": 1, "error_user": 1}, total=2)
    out = aj.to_builtins(stats, omit_defaults=True)
    assert out["id"] == "d" and out["error"] == "1 of 2 conversions failed"
    assert out["job_state"] == "failed" and "successes" not in out


def test_to_builtins_writes_metafold_datetimes_in_iso_8601() -> None:
    wire = b"""[{"id": "j1", "state": "success", "created": "Mon, 01 Jan 2024 00:00:00 GMT",
        "finished": "2024-01-01T00:05:00+00:00", "inputs": {"assets": {"mesh": {"id": "a1",
        "created": "Tue, 02 Jan 2024 03:04:05 GMT"}}}}]"""
    jobs = msgspec.json.decode(wire, type=list[aj.MetafoldJob])
    data = aj.to_builtins(jobs, omit_defaults=True)
    assert data == [
        {
            "id": "j1",
            "state": "success",
            "created": "2024-01-01T00:00:00Z",
            "finished": "2024-01-01T00:05:00Z",
            "inputs": {"assets": {"mesh": {"id": "a1", "created": "2024-01-02T03:04:05Z"}}},
            "job_state": "succeeded",
            "is_terminal": True,
            "progress": 1.0,
        }
    ]
    again = msgspec.convert(data, list[aj.MetafoldJob])[0]
    assert again.created == jobs[0].created == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert again.inputs is not None and again.inputs.assets is not None
    assert again.inputs.assets["mesh"].created == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_to_builtins_of_events_and_containers() -> None:
    changed = events.StateChanged(key="k", old=aj.JobState.PENDING, new=aj.JobState.RUNNING)
    data = aj.to_builtins({"events": (changed,), "states": {aj.JobState.FAILED: 1}})
    assert data == {
        "events": [msgspec.to_builtins(changed)],
        "states": {"failed": 1},
    }
    assert data["events"][0]["new"] == "running"


async def test_a_fastapi_endpoint_returns_jobs_of_every_api(server: FakeApiServer) -> None:
    import httpx
    from fastapi import FastAPI

    op = server.zoo.add_operation("file_volume", [("failed", None)], error="bad mesh")
    dataset = str(uuid.uuid4())
    conversion = server.conversions.add_conversion(dataset, [("in_progress", "salon", None)])
    server.metafold.add_project(PROJECT)
    job = server.metafold.add_job(PROJECT, timeline=[("success", None)], name="gear")
    clients: dict[str, Any] = {}

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        options: dict[str, Any] = {"retry": FAST_RETRY, "poll": FAST_POLL, "timeout": 5}
        async with (
            aj.ZooClient(token=TOKEN, base_url=server.url, **options) as zoo,
            aj.MetafoldClient(TOKEN, server.url, PROJECT, **options) as mf,
        ):
            clients.update(zoo=zoo, mf=mf)
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/ops/{op_id}")
    async def get_op(op_id: str) -> Any:
        final = await aj.wait_until_terminal(clients["zoo"].async_operation(op_id), timeout=10)
        return aj.to_builtins(final)

    @app.get("/datasets/{dataset_id}/conversions/{conversion_id}")
    async def get_conversion(dataset_id: str, conversion_id: str) -> Any:
        return aj.to_builtins(
            await clients["zoo"].get_dataset_conversion(dataset_id, conversion_id)
        )

    @app.get("/jobs")
    async def list_jobs() -> Any:
        return aj.to_builtins(await clients["mf"].list_jobs(), omit_defaults=True)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            with anyio.fail_after(HANG_GUARD):
                got_op = await client.get(f"/ops/{op.id}")
                got_conv = await client.get(f"/datasets/{dataset}/conversions/{conversion.id}")
                got_jobs = await client.get("/jobs")
    assert [r.status_code for r in (got_op, got_conv, got_jobs)] == [200, 200, 200]
    body = got_op.json()
    assert body["id"] == op.id and body["type"] == "file_volume"
    assert (body["status"], body["job_state"], body["error"]) == ("failed", "failed", "bad mesh")
    assert body["created_at"].endswith("Z") and body["progress"] == 1.0
    conv = got_conv.json()
    assert (conv["id"], conv["status"], conv["phase"]) == (conversion.id, "in_progress", "salon")
    assert conv["job_state"] == "running" and conv["is_terminal"] is False
    assert 0.0 < conv["progress"] < 1.0 and conv["error"] is None
    assert msgspec.convert(conv, aj.DatasetConversion).phase == "salon"
    [listed] = got_jobs.json()
    assert (listed["id"], listed["name"], listed["job_state"]) == (job.id, "gear", "succeeded")
    # Metafold sends RFC 1123; the JSON says ISO 8601.
    created = datetime.fromisoformat(listed["created"].replace("Z", "+00:00"))
    assert created.tzinfo is not None and "GMT" not in listed["created"]


async def test_wait_all_is_public(server: FakeApiServer, zoo: aj.ZooClient) -> None:
    assert "wait_all" in aj.__all__ and aj.wait_all is async_jobs._poll.wait_all
    ops = [
        server.zoo.add_operation(timeline=[(status, None)]) for status in ("completed", "failed")
    ]
    with anyio.fail_after(HANG_GUARD):
        finals = await aj.wait_all([zoo.async_operation(op.id) for op in ops], poll=FAST_POLL)
    assert [f"{job.id} {job.job_state}" for job in finals] == [
        f"{ops[0].id} succeeded",
        f"{ops[1].id} failed",
    ]
