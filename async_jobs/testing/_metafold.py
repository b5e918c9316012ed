"""The Metafold half of the fake server: project jobs and workflows with scripted lifecycles,
plus the OAuth2 token endpoint that client credentials are exchanged at.

Jobs walk a timeline (``pending`` -> ``started`` -> ``success``/``failure``/``canceled`` by
default) on the server's clock. A job with ``needs`` stays in its first state until every job
it needs has succeeded, and is canceled as soon as one of them fails or is canceled, as a
workflow engine does. A workflow's state follows its jobs (``canceled`` once canceled);
workflows can also be posted as YAML definitions, polled at their ``/status`` link and
canceled, as the API documents. Responses carry exactly the fields
the official ``metafold`` SDK reads (its models reject unknown keys), datetimes in RFC 1123 as
the live API sends them (or ISO 8601 as its docs show, with ``datetime_format="iso8601"``).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.utils import format_datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from aiohttp import web

from ..models._state import JobState
from ..models.metafold import (
    JOB_QUERY_FIELDS,
    JOB_SORT_FIELDS,
    METAFOLD_STATES,
    WORKFLOW_QUERY_FIELDS,
    WORKFLOW_SORT_FIELDS,
)
from ._clock import FakeClock
from ._metafold_definition import DefinitionError, MissingPyYAML
from ._metafold_lifecycle import (
    DEFAULT_JOB_TIMELINE,
    FakeMetafoldJob,
    FakeMetafoldWorkflow,
    MetafoldLifecycle,
    Steps,
    _Project,
    _Seen,
)
from ._metafold_query import QueryError, Row, parse_query, select
from ._oauth import TOKEN_PATH, FakeTokenEndpoint
from ._plugin import FakeApi

if TYPE_CHECKING:
    from ._server import FakeServer

__all__ = [
    "DEFAULT_JOB_TIMELINE",
    "TOKEN_PATH",
    "FakeMetafold",
    "FakeMetafoldJob",
    "FakeMetafoldWorkflow",
    "metafold_error",
    "metafold_time",
    "parse_query",
]

ErrorStyle = Literal["current", "msg", "errors"]
DatetimeFormat = Literal["rfc1123", "iso8601"]
_PREFIX = "/projects"


def metafold_time(moment: datetime | None, style: DatetimeFormat = "rfc1123") -> str | None:
    """A datetime as Metafold writes it: RFC 1123 in GMT (or ISO 8601, as its docs show)."""
    if moment is None:
        return None
    if style == "iso8601":
        return moment.replace(microsecond=0).isoformat()
    return format_datetime(moment, usegmt=True)


def metafold_error(
    status: int, description: str, *, style: ErrorStyle = "current", field: str | None = None
) -> web.Response:
    """A Metafold error response: ``{code, name, description}``, or the legacy ``{msg}`` /
    ``{errors: [{field, msg}]}`` bodies of older servers."""
    body: dict[str, Any]
    if style == "msg":
        body = {"msg": description}
    elif style == "errors":
        body = {"errors": [{"field": field or "request", "msg": description}]}
    else:
        body = {"code": status, "name": HTTPStatus(status).phrase, "description": description}
    return web.json_response(body, status=status)


def _state(name: str) -> JobState:
    return METAFOLD_STATES.get(name, JobState.UNKNOWN)


class FakeMetafold(MetafoldLifecycle, FakeApi):
    """The Metafold REST API's jobs and workflows, from memory; its OAuth2 token endpoint is
    :attr:`oauth` (a :class:`FakeTokenEndpoint`, hosted beside it), whose tokens it accepts.

    Options a test may set: ``error_style`` (``"current"`` ``{code, name, description}``,
    or the legacy ``"msg"`` / ``"errors"`` bodies), ``datetime_format`` (``"rfc1123"`` as the
    live API, ``"iso8601"`` as its docs), ``legacy_fields`` (serve the deprecated ``assets``,
    ``parameters`` and ``meta``, which the official SDK requires), ``token_lifetime`` (seconds
    of the tokens the token endpoint issues) and ``audience`` (the one accepted, matched
    exactly as Auth0 does; by default the server's own URL with a trailing slash, which is
    what the official SDK sends).

    Workflows posted to ``POST /projects/{p}/workflows`` (YAML definitions, read with PyYAML:
    the ``testing`` extra) run their jobs in ``needs`` order: ``workflow_job_timeline`` (or
    ``workflow_job_timelines[name]``) is how each walks, ``failing_jobs`` (name -> error)
    which fail; ``created_workflows`` and ``cancel_calls`` record what reached the server.
    """

    name = "metafold"
    prefixes: tuple[str, ...] = (_PREFIX,)

    def __init__(self, clock: FakeClock | None = None) -> None:
        FakeApi.__init__(self, clock)
        MetafoldLifecycle.__init__(self)
        #: The token endpoint client credentials are exchanged at.
        self.oauth: FakeTokenEndpoint = FakeTokenEndpoint(
            self.clock, token_prefix="mf-", scope="projects:read assets:read jobs:read"
        )
        self.error_style: ErrorStyle = "current"
        self.datetime_format: DatetimeFormat = "rfc1123"
        self.legacy_fields = True
        #: Raw (still percent-encoded) path and query of every Metafold request served.
        self.raw_paths: list[str] = []
        #: Ids of the workflows created through ``POST /projects/{p}/workflows``, in order.
        self.created_workflows: list[str] = []
        #: Workflow id -> how many ``POST .../cancel`` requests reached it (refused ones too).
        self.cancel_calls: Counter[str] = Counter()

    def attach(self, server: FakeServer) -> None:
        """Adopt the server's clock, and have the server host the token endpoint too."""
        super().attach(server)
        if server.apis.get(self.oauth.name) is not self.oauth:
            server.add_api(self.oauth)

    # -- tokens (delegated to the token endpoint) -------------------------------------------

    @property
    def clients(self) -> dict[str, str]:
        """Client id -> secret, as accepted by the token endpoint."""
        return self.oauth.clients

    @property
    def tokens(self) -> dict[str, float]:
        """Live issued tokens -> their expiry (fake seconds)."""
        return self.oauth.tokens

    @property
    def exchanges(self) -> int:
        """How many tokens the token endpoint issued."""
        return self.oauth.exchanges

    @property
    def token_lifetime(self) -> float:
        """Seconds an issued token lives."""
        return self.oauth.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, value: float) -> None:
        self.oauth.token_lifetime = value

    @property
    def audience(self) -> str | None:
        """The audience the token endpoint accepts (None: the server's URL and a slash)."""
        return self.oauth.audience

    @audience.setter
    def audience(self, value: str | None) -> None:
        self.oauth.audience = value

    def add_client(self, client_id: str, client_secret: str) -> None:
        """Accept these client credentials at the token endpoint."""
        self.oauth.add_client(client_id, client_secret)

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far (the next request with one gets a 401)."""
        self.oauth.revoke_tokens()

    def accepts(self, authorization: str | None) -> bool:
        """True if ``authorization`` carries a live token the token endpoint issued."""
        return self.oauth.accepts(authorization)

    def error(self, path: str, status: int, message: str, code: str | None = None) -> web.Response:
        """The error response Metafold (or, for the token path, Auth0) would send."""
        if self.oauth.owns(path):
            return self.oauth.error(path, status, message, code)
        return metafold_error(status, message, style=self.error_style)

    # -- wire format ------------------------------------------------------------------------

    def _time(self, at: float | None) -> str | None:
        return None if at is None else metafold_time(self.clock.wall(at), self.datetime_format)

    def _asset(self, job: FakeMetafoldJob, name: str, at: float) -> dict[str, Any]:
        stamp = self._time(at)
        return {
            "id": uuid.uuid5(uuid.NAMESPACE_URL, f"{job.id}/{name}").hex,
            "filename": f"{job.id[:16]}.bin",
            "size": 262144,
            "checksum": "sha256:" + uuid.uuid5(uuid.NAMESPACE_DNS, job.id).hex * 2,
            "created": stamp,
            "modified": stamp,
            "project_id": job.project_id,
            "job_id": job.id,
        }

    def job_body(
        self, project_id: str, job_id: str, memo: dict[str, Steps] | None = None
    ) -> dict[str, Any]:
        """The job as ``GET /projects/{id}/jobs/{job_id}`` returns it."""
        project = self.projects[project_id]
        seen = self._seen(project, job_id, self.clock.now(), {} if memo is None else memo)
        return self._job_body(project.jobs[job_id], seen)

    def _job_body(self, job: FakeMetafoldJob, seen: _Seen) -> dict[str, Any]:
        """:meth:`job_body` of ``job`` as ``seen`` (where its lifecycle stands)."""
        succeeded = _state(seen.state) is JobState.SUCCEEDED
        output_assets = (
            {"volume": self._asset(job, "volume", seen.finished)}
            if succeeded and seen.finished is not None
            else None
        )
        body: dict[str, Any] = {
            "id": job.id,
            "name": job.name,
            "type": job.type,
            "state": seen.state,
            "created": metafold_time(job.created_at, self.datetime_format),
            "started": self._time(seen.started),
            "finished": self._time(seen.finished),
            "error": seen.error,
            "inputs": {"assets": None, "params": dict(job.params)},
            "outputs": {
                "assets": output_assets,
                "params": {"face_count": "1000", "vertex_count": "3000"} if succeeded else None,
            },
            "needs": list(job.needs),
            "project_id": job.project_id,
            "workflow_id": job.workflow_id,
        }
        if self.legacy_fields:
            body["assets"] = list(output_assets.values()) if output_assets else []
            body["parameters"] = dict(job.params)
            body["meta"] = {}
        return body

    def workflow_body(
        self, project_id: str, workflow_id: str, memo: dict[str, Steps] | None = None
    ) -> dict[str, Any]:
        """The workflow as ``GET /projects/{id}/workflows/{workflow_id}`` returns it; its
        state follows its jobs (see ``workflow_moment``)."""
        workflow = self.projects[project_id].workflows[workflow_id]
        now = self.clock.now()
        seen = self.workflow_moment(project_id, workflow_id, now, {} if memo is None else memo)
        return {
            "id": workflow.id,
            "jobs": list(workflow.jobs),
            "state": seen.state,
            "created": metafold_time(workflow.created_at, self.datetime_format),
            "started": self._time(seen.started),
            "finished": self._time(seen.finished),
            "definition": workflow.definition,
            "project_id": workflow.project_id,
        }

    # -- tokens -----------------------------------------------------------------------------

    # -- handlers ---------------------------------------------------------------------------

    def _project(self, request: web.Request) -> _Project | web.Response:
        self.raw_paths.append(request.raw_path)
        project = self.projects.get(request.match_info["project_id"])
        if project is None:
            return metafold_error(404, "Project does not exist", style=self.error_style)
        return project

    def _listing(
        self,
        request: web.Request,
        rows: list[Row],
        sort_fields: Sequence[str],
        query_fields: Sequence[str],
    ) -> web.Response:
        try:
            chosen = select(rows, request.query, sort_fields, query_fields)
        except QueryError as exc:
            return metafold_error(400, str(exc), style=self.error_style, field=exc.parameter)
        return web.json_response([row[1] for row in chosen])

    async def handle_list_jobs(self, request: web.Request) -> web.Response:
        """``GET /projects/{projectId}/jobs`` (sort, q; a bare array, no pagination)."""
        project = self._project(request)
        if isinstance(project, web.Response):
            return project
        memo: dict[str, Steps] = {}
        now = self.clock.now()
        rows: list[Row] = []
        seen_now: dict[str, tuple[FakeMetafoldJob, _Seen]] = {}
        for job in project.jobs.values():
            seen = self._seen(project, job.id, now, memo)
            seen_now[job.id] = (job, seen)
            # What ``q`` can search (JOB_QUERY_FIELDS); the full body only for what is sent.
            searched = {"id": job.id, "name": job.name, "type": job.type, "state": seen.state}
            keys: dict[str, float | str | None] = {
                "id": job.id,
                "name": job.name,
                "created": job.created,
                "started": seen.started,
                "finished": seen.finished,
            }
            rows.append((job.id, searched, keys))
        try:
            chosen = select(rows, request.query, JOB_SORT_FIELDS, JOB_QUERY_FIELDS)
        except QueryError as exc:
            return metafold_error(400, str(exc), style=self.error_style, field=exc.parameter)
        return web.json_response([self._job_body(*seen_now[row[0]]) for row in chosen])

    async def handle_get_job(self, request: web.Request) -> web.Response:
        """``GET /projects/{projectId}/jobs/{jobId}``."""
        project = self._project(request)
        if isinstance(project, web.Response):
            return project
        job_id = request.match_info["id"]
        if job_id not in project.jobs:
            return metafold_error(404, "Resource does not exist", style=self.error_style)
        return web.json_response(self.job_body(request.match_info["project_id"], job_id))

    async def handle_list_workflows(self, request: web.Request) -> web.Response:
        """``GET /projects/{projectId}/workflows`` (sort, q)."""
        project = self._project(request)
        if isinstance(project, web.Response):
            return project
        memo: dict[str, Steps] = {}
        pid = request.match_info["project_id"]
        now = self.clock.now()
        rows: list[Row] = []
        for workflow in project.workflows.values():
            body = self.workflow_body(pid, workflow.id, memo)
            seen = self.workflow_moment(pid, workflow.id, now, memo)
            keys: dict[str, float | str | None] = {
                "id": workflow.id,
                "created": workflow.created,
                "started": seen.started,
                "finished": seen.finished,
            }
            rows.append((workflow.id, body, keys))
        return self._listing(request, rows, WORKFLOW_SORT_FIELDS, WORKFLOW_QUERY_FIELDS)

    async def handle_get_workflow(self, request: web.Request) -> web.Response:
        """``GET /projects/{projectId}/workflows/{workflowId}``."""
        found = self._workflow(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response(self.workflow_body(*found))

    def _workflow(self, request: web.Request) -> tuple[str, str] | web.Response:
        """(project id, workflow id) of a request on one workflow, or its 404."""
        project = self._project(request)
        if isinstance(project, web.Response):
            return project
        workflow_id = request.match_info["id"]
        if workflow_id not in project.workflows:
            return metafold_error(404, "Resource does not exist", style=self.error_style)
        return request.match_info["project_id"], workflow_id

    @staticmethod
    def _link(request: web.Request, project_id: str, workflow_id: str) -> str:
        """The absolute URL of a workflow's status, as the server is addressed."""
        path = f"/projects/{quote(project_id, safe='')}/workflows/{workflow_id}/status"
        return f"{request.url.origin()}{path}"

    async def handle_create_workflow(self, request: web.Request) -> web.Response:
        """``POST /projects/{projectId}/workflows``: a JSON body with ``definition`` (YAML,
        required), ``assets`` and ``parameters``; 202 with the pending workflow and its
        ``link``, or 400 for a body or definition the server refuses."""
        project = self._project(request)
        if isinstance(project, web.Response):
            return project
        pid = request.match_info["project_id"]
        try:
            payload = await request.json()
        except ValueError:
            return self._bad_request("Request body must be JSON")
        if not isinstance(payload, dict):
            return self._bad_request("Request body must be a JSON object")
        definition = payload.get("definition")
        if not isinstance(definition, str) or not definition.strip():
            return self._bad_request('Expected parameter "definition"', field="definition")
        maps: dict[str, Mapping[str, str] | None] = {}
        for name in ("assets", "parameters"):
            value = payload.get(name)
            if value is not None and not (
                isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
            ):
                return self._bad_request(
                    f'Parameter "{name}" must map "job.name" keys to strings', field=name
                )
            maps[name] = value
        try:
            workflow = self.create_workflow(
                pid, definition, assets=maps["assets"], parameters=maps["parameters"]
            )
        except DefinitionError as exc:
            return self._bad_request(str(exc), field="definition")
        except MissingPyYAML as exc:
            return metafold_error(500, str(exc), style=self.error_style)
        self.created_workflows.append(workflow.id)
        body = self.workflow_body(pid, workflow.id)
        body["link"] = self._link(request, pid, workflow.id)
        return web.json_response(body, status=202)

    async def handle_workflow_status(self, request: web.Request) -> web.Response:
        """``GET /projects/{projectId}/workflows/{workflowId}/status``: 202 with ``{"state":
        ...}`` while the workflow runs, 201 with the whole workflow and its ``link`` once it
        finished."""
        found = self._workflow(request)
        if isinstance(found, web.Response):
            return found
        body = self.workflow_body(*found)
        if not _state(body["state"]).is_terminal:
            return web.json_response({"state": body["state"]}, status=202)
        body["link"] = self._link(request, *found)
        return web.json_response(body, status=201)

    async def handle_cancel_workflow(self, request: web.Request) -> web.Response:
        """``POST /projects/{projectId}/workflows/{workflowId}/cancel``: an unfinished
        workflow and its unfinished jobs become canceled (200, the workflow); a finished
        one answers 400."""
        found = self._workflow(request)
        if isinstance(found, web.Response):
            return found
        self.cancel_calls[found[1]] += 1
        if not self.cancel_workflow(*found):
            state = self.workflow_body(*found)["state"]
            return self._bad_request(f"Workflow has already finished ({state})")
        return web.json_response(self.workflow_body(*found))

    def _bad_request(self, description: str, *, field: str | None = None) -> web.Response:
        return metafold_error(400, description, style=self.error_style, field=field)

    def add_routes(self, app: web.Application) -> None:
        """Register the Metafold routes on ``app`` (the token endpoint is a plugin of its own,
        :attr:`oauth`)."""
        app.router.add_get("/projects/{project_id}/jobs", self.handle_list_jobs)
        app.router.add_get("/projects/{project_id}/jobs/{id}", self.handle_get_job)
        app.router.add_get("/projects/{project_id}/workflows", self.handle_list_workflows)
        app.router.add_get("/projects/{project_id}/workflows/{id}", self.handle_get_workflow)
        app.router.add_post("/projects/{project_id}/workflows", self.handle_create_workflow)
        app.router.add_get(
            "/projects/{project_id}/workflows/{id}/status", self.handle_workflow_status
        )
        app.router.add_post(
            "/projects/{project_id}/workflows/{id}/cancel", self.handle_cancel_workflow
        )
