"""The API-neutral job state, an API's state table as data, and the base of every job model."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import msgspec

from .._redact import get_logger

__all__ = ["TERMINAL_STATES", "JobModel", "JobState", "StateTable", "active_values", "map_state"]

logger = get_logger("async_jobs")


class JobState(str, enum.Enum):
    """Where a job is in its life, whatever the API calls it."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        """The value (``"running"``), as ``str()`` and f-strings show it on every Python."""
        return self.value

    def __format__(self, format_spec: str) -> str:
        """The value, formatted as a string (``f"{state:>9}"`` pads ``"running"``)."""
        return format(self.value, format_spec)

    @property
    def is_terminal(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELED."""
        return self in TERMINAL_STATES


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED}
)

_warned: set[tuple[str, str]] = set()


def map_state(api: str, table: Mapping[str, JobState], value: str) -> JobState:
    """Look ``value`` up in ``table``; an unknown value is UNKNOWN and logs one warning
    per (api, value) for the life of the process."""
    state = table.get(value)
    if state is not None:
        return state
    if (api, value) not in _warned:
        _warned.add((api, value))
        logger.warning("%s: unknown status %r; treating it as not terminal", api, value[:100])
    return JobState.UNKNOWN


def active_values(table: Mapping[str, JobState]) -> tuple[str, ...]:
    """The raw statuses of ``table`` that are not terminal, in table order (what a Watcher
    lists to find the jobs still under way)."""
    return tuple(value for value, state in table.items() if not state.is_terminal)


class StateTable:
    """One API's raw statuses mapped to :class:`JobState`, as data: exact values first, then
    prefix rules (``{"error_": JobState.FAILED}`` makes every ``error_*`` status a failure,
    including one a server adds later). Anything else is UNKNOWN, with one warning per value.

    ``name`` is how the warning names the API (``"zoo.dataset_conversion"``)."""

    __slots__ = ("active", "known", "name", "prefixes", "states")

    def __init__(
        self,
        name: str,
        states: Mapping[str, JobState],
        *,
        prefixes: Mapping[str, JobState] | None = None,
    ) -> None:
        self.name: str = name
        #: Raw status -> JobState, in lifecycle order.
        self.states: Mapping[str, JobState] = MappingProxyType(dict(states))
        #: Status prefix -> JobState, for statuses not in :attr:`states`.
        self.prefixes: Mapping[str, JobState] = MappingProxyType(dict(prefixes or {}))
        #: Every raw status in :attr:`states`, in order.
        self.known: tuple[str, ...] = tuple(self.states)
        #: The known statuses of jobs still under way (what a Watcher lists).
        self.active: tuple[str, ...] = active_values(self.states)

    def state(self, value: str) -> JobState:
        """``value`` as a JobState: the table, then the prefix rules, else UNKNOWN."""
        state = self.states.get(value)
        if state is not None:
            return state
        for prefix, prefixed in self.prefixes.items():
            if value.startswith(prefix):
                return prefixed
        return map_state(self.name, self.states, value)

    def __repr__(self) -> str:
        return f"StateTable({self.name!r}, {len(self.states)} states)"


class JobModel(msgspec.Struct, kw_only=True, frozen=True, repr_omit_defaults=True):
    """The base of every job model: ``job_state``, ``is_terminal`` and ``progress`` come from
    the class's :class:`StateTable` (``state_table``) applied to its raw status field
    (``status_field``, ``"status"`` unless the API calls it something else). Its repr leaves
    out the fields equal to their defaults; :func:`~async_jobs.to_builtins` turns it into
    JSON-ready builtins.

    A model of your own API subclasses it::

        class Prediction(aj.JobModel, kw_only=True, frozen=True):
            state_table: ClassVar[aj.StateTable] = PREDICTION_STATES
            id: str
            status: str
            error: str | None = None
    """

    state_table: ClassVar[StateTable]
    status_field: ClassVar[str] = "status"
    #: The attribute holding when the job was created, for displays such as the CLI's
    #: listing (a field or a property; a model without it shows nothing there).
    created_field: ClassVar[str] = "created_at"
    #: Fields holding a datetime as its raw wire string -> the property giving it as a
    #: ``datetime`` (what :func:`~async_jobs.to_builtins` writes out, in ISO 8601).
    raw_datetimes: ClassVar[Mapping[str, str]] = MappingProxyType({})

    @property
    def job_state(self) -> JobState:
        """The raw status mapped through the model's state table (UNKNOWN if not in it)."""
        return self.state_table.state(getattr(self, self.status_field))

    @property
    def is_terminal(self) -> bool:
        """True once the job succeeded, failed or was canceled."""
        return self.job_state.is_terminal

    @property
    def progress(self) -> float | None:
        """1.0 once terminal; None before (the API reports no progress)."""
        return 1.0 if self.is_terminal else None

    @property
    def status_detail(self) -> str | None:
        """A short note beside the raw status, such as a pipeline phase, that displays show
        as ``status · detail`` (None here: a model overrides it when its API has one)."""
        return None
