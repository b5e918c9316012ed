"""The control route of ``async-jobs fake-server``: scripted jobs added over HTTP, so that
another process (a service under test, a shell) can create the jobs it then waits on.

``POST /_control/jobs`` with the server's token (``Authorization: Bearer TOKEN``, as on the
API routes) and a JSON object:

- ``kind``: ``zoo.async_operation``, ``zoo.dataset_conversion`` or ``metafold.job``;
- ``timeline`` (optional): ``[[status, seconds], ..., [status, null]]``, the statuses the job
  walks and how long it stays in each (seconds of the fake's clock, which ``--speed``
  scales; the last one's null: it stays there). A conversion's steps may be ``[status,
  phase, seconds]``, or name a phase (see ``FakeConversions``). Default: about ten seconds
  running, then success;
- ``error`` (optional): the error a failed step reports;
- ``type`` (optional): the operation's or Metafold job's type; ``name``: the Metafold job's
  name;
- ``dataset`` / ``project`` (optional): the conversion's dataset (default: the demo dataset,
  created if new) or the Metafold job's project (default: ``demo-project``).

It answers ``201`` with ``{"kind", "id", "ids", "wait"}``: the new job's id, its ids in path
order, and the ``async-jobs`` command that waits for it; ``400`` with ``{"message"}`` for a
request it cannot read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ._apis import FakeApiServer
from ._helpers import json_response
from ._plugin import FakeApi
from ._scenarios import DEMO_DATASET, DEMO_PROJECT

__all__ = ["CONTROL_JOBS_PATH", "ControlApi", "ControlError"]

CONTROL_JOBS_PATH = "/_control/jobs"

_OPERATION_TIMELINE = [("queued", 1.0), ("in_progress", 10.0), ("completed", None)]
_CONVERSION_TIMELINE = [
    ("queued", 1.0),
    *((phase, 1.0) for phase in ("convert_raw_kcl", "kcl_generation", "snapshot_generation")),
    ("completed", None),
]
_METAFOLD_TIMELINE = [("pending", 1.0), ("started", 10.0), ("success", None)]


_FIELDS = {"kind", "timeline", "error", "type", "name", "dataset", "project"}


class ControlError(ValueError):
    """A control request the fake cannot act on (answered 400)."""


def _timeline(value: Any, default: list[Any]) -> list[Any]:
    if value is None:
        return default
    if not isinstance(value, list) or not value:
        raise ControlError("timeline must be a non-empty list of [status, seconds] steps")
    steps = []
    for step in value:
        if (
            not isinstance(step, list)
            or len(step) not in (2, 3)
            or not all(isinstance(part, str) and part for part in step[:-1])
            or not (step[-1] is None or isinstance(step[-1], (int, float)))
            or isinstance(step[-1], bool)
            or (step[-1] is not None and step[-1] < 0)
        ):
            raise ControlError(
                f"a timeline step is [status, seconds >= 0 or null], got {json.dumps(step)}"
            )
        steps.append(tuple(step))
    if steps[-1][-1] is not None:
        raise ControlError("the last timeline step's seconds must be null (the job stays there)")
    return steps


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise ControlError(f"{name} must be a non-empty string")
    return value


class ControlApi(FakeApi):
    """``POST /_control/jobs``: add a scripted job to the :class:`FakeApiServer` hosting this
    plugin (see the module docstring for the body and the answer). Token-checked like the API
    routes."""

    name = "control"
    prefixes: tuple[str, ...] = ("/_control",)

    def add_routes(self, app: web.Application) -> None:
        """The one route."""
        app.router.add_post(CONTROL_JOBS_PATH, self._add_job)

    def add_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """Add the job ``body`` describes; the answer's body. ControlError for a bad one."""
        server = self.server
        if not isinstance(server, FakeApiServer):
            raise ControlError("the control route needs a FakeApiServer")
        adders: dict[str, Callable[[FakeApiServer, dict[str, Any]], dict[str, Any]]] = {
            "zoo.async_operation": _add_operation,
            "zoo.dataset_conversion": _add_conversion,
            "metafold.job": _add_metafold_job,
        }
        kind = body.get("kind")
        if kind not in adders:
            raise ControlError(f"kind must be one of {', '.join(adders)}, got {kind!r}")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise ControlError(f"unknown fields: {', '.join(unknown)}")
        return {"kind": kind, **adders[kind](server, body)}

    async def _add_job(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return self.error(request.path, 400, "the body is not JSON")
        if not isinstance(body, dict):
            return self.error(request.path, 400, "the body is a JSON object")
        try:
            answer = self.add_job(body)
        except ControlError as exc:
            return self.error(request.path, 400, str(exc))
        return json_response(answer, status=201)


def _add_operation(server: FakeApiServer, body: dict[str, Any]) -> dict[str, Any]:
    timeline = _timeline(body.get("timeline"), _OPERATION_TIMELINE)
    op = server.zoo.add_operation(
        _text(body, "type") or "file_conversion", timeline, error=_text(body, "error")
    )
    return {"id": op.id, "ids": [op.id], "wait": f"async-jobs zoo ops wait {op.id}"}


def _add_conversion(server: FakeApiServer, body: dict[str, Any]) -> dict[str, Any]:
    timeline = _timeline(body.get("timeline"), _CONVERSION_TIMELINE)
    dataset = _text(body, "dataset") or DEMO_DATASET
    try:
        conversion = server.conversions.add_conversion(
            dataset, timeline, error=_text(body, "error")
        )
    except ValueError as exc:  # a dataset id the fake refuses (not a UUID, ...)
        raise ControlError(str(exc)) from None
    return {
        "id": conversion.id,
        "ids": [dataset, conversion.id],
        "wait": f"async-jobs zoo conversions wait {dataset} {conversion.id}",
    }


def _add_metafold_job(server: FakeApiServer, body: dict[str, Any]) -> dict[str, Any]:
    timeline = _timeline(body.get("timeline"), _METAFOLD_TIMELINE)
    project = _text(body, "project") or DEMO_PROJECT
    job = server.metafold.add_job(
        project,
        _text(body, "type") or "implicit/from-mesh",
        timeline,
        name=_text(body, "name"),
        error=_text(body, "error"),
    )
    return {
        "id": job.id,
        "ids": [project, job.id],
        "wait": f"async-jobs metafold jobs wait {job.id} --project {project}",
    }
