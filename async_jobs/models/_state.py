"""The API-neutral job state and the helper that maps an API's raw status through its table."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from .._redact import get_logger

__all__ = ["TERMINAL_STATES", "JobState", "active_values", "map_state"]

logger = get_logger("async_jobs")


class JobState(str, enum.Enum):
    """Where a job is in its life, whatever the API calls it."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    UNKNOWN = "unknown"

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
