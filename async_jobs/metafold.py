"""MetafoldClient: Metafold project jobs and workflows, plus the ``sort``/``q`` builders and
:func:`wait_for_workflow_jobs`.

``q`` builds a search query the way the API documents it: ``field:value`` terms joined by
``AND`` (there is no ``OR``), ``!`` negates a term, ``*`` is a wildcard, a value with spaces or
quotes is quoted::

    q(state="started", type="implicit/from-mesh")   # 'state:started AND type:implicit/from-mesh'
    q(name="My *", state=Not("failure"))             # 'name:"My *" AND !state:failure'
    q(name=["*mesh*", Not("*old*")])                 # 'name:*mesh* AND !name:*old*'
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, TypeVar

import anyio
import msgspec

from . import _clock
from ._api import JobApi, JobKind
from ._client import ApiClient, ClientOptions, ClientSettings, from_env
from ._errors import WaitTimeout
from ._http import Auth, ClientSession, ErrorDetails, QueryValue, StaticTokenAuth, api_path
from ._oauth import DEFAULT_REFRESH_MARGIN, ClientCredentialsAuth
from ._paging import Page, merge_streams
from ._policy import PollSchedule
from ._poll import JobRef, OnUpdate, check_timeout, wait_all, watch
from .models.metafold import (
    JOB_QUERY_FIELDS,
    JOB_SORT_FIELDS,
    METAFOLD_ACTIVE_STATES,
    WORKFLOW_QUERY_FIELDS,
    WORKFLOW_SORT_FIELDS,
    JobSort,
    JobSortField,
    MetafoldJob,
    MetafoldWorkflow,
    WorkflowSort,
    WorkflowSortField,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TOKEN_URL",
    "Dependent",
    "JobSortSpec",
    "METAFOLD_API",
    "METAFOLD_JOB",
    "METAFOLD_WORKFLOW",
    "MetafoldClient",
    "MetafoldQuery",
    "Not",
    "Resource",
    "SortSpec",
    "WorkflowSortSpec",
    "build_sort",
    "dependency_order",
    "metafold_error_details",
    "q",
    "wait_for_workflow_jobs",
]

DEFAULT_BASE_URL = "https://api.metafold3d.com"
#: Where the official SDK exchanges client credentials (Auth0 tenant ``metafold3d.us``).
DEFAULT_TOKEN_URL = "https://metafold3d.us.auth0.com/oauth/token"

Resource = Literal["jobs", "workflows"]
#: ``"created:-1"`` (the API's own form) or ``("created", True)`` (field, descending).
SortSpec: TypeAlias = str | tuple[str, bool]
#: ``list_jobs(sort=)``: a :data:`SortSpec` typed ``Literal[...] | str`` (the field of the tuple
#: form too): known values complete in editors, and any other field is sent as is.
JobSortSpec: TypeAlias = JobSort | str | tuple[JobSortField | str, bool]
#: ``list_workflows(sort=)``: as :data:`JobSortSpec`, with the fields workflows sort by.
WorkflowSortSpec: TypeAlias = WorkflowSort | str | tuple[WorkflowSortField | str, bool]

_SORT_FIELDS: dict[str, tuple[str, ...]] = {
    "jobs": JOB_SORT_FIELDS,
    "workflows": WORKFLOW_SORT_FIELDS,
}
_QUERY_FIELDS: dict[str, tuple[str, ...]] = {
    "jobs": JOB_QUERY_FIELDS,
    "workflows": WORKFLOW_QUERY_FIELDS,
}
_SORT = re.compile(r"^([A-Za-z_]+):(-1|1)\Z")
#: Characters a value may hold unquoted; anything else (spaces, quotes, parentheses, ...)
#: gets the value quoted, which the grammar always allows.
_BARE_VALUE = re.compile(r"^[A-Za-z0-9_\-./*@+]+\Z")

_job_list_decoder = msgspec.json.Decoder(list[MetafoldJob])
_workflow_list_decoder = msgspec.json.Decoder(list[MetafoldWorkflow])


# -- sort and q ------------------------------------------------------------------------------


def _check_resource(resource: str) -> Resource:
    if resource == "jobs":
        return "jobs"
    if resource == "workflows":
        return "workflows"
    raise ValueError(f"resource must be 'jobs' or 'workflows', got {resource!r}")


def build_sort(sort: SortSpec, *, resource: Resource = "jobs") -> str:
    """The ``sort`` parameter: ``"created:-1"`` as is, or ``("created", True)`` (descending)
    as ``"created:-1"``. The fields the API documents (jobs: id, name, created, started,
    finished; workflows: id, created, started, finished) complete in editors; another field is
    sent as is (a server that does not sort by it answers 400, a BadRequestError)."""
    fields = _SORT_FIELDS[_check_resource(resource)]
    if isinstance(sort, str):
        match = _SORT.match(sort)
        if match is None:
            raise ValueError(
                f"sort must look like 'field:1' or 'field:-1' (field one of "
                f"{', '.join(fields)}), got {sort!r}"
            )
        field, order = match.group(1), match.group(2)
    elif (
        isinstance(sort, tuple)
        and len(sort) == 2
        and isinstance(sort[0], str)
        and isinstance(sort[1], bool)
    ):
        field, order = sort[0], "-1" if sort[1] else "1"
        if _SORT.match(f"{field}:{order}") is None:
            raise ValueError(f"a sort field is letters and underscores, got {field!r}")
    else:
        raise ValueError(f"sort must be 'field:order' or (field, descending), got {sort!r}")
    return f"{field}:{order}"


@dataclass(frozen=True)
class Not:
    """A negated value for :func:`q`: ``q(state=Not("failure"))`` is ``!state:failure``."""

    value: str


class MetafoldQuery(str):
    """A ``q`` string built by :func:`q`; it remembers the fields it searches so a client
    method can check them against its resource before sending anything."""

    fields: frozenset[str]

    def __new__(cls, text: str, fields: frozenset[str]) -> MetafoldQuery:
        query = super().__new__(cls, text)
        query.fields = fields
        return query


def _quote_value(value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"query values must be strings, got {type(value).__name__}")
    if not value:
        raise ValueError("query values must be non-empty")
    if _BARE_VALUE.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _term(field: str, value: str | Not) -> str:
    if isinstance(value, Not):
        return f"!{field}:{_quote_value(value.value)}"
    return f"{field}:{_quote_value(value)}"


def q(*, resource: Resource = "jobs", **terms: str | Not | Sequence[str | Not]) -> MetafoldQuery:
    """A Metafold search query: one ``field:value`` term per keyword, joined by ``AND``.

    A value is matched with ``*`` as a wildcard; it is quoted when it holds anything but
    letters, digits and ``_-./*@+`` (a ``"`` or ``\\`` inside is backslash-escaped); wrap it in
    :class:`Not` to negate the term; give a list to AND several terms on one field. Fields are
    checked against ``resource`` (jobs: id, name, type, state; workflows: id, state). The API
    has no OR, so neither has this builder.
    """
    allowed = _QUERY_FIELDS[_check_resource(resource)]
    parts: list[str] = []
    for field, value in terms.items():
        if field not in allowed:
            raise ValueError(f"{resource} can be searched by {', '.join(allowed)}; got {field!r}")
        values: Sequence[str | Not] = [value] if isinstance(value, (str, Not)) else list(value)
        if not values:
            raise ValueError(f"no value given for {field!r}")
        parts.extend(_term(field, one) for one in values)
    if not parts:
        raise ValueError("q() needs at least one term")
    return MetafoldQuery(" AND ".join(parts), frozenset(terms))


def _query_param(query: str | None, resource: Resource) -> str | None:
    if query is None:
        return None
    if not isinstance(query, str):
        raise TypeError(f"q must be a string, got {type(query).__name__}")
    if isinstance(query, MetafoldQuery):
        allowed = _QUERY_FIELDS[resource]
        unknown = sorted(query.fields - set(allowed))
        if unknown:
            raise ValueError(
                f"{resource} can be searched by {', '.join(allowed)}; got {', '.join(unknown)}"
            )
    return str(query)  # any other string is the caller's and is sent as is


# -- the API --------------------------------------------------------------------------------


class _FieldError(msgspec.Struct):
    field: str | None = None
    msg: str | None = None


class _MetafoldError(msgspec.Struct):
    """Metafold's error body: ``{code, name, description}``; older servers send ``{msg}`` or
    ``{errors: [{field, msg}]}``."""

    code: int | str | None = None
    name: str | None = None
    description: str | None = None
    msg: str | None = None
    errors: list[_FieldError] | None = None


_error_decoder = msgspec.json.Decoder(_MetafoldError)


def metafold_error_details(body: bytes) -> ErrorDetails:
    """A Metafold error body as :class:`ErrorDetails` (its ``code`` is the HTTP status, so the
    ``name`` is the error code)."""
    parsed = _error_decoder.decode(body)
    field_errors = "; ".join(
        f"{e.field}: {e.msg}" if e.field else (e.msg or "") for e in parsed.errors or ()
    )
    message = parsed.description or parsed.msg or field_errors or None
    code = parsed.name or (parsed.code if isinstance(parsed.code, str) else None)
    return ErrorDetails(message, code)


def _active_jobs(mf: MetafoldClient, project_id: str) -> AsyncIterator[MetafoldJob]:
    return mf._active(project_id, "jobs")


def _active_workflows(mf: MetafoldClient, project_id: str) -> AsyncIterator[MetafoldWorkflow]:
    return mf._active(project_id, "workflows")


async def _cancel_workflow(
    mf: MetafoldClient, project_id: str, workflow_id: str
) -> MetafoldWorkflow:
    return await mf.cancel_workflow(workflow_id, project_id=project_id)


#: A Metafold project job, listed per project.
METAFOLD_JOB: JobKind[MetafoldJob] = JobKind(
    "metafold.job",
    MetafoldJob,
    "/projects/{project_id}/jobs/{id}",
    group="metafold.jobs",
    list_active=_active_jobs,
    label="mf job",
)
#: A Metafold workflow, listed per project; its refs can cancel it (``POST .../cancel``).
METAFOLD_WORKFLOW: JobKind[MetafoldWorkflow] = JobKind(
    "metafold.workflow",
    MetafoldWorkflow,
    "/projects/{project_id}/workflows/{id}",
    group="metafold.workflows",
    list_active=_active_workflows,
    label="mf workflow",
    cancel=_cancel_workflow,
)
#: The Metafold API: jobs, workflows and Metafold's error bodies (no request-id header).
METAFOLD_API = JobApi(
    "metafold", (METAFOLD_JOB, METAFOLD_WORKFLOW), decode_error=metafold_error_details
)


# -- the client ------------------------------------------------------------------------------


def _check_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _string_map(name: str, mapping: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name} must be a mapping of strings, got {type(mapping).__name__}")
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{name} maps strings to strings, got {key!r}: {value!r}")
    return dict(mapping)


class MetafoldClient(ApiClient):
    """Async client for the Metafold REST API (https://api.metafold3d.com).

    ``token`` defaults to ``METAFOLD_ACCESS_TOKEN``, ``base_url`` to ``METAFOLD_BASE_URL``
    then ``https://api.metafold3d.com``, ``project_id`` (the default project of every call)
    to ``METAFOLD_PROJECT_ID``. Instead of a token, pass ``client_id`` and ``client_secret``
    (or set ``METAFOLD_CLIENT_ID`` / ``METAFOLD_CLIENT_SECRET``): they are exchanged at
    ``token_url`` (OAuth2 client credentials, ``audience`` = the base URL, as the official
    SDK sends it) for a token that is renewed before it expires and once after a 401. An
    explicit ``token`` wins over credentials from the environment; explicit credentials win
    over any token, as in the official SDK. ``options=`` (:class:`~async_jobs.ClientOptions`)
    or its fields as keywords set how requests are sent. Use as
    ``async with MetafoldClient() as mf:``.
    """

    api = METAFOLD_API
    credentials_hint = (
        "no Metafold credentials: set METAFOLD_ACCESS_TOKEN "
        "(or METAFOLD_CLIENT_ID and METAFOLD_CLIENT_SECRET)"
    )

    def __init__(
        self,
        token: str | None = None,
        base_url: str | None = None,
        project_id: str | None = None,
        session: ClientSession | None = None,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        token_url: str | None = None,
        audience: str | None = None,
        options: ClientOptions | None = None,
        **settings: Unpack[ClientSettings],
    ) -> None:
        options = (options or ClientOptions()).replace(**settings)
        if bool(client_id) != bool(client_secret):
            raise ValueError("pass client_id and client_secret together")
        url = from_env(base_url, "METAFOLD_BASE_URL") or DEFAULT_BASE_URL
        self.project_id: str | None = from_env(project_id, "METAFOLD_PROJECT_ID")
        if not (client_id and client_secret) and not token:
            client_id = from_env(None, "METAFOLD_CLIENT_ID")
            client_secret = from_env(None, "METAFOLD_CLIENT_SECRET")
        auth: Auth
        oauth: ClientCredentialsAuth | None = None
        if client_id and client_secret:
            oauth = auth = ClientCredentialsAuth(
                client_id,
                client_secret,
                token_url=token_url or DEFAULT_TOKEN_URL,
                audience=audience or url.rstrip("/") + "/",
                refresh_margin=DEFAULT_REFRESH_MARGIN,
                allow_insecure_http=options.allow_insecure_http,
            )
        else:
            auth = StaticTokenAuth(from_env(token, "METAFOLD_ACCESS_TOKEN"))
        super().__init__(base_url=url, auth=auth, session=session, options=options)
        if oauth is not None:
            oauth.bind(self._http)
        self._oauth = oauth

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, project_id={self.project_id!r})"

    @property
    def token_exchanges(self) -> int:
        """How many client-credentials exchanges this client has made (0 with a token)."""
        return self._oauth.exchanges if self._oauth is not None else 0

    def resolve_project_id(self, project_id: str | None = None) -> str:
        """``project_id``, else the client's default; ValueError if there is neither."""
        chosen = project_id or self.project_id
        if not chosen:
            raise ValueError(
                "a project id is required: pass project_id= or set one on the client "
                "(or METAFOLD_PROJECT_ID)"
            )
        return _check_id("project_id", chosen)

    def _list_params(
        self, sort: SortSpec | None, query: str | None, resource: Resource
    ) -> dict[str, QueryValue]:
        return {
            "sort": None if sort is None else build_sort(sort, resource=resource),
            "q": _query_param(query, resource),
        }

    # -- jobs -------------------------------------------------------------------------------

    async def list_jobs(
        self,
        project_id: str | None = None,
        *,
        sort: JobSortSpec | None = None,
        q: str | None = None,
    ) -> list[MetafoldJob]:
        """``GET /projects/{id}/jobs``: every matching job (the API does not paginate).

        ``sort`` is ``"field:1"``/``"field:-1"`` or ``(field, descending)``; ``q`` a search
        string (build one with :func:`q`). Both are checked before any request is sent.
        ``sort`` is typed ``Literal[...] | str`` (:data:`JobSortSpec`): known values complete
        in editors, new server values still type-check.
        """
        pid = self.resolve_project_id(project_id)
        params = self._list_params(sort, q, "jobs")
        return await self._http.get(api_path("projects", pid, "jobs"), _job_list_decoder, params)

    async def get_job(self, job_id: str, *, project_id: str | None = None) -> MetafoldJob:
        """``GET /projects/{id}/jobs/{job_id}``."""
        return await self.fetch(METAFOLD_JOB, self.resolve_project_id(project_id), job_id)

    def job(self, job_id: str, *, project_id: str | None = None) -> JobRef[MetafoldJob]:
        """A JobRef for :func:`~async_jobs.wait_until_terminal` and :func:`~async_jobs.watch`."""
        return self.ref(METAFOLD_JOB, self.resolve_project_id(project_id), job_id)

    def _active(self, project_id: str, resource: Resource) -> AsyncIterator[Any]:
        """Every pending or started job (or workflow) of a project: one request per active
        state, sent concurrently (the API has no OR)."""

        async def one_state(state: str, token: str | None) -> Page[Any]:
            query = q(resource=resource, state=state)
            if resource == "jobs":
                found: list[Any] = await self.list_jobs(project_id, q=query)
            else:
                found = await self.list_workflows(project_id, q=query)
            return Page(items=found)

        return merge_streams(
            [partial(one_state, state) for state in METAFOLD_ACTIVE_STATES], key=None
        )

    # -- workflows --------------------------------------------------------------------------

    async def list_workflows(
        self,
        project_id: str | None = None,
        *,
        sort: WorkflowSortSpec | None = None,
        q: str | None = None,
    ) -> list[MetafoldWorkflow]:
        """``GET /projects/{id}/workflows``: every matching workflow (no pagination).

        ``sort`` fields: id, created, started, finished; ``q`` fields: id, state. ``sort`` is
        typed ``Literal[...] | str`` (:data:`WorkflowSortSpec`): known values complete in
        editors, new server values still type-check.
        """
        pid = self.resolve_project_id(project_id)
        params = self._list_params(sort, q, "workflows")
        return await self._http.get(
            api_path("projects", pid, "workflows"), _workflow_list_decoder, params
        )

    async def get_workflow(
        self, workflow_id: str, *, project_id: str | None = None
    ) -> MetafoldWorkflow:
        """``GET /projects/{id}/workflows/{workflow_id}``."""
        pid = self.resolve_project_id(project_id)
        return await self.fetch(METAFOLD_WORKFLOW, pid, workflow_id)

    def workflow(
        self, workflow_id: str, *, project_id: str | None = None
    ) -> JobRef[MetafoldWorkflow]:
        """A JobRef on the workflow itself (its own state); see also
        :func:`wait_for_workflow_jobs`. It can cancel the workflow (``await ref.cancel()``,
        or ``wait_until_terminal(..., cancel_on_timeout=True)``); a :meth:`job` ref cannot,
        as the API has no job cancel."""
        return self.ref(METAFOLD_WORKFLOW, self.resolve_project_id(project_id), workflow_id)

    async def create_workflow(
        self,
        definition: str,
        *,
        assets: Mapping[str, str] | None = None,
        parameters: Mapping[str, str] | None = None,
        project_id: str | None = None,
    ) -> MetafoldWorkflow:
        """``POST /projects/{id}/workflows``: dispatch a workflow and return it as the server
        answers (202: pending, with its jobs' ids and ``link``, its status URL); wait for it
        with ``aj.wait_until_terminal(mf.workflow(wf.id))`` or :func:`wait_for_workflow_jobs`.

        ``definition`` is the workflow's YAML (a top-level ``jobs:`` mapping of job name to
        ``type``, ``needs``, ``assets``, ``parameters``); ``assets`` maps ``"job.input"`` to an
        asset filename and ``parameters`` ``"job.param"`` to a string value. A definition the
        server refuses is a :class:`~async_jobs.BadRequestError` with its reason.

        The request is sent again only when the server surely did not act on it (the
        connection was refused before anything was sent, or it answered 429, or 503 with
        ``Retry-After``); after any other failure (a 500, a timeout, a dropped connection)
        the workflow may or may not exist, so the error is raised: list the project's
        workflows before dispatching again.
        """
        pid = self.resolve_project_id(project_id)
        if not isinstance(definition, str):
            raise TypeError(f"definition must be a YAML string, got {type(definition).__name__}")
        body: dict[str, Any] = {"definition": definition}
        for name, mapping in (("assets", assets), ("parameters", parameters)):
            if mapping is not None:
                body[name] = _string_map(name, mapping)
        response = await self._http.request(
            "POST", api_path("projects", pid, "workflows"), json=body
        )
        return self._http.decode(response, METAFOLD_WORKFLOW.decoder)

    async def cancel_workflow(
        self, workflow_id: str, *, project_id: str | None = None
    ) -> MetafoldWorkflow:
        """``POST /projects/{id}/workflows/{workflow_id}/cancel``: cancel a workflow that has
        not finished (its unfinished jobs are canceled too) and return it. A workflow that
        already finished answers 400 (:class:`~async_jobs.BadRequestError`).

        Like every POST, it is sent again only when the server surely did not act on it
        (connection refused before sending, 429, or 503 with ``Retry-After``).
        """
        pid = self.resolve_project_id(project_id)
        workflow_id = _check_id("workflow_id", workflow_id)
        path = api_path("projects", pid, "workflows", workflow_id, "cancel")
        response = await self._http.request("POST", path)
        return self._http.decode(response, METAFOLD_WORKFLOW.decoder)


# -- workflows as a whole --------------------------------------------------------------------


class Dependent(Protocol):
    """Anything with an ``id`` and the ids it ``needs`` (a :class:`MetafoldJob`, say)."""

    @property
    def id(self) -> str:
        """Its id."""
        ...

    @property
    def needs(self) -> Sequence[str]:
        """The ids of what must come before it."""
        ...


D = TypeVar("D", bound=Dependent)


def dependency_order(jobs: Sequence[D]) -> list[D]:
    """``jobs`` in dependency order: each job after every job it ``needs`` (needs outside
    ``jobs`` are ignored), otherwise in the given order. Jobs caught in a cycle, which a
    workflow cannot have, come last in the given order."""
    ids = {job.id for job in jobs}
    placed: set[str] = set()
    remaining = list(jobs)
    ordered: list[D] = []
    progress = True
    while remaining and progress:
        progress = False
        for job in remaining:
            if all(need in placed or need not in ids for need in job.needs):
                ordered.append(job)
                placed.add(job.id)
                remaining.remove(job)
                progress = True
                break
    return ordered + remaining


async def wait_for_workflow_jobs(
    mf: MetafoldClient,
    workflow_id: str,
    *,
    project_id: str | None = None,
    timeout: float | None = None,
    poll: PollSchedule | None = None,
    fail_fast: bool = False,
    on_update: OnUpdate[MetafoldJob] | None = None,
    max_concurrency: int = 8,
) -> list[MetafoldJob]:
    """Wait for every job of a workflow, concurrently, and return them terminal, in
    dependency order (:func:`dependency_order`).

    At most ``max_concurrency`` requests are in flight at once. A failed or canceled job is a
    result (a workflow engine cancels the jobs downstream of a failure, so the wait still
    ends) unless ``fail_fast``: then the first failed or canceled job seen (the failure
    itself, or a job it canceled, whichever is polled first) raises
    :class:`~async_jobs.JobFailed` and the other waits are cancelled, leaving no task
    behind. ``on_update`` gets every observed change of every job. Past ``timeout`` raises
    :class:`~async_jobs.WaitTimeout` whose ``.last`` lists the last state seen of each job
    (None if never seen).
    """
    pid = mf.resolve_project_id(project_id)
    ref = mf.workflow(workflow_id, project_id=pid)
    check_timeout(timeout)
    deadline = None if timeout is None else _clock.now() + timeout
    workflow: MetafoldWorkflow | None = None
    with anyio.move_on_after(timeout):
        # A just-dispatched workflow may not list its jobs yet: watch it until it does.
        async with aclosing(watch(ref, poll=poll)) as updates:
            async for seen in updates:
                workflow = seen
                if seen.jobs or seen.is_terminal:
                    break
    if workflow is None or not (workflow.jobs or workflow.is_terminal):
        raise WaitTimeout(f"{ref.key} listed no jobs within {timeout}s", last=workflow)
    remaining = None if deadline is None else max(deadline - _clock.now(), 0.0)
    refs = [mf.job(job_id, project_id=pid) for job_id in dict.fromkeys(workflow.jobs)]
    jobs = await wait_all(
        refs,
        timeout=remaining,
        poll=poll,
        on_update=on_update,
        fail_fast=fail_fast,
        max_concurrency=max_concurrency,
    )
    return dependency_order(jobs)
