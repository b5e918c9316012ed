"""The CLI and its output driven by job-kind descriptors: labels, raw statuses, status details
and creation times come from the JobKind and the model, the client and its "no credential"
hint from the ApiClient class, so an API the CLI has never heard of shows up like the others."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import rich.console as rich_console

import async_jobs as aj
from async_jobs import cli
from async_jobs._cli_output import JsonOutput, RichOutput, job_record
from async_jobs.metafold import METAFOLD_JOB
from async_jobs.testing import FakeApiServer
from async_jobs.zoo import ASYNC_OPERATION, DATASET_CONVERSION

from .conftest import TOKEN

pytestmark = pytest.mark.anyio

RENDER_STATES = aj.StateTable(
    "farm.render",
    {
        "queued": aj.JobState.PENDING,
        "rendering": aj.JobState.RUNNING,
        "done": aj.JobState.SUCCEEDED,
        "broken": aj.JobState.FAILED,
    },
)


class Render(aj.JobModel, kw_only=True, frozen=True):
    """A render job whose API calls its status ``stage`` and its creation ``submitted``."""

    state_table: ClassVar[aj.StateTable] = RENDER_STATES
    status_field: ClassVar[str] = "stage"
    created_field: ClassVar[str] = "submitted"
    id: str
    stage: str
    submitted: str | None = None
    frame: int | None = None
    error: str | None = None

    @property
    def status_detail(self) -> str | None:
        """The frame being rendered."""
        return None if self.frame is None else f"frame {self.frame}"


RENDER = aj.JobKind("farm.render", Render, "/renders/{id}", label="farmrender")


def _console() -> rich_console.Console:
    return rich_console.Console(record=True, width=160, file=io.StringIO(), color_system=None)


def test_rich_output_reads_label_status_detail_and_created_from_the_descriptors() -> None:
    console = _console()
    out = RichOutput(console=console)
    running = Render(id="r-0001", stage="rendering", frame=12)
    done = Render(id="r-0001", stage="done", submitted="2030-01-02T03:04:05Z")
    with out.watching():
        out.update(RENDER, running)
        out.final(RENDER, done)
    # A summary row names its kind by name: the output shows the label it saw with it.
    out.summary([{"id": done.id, "kind": RENDER.name, "state": "succeeded", "duration": 1.0}])
    out.item(RENDER, done)
    out.item(RENDER, running)
    out.end_items()
    text = console.export_text()
    assert "farmrender" in text and RENDER.name not in text
    assert "rendering · frame 12" in text  # the bar's status, with the model's detail
    assert "2030-01-02T03:04:05Z" in text  # the created column, from created_field
    assert "done" in text


def test_json_records_carry_the_kind_name_and_the_model_status_field() -> None:
    record = job_record("update", RENDER, Render(id="r-1", stage="rendering", frame=3))
    assert record["kind"] == "farm.render"
    assert record["status"] == "rendering" and record["state"] == "running"
    assert record["job"] == {
        "id": "r-1",
        "stage": "rendering",
        "submitted": None,
        "frame": 3,
        "error": None,
    }
    conversion = aj.DatasetConversion(id="c", status="in_progress", phase="kcl_generation")
    assert conversion.status_detail == "kcl_generation"
    assert aj.AsyncOperation(id="o", status="queued").status_detail is None


def test_has_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ZOO_API_TOKEN", "KITTYCAD_API_TOKEN", "METAFOLD_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("METAFOLD_CLIENT_ID", raising=False)
    monkeypatch.delenv("METAFOLD_CLIENT_SECRET", raising=False)
    assert not aj.ZooClient().has_credentials
    assert aj.ZooClient(token="t").has_credentials
    monkeypatch.setenv("KITTYCAD_API_TOKEN", "t")
    assert aj.ZooClient().has_credentials
    assert not aj.MetafoldClient().has_credentials
    assert aj.MetafoldClient(client_id="i", client_secret="s").has_credentials
    monkeypatch.setenv("METAFOLD_CLIENT_ID", "i")
    assert not aj.MetafoldClient().has_credentials  # an id alone is no credential
    monkeypatch.setenv("METAFOLD_CLIENT_SECRET", "s")
    assert aj.MetafoldClient().has_credentials


# -- an API the CLI does not know, served by the fake's operation route ---------------------


class Op(aj.JobModel, kw_only=True, frozen=True):
    """A Zoo operation as another API's model."""

    state_table: ClassVar[aj.StateTable] = aj.ZooClient.api.kinds[0].states
    id: str
    status: str
    error: str | None = None


MINE = aj.JobKind("mine.op", Op, "/async/operations/{id}", label="mine")


class MineClient(aj.ApiClient):
    """A client of an API the CLI has no code for."""

    api = aj.JobApi("mine", (MINE,))
    credentials_hint = "no Mine token: set MINE_TOKEN"

    def __init__(self, token: str | None = None, base_url: str | None = None) -> None:
        super().__init__(base_url=base_url or "", auth=aj.StaticTokenAuth(token))


def _args(server: FakeApiServer, token_file: Path | None, op_id: str) -> argparse.Namespace:
    return argparse.Namespace(
        client=MineClient,
        kind=MINE,
        ids=lambda client, args: (args.id,),
        id=op_id,
        token_file=None if token_file is None else str(token_file),
        base_url=server.url,
        timeout=10.0,
    )


async def test_get_and_wait_handlers_serve_any_kind(server: FakeApiServer, tmp_path: Path) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    stream = io.StringIO()
    args = _args(server, token_file, op.id)
    assert await cli.get_job(args, JsonOutput(stream)) == cli.EXIT_OK
    assert await cli.wait_job(args, JsonOutput(stream)) == cli.EXIT_OK
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["event"], r["kind"], r["id"], r["status"]) for r in records] == [
        ("job", "mine.op", op.id, "completed"),
        ("update", "mine.op", op.id, "completed"),
        ("final", "mine.op", op.id, "completed"),
    ]


async def test_missing_credential_message_comes_from_the_client_class(
    server: FakeApiServer,
) -> None:
    with pytest.raises(cli.MissingToken) as raised:
        await cli.get_job(_args(server, None, "x"), JsonOutput(io.StringIO()))
    assert str(raised.value) == "no Mine token: set MINE_TOKEN, or pass --token-file"
    assert not server.requests


def test_output_methods_take_a_bare_kind_name_too() -> None:
    stream = io.StringIO()
    JsonOutput(stream).final("mine.op", Op(id="o", status="completed"))
    assert json.loads(stream.getvalue())["kind"] == "mine.op"
    console = _console()
    out: Any = RichOutput(console=console)
    with out.watching():
        out.update("mine.op", Op(id="o", status="in_progress"))
    assert "mine.op" in console.export_text()


# -- bars without progress, listing columns ---------------------------------------------------

SPINNER = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")  # rich's default "dots" spinner
ELAPSED = re.compile(r"\d:\d\d:\d\d")


def _line(text: str, marker: str) -> str:
    (line,) = [line for line in text.splitlines() if marker in line]
    return line


def test_a_job_without_progress_gets_a_spinner_and_its_time_not_a_0_percent_bar() -> None:
    console = _console()
    out = RichOutput(console=console)
    with out.watching():
        out.update(ASYNC_OPERATION, aj.AsyncOperation(id="op-0001", status="in_progress"))
        out.update(METAFOLD_JOB, aj.MetafoldJob(id="mf-0001", state="started"))
        phase = aj.DatasetConversion(id="cv-0001", status="in_progress", phase="snapshot_original")
        out.update(DATASET_CONVERSION, phase)
    text = console.export_text()
    for running in ("op-0001", "mf-0001"):
        line = _line(text, running)
        assert "%" not in line, line  # no percentage it does not have
        assert SPINNER & set(line) and ELAPSED.search(line), line
        assert "━" * 20 in line, line  # a pulsing bar (an empty one is blank without colour)
    conversion = _line(text, "cv-0001")
    assert "18%" in conversion and SPINNER & set(conversion), conversion


def test_a_finished_job_stops_its_spinner() -> None:
    console = _console()
    out = RichOutput(console=console)
    with out.watching():
        out.update(METAFOLD_JOB, aj.MetafoldJob(id="mf-0002", state="started"))
        out.final(METAFOLD_JOB, aj.MetafoldJob(id="mf-0002", state="success"))
    line = _line(console.export_text(), "mf-0002")
    assert "succeeded" in line and "100%" in line and not SPINNER & set(line), line


def test_listings_show_name_and_type_when_the_jobs_have_them() -> None:
    console = _console()
    out = RichOutput(console=console)
    out.item(METAFOLD_JOB, aj.MetafoldJob(id="mf-1", state="started", name="voxelize"))
    out.item(METAFOLD_JOB, aj.MetafoldJob(id="mf-2", state="success", type="implicit/from-mesh"))
    out.end_items()
    out.item(
        DATASET_CONVERSION,
        aj.DatasetConversion(id="cv-1", status="in_progress", phase="snapshot_original"),
    )
    out.end_items()
    out.item(ASYNC_OPERATION, aj.AsyncOperation(id="op-1", status="queued", type="file_volume"))
    out.end_items()
    metafold, conversions, operations = console.export_text().split("┏")[1:]
    header = _line(metafold, "state").split()
    assert header[:4] == ["┃", "id", "┃", "name"] and "type" in header
    assert "progress" not in header  # no Metafold job reports progress
    assert "voxelize" in metafold and "implicit/from-mesh" in metafold
    assert "name" not in conversions and "type" not in conversions
    assert "progress" in conversions  # a conversion reports one
    assert "type" in operations and "name" not in operations and "file_volume" in operations
