"""Metafold models: project jobs and workflows (``/projects/{id}/jobs``, ``.../workflows``).

The raw ``state`` stays a plain string so a value the server adds tomorrow never breaks
decoding; ``job_state`` maps it through :data:`METAFOLD_STATES`, the one table for jobs and
workflows.

Datetimes: the live API sends RFC 1123 (``Mon, 01 Jan 2024 00:00:00 GMT``, what the official
SDK parses), its documentation shows ISO 8601 (``2006-01-02T22:04:05+00:00``). msgspec's
``datetime`` type accepts only the latter, and these structs must stay plain decoding targets
(``msgspec.json.decode(body, type=list[MetafoldJob])``, no ``dec_hook``). So each datetime is
kept as the raw wire string under its wire name (``created_raw`` is ``"created"`` on the wire,
and encodes back unchanged), checked when the struct is decoded (an unreadable datetime is a
``msgspec.ValidationError``, never a surprise later), and exposed as a property
(``created``, ``started``, ``finished``) returning a timezone-aware UTC ``datetime`` or None.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeAlias, get_args

import msgspec

from ._state import JobModel, JobState, StateTable

__all__ = [
    "JOB_QUERY_FIELDS",
    "JOB_SORTS",
    "JOB_SORT_FIELDS",
    "METAFOLD_ACTIVE_STATES",
    "METAFOLD_STATES",
    "METAFOLD_STATE_NAMES",
    "METAFOLD_TABLE",
    "WORKFLOW_QUERY_FIELDS",
    "WORKFLOW_SORTS",
    "WORKFLOW_SORT_FIELDS",
    "JobSort",
    "JobSortField",
    "MetafoldAsset",
    "MetafoldIO",
    "MetafoldJob",
    "MetafoldWorkflow",
    "WorkflowSort",
    "WorkflowSortField",
    "parse_metafold_datetime",
]

#: Metafold job and workflow state -> JobState (the seed doc's five values).
METAFOLD_STATES: Mapping[str, JobState] = MappingProxyType(
    {
        "pending": JobState.PENDING,
        "started": JobState.RUNNING,
        "success": JobState.SUCCEEDED,
        "failure": JobState.FAILED,
        "canceled": JobState.CANCELED,
    }
)
#: The state table of jobs and workflows (:data:`METAFOLD_STATES`).
METAFOLD_TABLE = StateTable("metafold", METAFOLD_STATES)
#: The known states, in lifecycle order.
METAFOLD_STATE_NAMES: tuple[str, ...] = METAFOLD_TABLE.known
#: The states of jobs and workflows still under way (what a Watcher lists to coalesce).
METAFOLD_ACTIVE_STATES: tuple[str, ...] = METAFOLD_TABLE.active
#: Fields ``sort=`` accepts on ``GET /projects/{id}/jobs`` (the client's ``sort=`` field type).
JobSortField: TypeAlias = Literal["id", "name", "created", "started", "finished"]
JOB_SORT_FIELDS: tuple[str, ...] = get_args(JobSortField)
#: Fields ``sort=`` accepts on ``GET /projects/{id}/workflows``.
WorkflowSortField: TypeAlias = Literal["id", "created", "started", "finished"]
WORKFLOW_SORT_FIELDS: tuple[str, ...] = get_args(WorkflowSortField)
#: Every ``sort=`` value of ``GET /projects/{id}/jobs``: ``field:1`` (ascending) or
#: ``field:-1`` (descending) for each of :data:`JOB_SORT_FIELDS`.
JOB_SORTS: tuple[str, ...] = tuple(f"{f}:{o}" for f in JOB_SORT_FIELDS for o in ("1", "-1"))
#: Every ``sort=`` value of ``GET /projects/{id}/workflows``.
WORKFLOW_SORTS: tuple[str, ...] = tuple(
    f"{f}:{o}" for f in WORKFLOW_SORT_FIELDS for o in ("1", "-1")
)

# Literal aliases of the tuples above: the client types ``sort=`` as ``Literal[...] | str``
# (and the field of ``(field, descending)`` likewise), so the known values complete in editors
# while any str still type-checks. A test compares each with its tuple (typing.get_args). The
# field aliases sit with their tuples above, which are read from them.

#: The values of :data:`JOB_SORTS`, for type checkers and editors.
JobSort: TypeAlias = Literal[
    "id:1",
    "id:-1",
    "name:1",
    "name:-1",
    "created:1",
    "created:-1",
    "started:1",
    "started:-1",
    "finished:1",
    "finished:-1",
]
#: The values of :data:`WORKFLOW_SORTS`, for type checkers and editors.
WorkflowSort: TypeAlias = Literal[
    "id:1",
    "id:-1",
    "created:1",
    "created:-1",
    "started:1",
    "started:-1",
    "finished:1",
    "finished:-1",
]
#: Fields ``q=`` searches on ``GET /projects/{id}/jobs``.
JOB_QUERY_FIELDS: tuple[str, ...] = ("id", "name", "type", "state")
#: Fields ``q=`` searches on ``GET /projects/{id}/workflows``.
WORKFLOW_QUERY_FIELDS: tuple[str, ...] = ("id", "state")


@functools.lru_cache(maxsize=4096)
def parse_metafold_datetime(text: str) -> datetime:
    """A Metafold datetime as a timezone-aware UTC ``datetime``.

    Accepts RFC 1123 (``Mon, 01 Jan 2024 00:00:00 GMT``, what the API sends) and ISO 8601
    (``2006-01-02T22:04:05+00:00`` or ``...Z``, what its docs show); a time without a zone is
    taken as UTC. Raises ValueError for anything else.
    """
    value = text.strip()
    parsed: datetime | None = None
    if value[:4].isdigit():
        iso = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
        try:
            parsed = datetime.fromisoformat(iso)
        except ValueError:
            parsed = None
    if parsed is None:
        try:
            parsed = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"not an RFC 1123 or ISO 8601 datetime: {text[:64]!r}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _as_datetime(raw: str | None) -> datetime | None:
    return parse_metafold_datetime(raw) if raw else None


def _check_datetimes(*raws: str | None) -> None:
    for raw in raws:
        if raw:
            parse_metafold_datetime(raw)  # ValueError -> msgspec.ValidationError on decode


class MetafoldAsset(msgspec.Struct, kw_only=True, frozen=True, repr_omit_defaults=True):
    """A file a job reads or writes (an entry of ``inputs.assets`` / ``outputs.assets``)."""

    id: str
    filename: str | None = None
    size: int | None = None
    checksum: str | None = None
    created_raw: str | None = msgspec.field(name="created", default=None)
    modified_raw: str | None = msgspec.field(name="modified", default=None)
    project_id: str | None = None
    job_id: str | None = None
    #: The raw datetime fields and the properties parsing them (see :attr:`JobModel.raw_datetimes`).
    raw_datetimes: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"created_raw": "created", "modified_raw": "modified"}
    )

    def __post_init__(self) -> None:
        _check_datetimes(self.created_raw, self.modified_raw)

    @property
    def created(self) -> datetime | None:
        """When the asset was created (UTC), or None."""
        return _as_datetime(self.created_raw)

    @property
    def modified(self) -> datetime | None:
        """When the asset was last modified (UTC), or None."""
        return _as_datetime(self.modified_raw)


class MetafoldIO(msgspec.Struct, kw_only=True, frozen=True, repr_omit_defaults=True):
    """A job's ``inputs`` or ``outputs``: assets by name and parameters by name (string
    values, often JSON-encoded)."""

    assets: dict[str, MetafoldAsset] | None = None
    params: dict[str, Any] | None = None


class _Lifecycle(JobModel, kw_only=True, frozen=True):
    """What jobs and workflows share: the raw state (mapped through :data:`METAFOLD_STATES`;
    Metafold reports no progress) and its three timestamps (raw wire strings under their wire
    names, exposed as UTC datetimes)."""

    state_table: ClassVar[StateTable] = METAFOLD_TABLE
    status_field: ClassVar[str] = "state"
    created_field: ClassVar[str] = "created"
    raw_datetimes: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"created_raw": "created", "started_raw": "started", "finished_raw": "finished"}
    )
    id: str
    state: str
    created_raw: str | None = msgspec.field(name="created", default=None)
    started_raw: str | None = msgspec.field(name="started", default=None)
    finished_raw: str | None = msgspec.field(name="finished", default=None)

    def __post_init__(self) -> None:
        _check_datetimes(self.created_raw, self.started_raw, self.finished_raw)

    @property
    def created(self) -> datetime | None:
        """When it was created (UTC), or None if the server left it out."""
        return _as_datetime(self.created_raw)

    @property
    def started(self) -> datetime | None:
        """When it started running (UTC), or None before that."""
        return _as_datetime(self.started_raw)

    @property
    def finished(self) -> datetime | None:
        """When it finished (UTC), or None before that."""
        return _as_datetime(self.finished_raw)


class MetafoldJob(_Lifecycle, kw_only=True, frozen=True):
    """A Metafold project job, as ``GET /projects/{id}/jobs[/{job_id}]`` returns it.

    ``created``, ``started`` and ``finished`` are properties over the raw wire strings
    (``created_raw``, ...); ``needs`` lists the ids of upstream jobs in its workflow. The
    deprecated ``assets``, ``parameters`` and ``meta`` are kept when the server sends them.
    """

    state_table: ClassVar[StateTable] = StateTable("metafold.job", METAFOLD_STATES)
    name: str | None = None
    type: str | None = None
    error: str | None = None
    inputs: MetafoldIO | None = None
    outputs: MetafoldIO | None = None
    needs: tuple[str, ...] = ()
    project_id: str | None = None
    workflow_id: str | None = None
    # Deprecated fields, still sent by some servers (and required by the official SDK).
    assets: list[MetafoldAsset] | None = None
    parameters: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None


class MetafoldWorkflow(_Lifecycle, kw_only=True, frozen=True):
    """A Metafold workflow, as ``GET /projects/{id}/workflows[/{workflow_id}]`` returns it.

    ``jobs`` lists the ids of its jobs (fetch them with ``get_job`` or wait for them all with
    :func:`~async_jobs.metafold.wait_for_workflow_jobs`); ``definition`` is the raw YAML.
    """

    state_table: ClassVar[StateTable] = StateTable("metafold.workflow", METAFOLD_STATES)
    jobs: tuple[str, ...] = ()
    definition: str | None = None
    project_id: str | None = None
    link: str | None = None

    @property
    def error(self) -> str | None:
        """None: Metafold reports errors on the workflow's jobs, not on the workflow."""
        return None
