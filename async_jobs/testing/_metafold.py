"""The Metafold half of the fake server: project jobs and workflows with scripted lifecycles,
plus the OAuth2 token endpoint that client credentials are exchanged at.

Jobs walk a timeline (``pending`` -> ``started`` -> ``success``/``failure``/``canceled`` by
default) on the server's clock. A job with ``needs`` stays in its first state until every job
it needs has succeeded, and is canceled as soon as one of them fails or is canceled, as a
workflow engine does. A workflow's state follows its jobs. Responses carry exactly the fields
the official ``metafold`` SDK reads (its models reject unknown keys), datetimes in RFC 1123 as
the live API sends them (or ISO 8601 as its docs show, with ``datetime_format="iso8601"``).
"""

from __future__ import annotations

import math
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from http import HTTPStatus
from typing import Any, Literal

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

__all__ = [
    "DEFAULT_JOB_TIMELINE",
    "TOKEN_PATH",
    "FakeMetafold",
    "FakeMetafoldJob",
    "FakeMetafoldWorkflow",
    "is_metafold_path",
    "metafold_error",
    "metafold_time",
    "parse_query",
]

Timeline = Sequence[tuple[str, float | None]]
ErrorStyle = Literal["current", "msg", "errors"]
DatetimeFormat = Literal["rfc1123", "iso8601"]
#: pending 50 ms, started 100 ms, then success.
DEFAULT_JOB_TIMELINE: Timeline = (("pending", 0.05), ("started", 0.1), ("success", None))
#: Where the fake serves the OAuth2 client-credentials exchange.
TOKEN_PATH = "/oauth/token"
DEFAULT_TOKEN_LIFETIME = 86400.0
_SORT = re.compile(r"^([A-Za-z_]+):(-1|1)\Z")
_FIELD = re.compile(r"[A-Za-z_]+")
_NEVER = math.inf
Steps = list[tuple[float, str]]


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


def oauth_error(status: int, error: str, description: str) -> web.Response:
    """An OAuth2 token endpoint error (Auth0's shape): ``{error, error_description}``."""
    return web.json_response({"error": error, "error_description": description}, status=status)


def is_metafold_path(path: str) -> bool:
    """True for the paths the Metafold fake answers (``/projects...`` and the token path)."""
    return path == "/projects" or path.startswith("/projects/") or path == TOKEN_PATH


def parse_query(text: str, fields: Sequence[str]) -> list[tuple[bool, str, str]]:
    """Parse a Metafold ``q``: ``[!]field:value`` terms joined by ``AND``; a value may be
    quoted (``\\"`` and ``\\\\`` escape inside quotes). Returns (negated, field, pattern)
    triples; raises ValueError with the reason a server would give."""
    terms: list[tuple[bool, str, str]] = []
    pos, n = 0, len(text)
    expect_term = True
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        if not expect_term:
            end = pos
            while end < n and not text[end].isspace():
                end += 1
            word = text[pos:end]
            if word == "OR":
                raise ValueError("OR is not supported")
            if word != "AND":
                raise ValueError(f"expected AND at offset {pos}, got {word[:40]!r}")
            pos, expect_term = end, True
            continue
        negated = text[pos] == "!"
        if negated:
            pos += 1
        match = _FIELD.match(text, pos)
        if match is None or match.end() >= n or text[match.end()] != ":":
            raise ValueError(f"expected field:value at offset {pos}")
        name = match.group()
        if name not in fields:
            raise ValueError(f"unsupported search field {name!r}")
        pos = match.end() + 1
        if pos < n and text[pos] == '"':
            pos += 1
            chars: list[str] = []
            while True:
                if pos >= n:
                    raise ValueError("unterminated quote")
                char = text[pos]
                if char == "\\" and pos + 1 < n:
                    chars.append(text[pos + 1])
                    pos += 2
                    continue
                pos += 1
                if char == '"':
                    break
                chars.append(char)
            value = "".join(chars)
            if pos < n and not text[pos].isspace():
                raise ValueError(f"unexpected character after a quoted value at offset {pos}")
        else:
            end = pos
            while end < n and not text[end].isspace():
                end += 1
            value = text[pos:end]
            if '"' in value:
                raise ValueError(f"stray quote in {value[:40]!r}")
            pos = end
        if not value:
            raise ValueError(f"empty value for {name!r}")
        terms.append((negated, name, value))
        expect_term = False
    if not terms:
        raise ValueError("empty query")
    if expect_term:
        raise ValueError("query ends with AND")
    return terms


def _matches(pattern: str, value: str | None) -> bool:
    if value is None:
        return False
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _state(name: str) -> JobState:
    return METAFOLD_STATES.get(name, JobState.UNKNOWN)


@dataclass
class FakeMetafoldJob:
    """One scripted job: it sits in ``timeline[0]`` for its duration and until every job it
    ``needs`` succeeded, then walks the rest of the timeline."""

    id: str
    project_id: str
    type: str
    name: str | None
    created: float
    created_at: datetime
    timeline: list[tuple[str, float | None]]
    error: str | None = None
    needs: list[str] = field(default_factory=list)
    workflow_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    overrides: list[tuple[float, str, str | None]] = field(default_factory=list)


@dataclass
class FakeMetafoldWorkflow:
    """A workflow: its jobs (ids, in definition order) and its YAML definition."""

    id: str
    project_id: str
    created: float
    created_at: datetime
    jobs: list[str]
    definition: str


@dataclass
class _Project:
    jobs: dict[str, FakeMetafoldJob] = field(default_factory=dict)
    workflows: dict[str, FakeMetafoldWorkflow] = field(default_factory=dict)


@dataclass(frozen=True)
class _Seen:
    state: str
    started: float | None
    finished: float | None
    error: str | None


class FakeMetafold:
    """The Metafold REST API's jobs and workflows (and its token endpoint), from memory.

    Options a test may set: ``error_style`` (``"current"`` ``{code, name, description}``,
    or the legacy ``"msg"`` / ``"errors"`` bodies), ``datetime_format`` (``"rfc1123"`` as the
    live API, ``"iso8601"`` as its docs), ``legacy_fields`` (serve the deprecated ``assets``,
    ``parameters`` and ``meta``, which the official SDK requires), ``token_lifetime`` (seconds
    of the tokens the token endpoint issues) and ``audience`` (the one accepted, matched
    exactly as Auth0 does; by default the server's own URL with a trailing slash, which is
    what the official SDK sends).
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.projects: dict[str, _Project] = {}
        self.error_style: ErrorStyle = "current"
        self.datetime_format: DatetimeFormat = "rfc1123"
        self.legacy_fields = True
        self.clients: dict[str, str] = {}
        self.tokens: dict[str, float] = {}
        self.token_lifetime = DEFAULT_TOKEN_LIFETIME
        self.audience: str | None = None
        self.exchanges: int = 0
        #: Raw (still percent-encoded) path and query of every Metafold request served.
        self.raw_paths: list[str] = []
        self._last_created: float | None = None

    # -- scripting --------------------------------------------------------------------------

    def add_project(self, project_id: str) -> None:
        """Create an empty project (``add_job`` and ``add_workflow`` create theirs)."""
        self.projects.setdefault(project_id, _Project())

    def _created(self) -> tuple[float, datetime]:
        now = self.clock.now()
        # Keep creation instants distinct so "created" order is total, as on the real API.
        if self._last_created is not None and now <= self._last_created:
            now = self._last_created + 1e-6
        self._last_created = now
        return now, self.clock.wall(now)

    def add_job(
        self,
        project_id: str,
        type: str = "implicit/from-mesh",
        timeline: Timeline = DEFAULT_JOB_TIMELINE,
        *,
        name: str | None = None,
        error: str | None = None,
        needs: Sequence[str] = (),
        id: str | None = None,
        params: Mapping[str, Any] | None = None,
        workflow_id: str | None = None,
    ) -> FakeMetafoldJob:
        """Create a job that walks ``timeline``: (state, seconds in it) pairs, the last one's
        duration None (it stays there). ``needs`` are ids of jobs in the same project; the
        job leaves its first state only once they all succeeded. A ``failure`` reports
        ``error``."""
        if not timeline:
            raise ValueError("timeline must have at least one step")
        self.add_project(project_id)
        project = self.projects[project_id]
        for need in needs:
            if need not in project.jobs:
                raise ValueError(f"needs names an unknown job {need!r}")
        created, created_at = self._created()
        job = FakeMetafoldJob(
            id=id or uuid.uuid4().hex,
            project_id=project_id,
            type=type,
            name=name,
            created=created,
            created_at=created_at,
            timeline=list(timeline),
            error=error,
            needs=list(needs),
            workflow_id=workflow_id,
            params=dict(params) if params is not None else {"resolution": "256"},
        )
        project.jobs[job.id] = job
        return job

    def add_workflow(
        self,
        project_id: str,
        jobs: Sequence[Mapping[str, Any]],
        *,
        id: str | None = None,
    ) -> FakeMetafoldWorkflow:
        """Create a workflow and its jobs. Each job is a mapping of :meth:`add_job` keywords
        (``name``, ``type``, ``timeline``, ``error``, ``params``) whose ``needs`` are the
        *names* of other jobs of the workflow, as in a workflow definition."""
        workflow_id = id or uuid.uuid4().hex
        names = [str(spec.get("name") or f"job-{index}") for index, spec in enumerate(jobs)]
        if len(set(names)) != len(names):
            raise ValueError("job names must be unique within a workflow")
        ids = {name: uuid.uuid4().hex for name in names}
        created: dict[str, FakeMetafoldJob] = {}
        pending = list(zip(names, jobs, strict=True))
        while pending:  # create each job after the jobs it needs
            for entry in pending:
                name, spec = entry
                spec_needs = [str(need) for need in spec.get("needs", ())]
                for need in spec_needs:
                    if need not in ids:
                        raise ValueError(f"job {name!r} needs an unknown job {need!r}")
                if all(need in created for need in spec_needs):
                    break
            else:
                raise ValueError("the workflow's needs form a cycle")
            pending.remove(entry)
            created[name] = self.add_job(
                project_id,
                spec.get("type", "implicit/from-mesh"),
                spec.get("timeline", DEFAULT_JOB_TIMELINE),
                name=name,
                error=spec.get("error"),
                needs=[ids[need] for need in spec_needs],
                id=ids[name],
                params=spec.get("params"),
                workflow_id=workflow_id,
            )
        at, at_wall = self._created()
        workflow = FakeMetafoldWorkflow(
            id=workflow_id,
            project_id=project_id,
            created=at,
            created_at=at_wall,
            jobs=[ids[name] for name in names],
            definition=_definition(names, jobs),
        )
        self.projects[project_id].workflows[workflow_id] = workflow
        return workflow

    def set_state(
        self, project_id: str, job_id: str, state: str, *, error: str | None = None
    ) -> None:
        """Move a job to ``state`` now, dropping the rest of its timeline."""
        job = self.projects[project_id].jobs[job_id]
        job.overrides.append((self.clock.now(), state, error))

    def cancel_workflow(self, project_id: str, workflow_id: str) -> None:
        """Cancel every job of the workflow that has not ended yet."""
        project = self.projects[project_id]
        for job_id in project.workflows[workflow_id].jobs:
            if not _state(self.state(project_id, job_id)).is_terminal:
                self.set_state(project_id, job_id, "canceled")

    def state(self, project_id: str, job_id: str) -> str:
        """A job's state right now (the server's truth)."""
        return self._seen(self.projects[project_id], job_id, self.clock.now(), {}).state

    # -- lifecycle --------------------------------------------------------------------------

    def _steps(self, project: _Project, job_id: str, memo: dict[str, Steps]) -> Steps:
        """When the job enters each state: (fake time, state), resolved against its needs."""
        if job_id in memo:
            return memo[job_id]
        memo[job_id] = [(0.0, "pending")]  # a placeholder that breaks cycles
        job = project.jobs[job_id]
        first, first_for = job.timeline[0]
        ready = _NEVER if first_for is None else job.created + first_for
        blocked: tuple[float, str] | None = None
        for need in job.needs:
            ended = next(
                ((at, s) for at, s in self._steps(project, need, memo) if _state(s).is_terminal),
                None,
            )
            if ended is None:
                ready = _NEVER
            elif _state(ended[1]) is JobState.SUCCEEDED:
                ready = max(ready, ended[0])
            elif blocked is None or ended[0] < blocked[0]:
                blocked = (ended[0], need)
        steps: Steps = [(job.created, first)]
        if blocked is not None:
            steps.append((max(job.created, blocked[0]), "canceled"))
        elif ready != _NEVER:
            at = ready
            for state, duration in job.timeline[1:]:
                steps.append((at, state))
                if duration is None:
                    break
                at += duration
        for at, state, _ in job.overrides:
            steps = [step for step in steps if step[0] <= at] + [(at, state)]
        memo[job_id] = steps
        return steps

    def _seen(self, project: _Project, job_id: str, now: float, memo: dict[str, Steps]) -> _Seen:
        job = project.jobs[job_id]
        steps = [step for step in self._steps(project, job_id, memo) if step[0] <= now]
        state = steps[-1][1] if steps else job.timeline[0][0]
        started = finished = None
        for at, name in steps:
            mapped = _state(name)
            if started is None and mapped is JobState.RUNNING:
                started = at
            if mapped.is_terminal:
                finished = at
                if started is None and mapped is not JobState.CANCELED:
                    started = at  # it ran, however briefly; a canceled job may never have
                break
        error: str | None = None
        forced = [err for at, name, err in job.overrides if at <= now and name == state and err]
        if forced:
            error = forced[-1]
        elif _state(state) is JobState.FAILED:
            error = job.error
        elif _state(state) is JobState.CANCELED and not job.overrides:
            upstream = [
                need
                for need in job.needs
                if _state(self._seen(project, need, now, memo).state)
                in (JobState.FAILED, JobState.CANCELED)
            ]
            if upstream:
                error = f"canceled: upstream job {upstream[0]} did not succeed"
        return _Seen(state, started, finished, error)

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
        job = project.jobs[job_id]
        seen = self._seen(project, job_id, self.clock.now(), {} if memo is None else memo)
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
        state follows its jobs."""
        project = self.projects[project_id]
        workflow = project.workflows[workflow_id]
        now = self.clock.now()
        memo = {} if memo is None else memo
        seen = [self._seen(project, job_id, now, memo) for job_id in workflow.jobs]
        states = [_state(one.state) for one in seen]
        started_at = [one.started for one in seen if one.started is not None]
        if seen and all(state.is_terminal for state in states):
            if JobState.FAILED in states:
                state = "failure"
            elif JobState.CANCELED in states:
                state = "canceled"
            else:
                state = "success"
            finished: float | None = max(one.finished or now for one in seen)
        else:
            state = "started" if any(s is not JobState.PENDING for s in states) else "pending"
            finished = None
        return {
            "id": workflow.id,
            "jobs": list(workflow.jobs),
            "state": state,
            "created": metafold_time(workflow.created_at, self.datetime_format),
            "started": self._time(min(started_at)) if started_at else None,
            "finished": self._time(finished),
            "definition": workflow.definition,
            "project_id": workflow.project_id,
        }

    # -- tokens -----------------------------------------------------------------------------

    def add_client(self, client_id: str, client_secret: str) -> None:
        """Accept these client credentials at the token endpoint."""
        self.clients[client_id] = client_secret

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far (the next request with one gets a 401)."""
        self.tokens.clear()

    def accepts(self, authorization: str | None) -> bool:
        """True if ``authorization`` carries a live token this fake issued."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        expires = self.tokens.get(authorization[len("Bearer ") :])
        return expires is not None and self.clock.now() < expires

    def error(self, path: str, status: int, message: str) -> web.Response:
        """The error response Metafold (or, for the token path, Auth0) would send."""
        if path == TOKEN_PATH:
            code = "access_denied" if status in (401, 403) else "server_error"
            return oauth_error(status, code, message)
        return metafold_error(status, message, style=self.error_style)

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
        rows: list[tuple[str, dict[str, Any], dict[str, float | str | None]]],
        sort_fields: Sequence[str],
        query_fields: Sequence[str],
    ) -> web.Response:
        query = request.query
        rows = sorted(rows, key=lambda row: row[0], reverse=True)  # default: id descending
        if "q" in query:
            try:
                terms = parse_query(query["q"], query_fields)
            except ValueError as exc:
                return metafold_error(
                    400, f"Invalid query: {exc}", style=self.error_style, field="q"
                )
            rows = [
                row
                for row in rows
                if all(
                    _matches(pattern, _text(row[1].get(name))) != negated
                    for negated, name, pattern in terms
                )
            ]
        if "sort" in query:
            match = _SORT.match(query["sort"])
            if match is None or match.group(1) not in sort_fields:
                return metafold_error(
                    400,
                    f"Invalid sort string {query['sort']!r}: expected field:order with field "
                    f"one of {', '.join(sort_fields)} and order 1 or -1",
                    style=self.error_style,
                    field="sort",
                )
            name, descending = match.group(1), match.group(2) == "-1"
            rows.sort(key=lambda row: _sort_key(row[2][name]), reverse=descending)
        return web.json_response([row[1] for row in rows])

    async def handle_list_jobs(self, request: web.Request) -> web.Response:
        """``GET /projects/{projectId}/jobs`` (sort, q; a bare array, no pagination)."""
        project = self._project(request)
        if isinstance(project, web.Response):
            return project
        memo: dict[str, Steps] = {}
        pid = request.match_info["project_id"]
        now = self.clock.now()
        rows = []
        for job in project.jobs.values():
            body = self.job_body(pid, job.id, memo)
            seen = self._seen(project, job.id, now, memo)
            keys: dict[str, float | str | None] = {
                "id": job.id,
                "name": job.name,
                "created": job.created,
                "started": seen.started,
                "finished": seen.finished,
            }
            rows.append((job.id, body, keys))
        return self._listing(request, rows, JOB_SORT_FIELDS, JOB_QUERY_FIELDS)

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
        rows = []
        for workflow in project.workflows.values():
            body = self.workflow_body(pid, workflow.id, memo)
            keys: dict[str, float | str | None] = {
                "id": workflow.id,
                "created": workflow.created,
                "started": self._seconds(pid, workflow.id, "started", memo),
                "finished": self._seconds(pid, workflow.id, "finished", memo)
                if body["finished"]
                else None,
            }
            rows.append((workflow.id, body, keys))
        return self._listing(request, rows, WORKFLOW_SORT_FIELDS, WORKFLOW_QUERY_FIELDS)

    def _seconds(
        self, project_id: str, workflow_id: str, which: str, memo: dict[str, Steps]
    ) -> float | None:
        project = self.projects[project_id]
        now = self.clock.now()
        seen = [self._seen(project, j, now, memo) for j in project.workflows[workflow_id].jobs]
        values: list[float] = [
            getattr(one, which) for one in seen if getattr(one, which) is not None
        ]
        if not values:
            return None
        return min(values) if which == "started" else max(values)

    async def handle_get_workflow(self, request: web.Request) -> web.Response:
        """``GET /projects/{projectId}/workflows/{workflowId}``."""
        project = self._project(request)
        if isinstance(project, web.Response):
            return project
        workflow_id = request.match_info["id"]
        if workflow_id not in project.workflows:
            return metafold_error(404, "Resource does not exist", style=self.error_style)
        return web.json_response(self.workflow_body(request.match_info["project_id"], workflow_id))

    async def handle_token(self, request: web.Request) -> web.Response:
        """``POST /oauth/token``: the client-credentials grant (form or JSON body), answered
        as Auth0 does."""
        try:
            if request.content_type == "application/json":
                raw = await request.json()
                form = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
            else:
                form = {str(k): str(v) for k, v in (await request.post()).items()}
        except ValueError:
            return oauth_error(400, "invalid_request", "Malformed request body")
        grant = form.get("grant_type")
        if grant != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", f"Unsupported grant type: {grant}")
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if not client_id or self.clients.get(client_id) != secret or not secret:
            return oauth_error(401, "access_denied", "Unauthorized")
        origin = str(request.url.origin())
        audience = form.get("audience", "")
        if audience != (self.audience or origin + "/"):
            return oauth_error(403, "access_denied", f"Service not found: {audience}")
        token = "mf-" + secrets.token_urlsafe(24)
        self.exchanges += 1
        self.tokens[token] = self.clock.now() + self.token_lifetime
        lifetime: float | int = self.token_lifetime
        if float(lifetime).is_integer():
            lifetime = int(lifetime)
        return web.json_response(
            {
                "access_token": token,
                "expires_in": lifetime,
                "scope": "projects:read assets:read jobs:read",
                "token_type": "Bearer",
            }
        )

    def add_routes(self, app: web.Application) -> None:
        """Register the Metafold routes (and the token endpoint) on ``app``."""
        app.router.add_get("/projects/{project_id}/jobs", self.handle_list_jobs)
        app.router.add_get("/projects/{project_id}/jobs/{id}", self.handle_get_job)
        app.router.add_get("/projects/{project_id}/workflows", self.handle_list_workflows)
        app.router.add_get("/projects/{project_id}/workflows/{id}", self.handle_get_workflow)
        app.router.add_post(TOKEN_PATH, self.handle_token)


def _sort_key(value: float | str | None) -> tuple[bool, float | str]:
    """None first (as the smallest value), then by value."""
    return (False, 0.0) if value is None else (True, value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _definition(names: Sequence[str], jobs: Sequence[Mapping[str, Any]]) -> str:
    """A workflow definition in the YAML shape Metafold documents."""
    lines = ["---", "jobs:"]
    for name, spec in zip(names, jobs, strict=True):
        lines.append(f"  {name}:")
        lines.append(f"    type: {spec.get('type', 'implicit/from-mesh')}")
        needs = [str(need) for need in spec.get("needs", ())]
        if needs:
            lines.append(f"    needs: [{', '.join(needs)}]")
    return "\n".join(lines) + "\n"
