"""Zoo models: async operations (``/async/operations``) and their state table.

The raw ``status`` and ``type`` stay plain strings so a value the server adds tomorrow never
breaks decoding; :attr:`AsyncOperation.job_state` maps the status through the table below.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

import msgspec

from ._state import JobState, map_state

__all__ = [
    "OPERATION_SORT_MODES",
    "OPERATION_STATES",
    "OPERATION_STATUSES",
    "OPERATION_TYPES",
    "AsyncOperation",
]

#: Zoo async operation status -> JobState (the seed doc's five values).
OPERATION_STATES: Mapping[str, JobState] = MappingProxyType(
    {
        "queued": JobState.PENDING,
        "uploaded": JobState.PENDING,
        "in_progress": JobState.RUNNING,
        "completed": JobState.SUCCEEDED,
        "failed": JobState.FAILED,
    }
)
#: The known statuses, in lifecycle order; the list endpoint filters by one of them.
OPERATION_STATUSES: tuple[str, ...] = tuple(OPERATION_STATES)
#: ``sort_by`` values of ``GET /async/operations`` (``CreatedAtSortMode``).
OPERATION_SORT_MODES: tuple[str, ...] = ("created_at_ascending", "created_at_descending")
#: Operation types known today (``AsyncApiCallType``); others decode as plain strings.
OPERATION_TYPES: tuple[str, ...] = (
    "file_conversion",
    "file_volume",
    "file_center_of_mass",
    "file_mass",
    "file_density",
    "file_surface_area",
    "text_to_cad",
    "text_to_cad_iteration",
    "text_to_cad_multi_file_iteration",
)


class AsyncOperation(msgspec.Struct, kw_only=True, frozen=True):
    """A Zoo async operation, from the list endpoint (``AsyncApiCall``, with ``input`` and
    ``output``) or from ``GET /async/operations/{id}`` (``AsyncApiCallOutput``, whose
    type-specific fields are kept below; unknown ones are ignored)."""

    id: str
    status: str
    type: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    user_id: str | None = None
    worker: str | None = None
    attempts: int = 0
    input: Any = None
    output: Any = None
    # Type-specific fields of GET /async/operations/{id} (AsyncApiCallOutput variants).
    src_format: str | None = None
    src_format_options: Any = None
    output_format: str | None = None
    output_format_options: Any = None
    outputs: dict[str, str] | None = None
    output_unit: str | None = None
    volume: float | None = None
    mass: float | None = None
    density: float | None = None
    surface_area: float | None = None
    center_of_mass: Any = None
    bounding_box: Any = None
    material_density: float | None = None
    material_density_unit: str | None = None
    material_mass: float | None = None
    material_mass_unit: str | None = None
    prompt: str | None = None
    code: str | None = None
    model: str | None = None
    model_version: str | None = None
    conversation_id: str | None = None
    kcl_version: str | None = None
    feedback: str | None = None

    @property
    def job_state(self) -> JobState:
        """The status mapped through :data:`OPERATION_STATES` (UNKNOWN if not in it)."""
        return map_state("zoo.async_operation", OPERATION_STATES, self.status)

    @property
    def is_terminal(self) -> bool:
        """True once the operation has completed or failed."""
        return self.job_state.is_terminal

    @property
    def progress(self) -> float | None:
        """1.0 once terminal; None before (Zoo reports no progress for operations)."""
        return 1.0 if self.is_terminal else None
