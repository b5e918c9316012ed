"""Zoo models: async operations (``/async/operations``), org dataset conversions
(``/org/datasets/{id}/conversions``) and their state tables.

The raw ``status``, ``type`` and ``phase`` stay plain strings so a value the server adds
tomorrow never breaks decoding; ``job_state`` maps the status through the tables below.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeAlias, get_args

import msgspec

from ._state import JobModel, JobState, StateTable

__all__ = [
    "CONVERSION_ACTIVE_STATUSES",
    "CONVERSION_ERROR_PREFIX",
    "CONVERSION_PHASES",
    "CONVERSION_SORT_MODES",
    "CONVERSION_STATES",
    "CONVERSION_STATUSES",
    "CONVERSION_STATUS_FILTERS",
    "CONVERSION_TABLE",
    "OPERATION_ACTIVE_STATUSES",
    "OPERATION_SORT_MODES",
    "OPERATION_STATES",
    "OPERATION_STATUSES",
    "OPERATION_TABLE",
    "OPERATION_TYPES",
    "AsyncOperation",
    "ConversionPhase",
    "ConversionSortMode",
    "ConversionStatus",
    "ConversionStatusFilter",
    "DatasetConversion",
    "DatasetSnapshotImage",
    "DatasetStats",
    "OperationSortMode",
    "OperationStatus",
    "conversion_state",
]

# The Literal aliases below type the client's enumerated parameters as ``Literal[...] | str``:
# the known values complete in editors, and a value a server adds later (or a str read from a
# config file or a command line) still type-checks. Where a tuple is a plain list of values it is
# read from its alias (``get_args``); the others come from the state tables, and a test
# compares each with its alias.

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
#: The operation state table (:class:`~async_jobs.StateTable`) of :data:`OPERATION_STATES`.
OPERATION_TABLE = StateTable("zoo.async_operation", OPERATION_STATES)
#: The known statuses, in lifecycle order; the list endpoint filters by one of them.
OPERATION_STATUSES: tuple[str, ...] = OPERATION_TABLE.known
#: The values of :data:`OPERATION_STATUSES`, for type checkers and editors.
OperationStatus: TypeAlias = Literal["queued", "uploaded", "in_progress", "completed", "failed"]
#: The statuses of operations still under way (what a Watcher lists to coalesce polling).
OPERATION_ACTIVE_STATUSES: tuple[str, ...] = OPERATION_TABLE.active
#: The values of :data:`OPERATION_SORT_MODES`, for type checkers and editors.
OperationSortMode: TypeAlias = Literal["created_at_ascending", "created_at_descending"]
#: ``sort_by`` values of ``GET /async/operations`` (``CreatedAtSortMode``).
OPERATION_SORT_MODES: tuple[str, ...] = get_args(OperationSortMode)
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


class AsyncOperation(JobModel, kw_only=True, frozen=True):
    """A Zoo async operation, from the list endpoint (``AsyncApiCall``, with ``input`` and
    ``output``) or from ``GET /async/operations/{id}`` (``AsyncApiCallOutput``, whose
    type-specific fields are kept below; unknown ones are ignored). ``job_state`` maps
    ``status`` through :data:`OPERATION_STATES`; ``progress`` is 1.0 once terminal, None
    before (Zoo reports no progress for operations)."""

    state_table: ClassVar[StateTable] = OPERATION_TABLE
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


# -- org dataset conversions ----------------------------------------------------------------

#: Zoo dataset conversion status -> JobState (``OrgDatasetFileConversionStatus``, in the live
#: spec's order: the seed doc's seven values plus ``error_geometry_mismatch``,
#: ``error_execution`` and ``error_connection``). A status missing here that starts with
#: :data:`CONVERSION_ERROR_PREFIX` is FAILED too; see :func:`conversion_state`.
CONVERSION_STATES: Mapping[str, JobState] = MappingProxyType(
    {
        "queued": JobState.PENDING,
        "canceled": JobState.CANCELED,
        "in_progress": JobState.RUNNING,
        "success": JobState.SUCCEEDED,
        "error_user": JobState.FAILED,
        "error_geometry_mismatch": JobState.FAILED,
        "error_execution": JobState.FAILED,
        "error_connection": JobState.FAILED,
        "error_unsupported": JobState.FAILED,
        "error_internal": JobState.FAILED,
    }
)
#: Every conversion status starting with this is a failure, including ones added tomorrow.
CONVERSION_ERROR_PREFIX = "error_"
#: The conversion state table: :data:`CONVERSION_STATES`, then the ``error_*`` rule.
CONVERSION_TABLE = StateTable(
    "zoo.dataset_conversion",
    CONVERSION_STATES,
    prefixes={CONVERSION_ERROR_PREFIX: JobState.FAILED},
)
#: The known statuses, in the spec's order; ``filter=status:<value>`` names one of them.
CONVERSION_STATUSES: tuple[str, ...] = CONVERSION_TABLE.known
#: The values of :data:`CONVERSION_STATUSES`, for type checkers and editors.
ConversionStatus: TypeAlias = Literal[
    "queued",
    "canceled",
    "in_progress",
    "success",
    "error_user",
    "error_geometry_mismatch",
    "error_execution",
    "error_connection",
    "error_unsupported",
    "error_internal",
]
#: ``filter=`` expressions selecting one known status (``"status:success"``, ...); the API
#: takes one expression per request.
CONVERSION_STATUS_FILTERS: tuple[str, ...] = tuple(f"status:{s}" for s in CONVERSION_STATUSES)
#: The values of :data:`CONVERSION_STATUS_FILTERS`, for type checkers and editors.
ConversionStatusFilter: TypeAlias = Literal[
    "status:queued",
    "status:canceled",
    "status:in_progress",
    "status:success",
    "status:error_user",
    "status:error_geometry_mismatch",
    "status:error_execution",
    "status:error_connection",
    "status:error_unsupported",
    "status:error_internal",
]
#: The statuses of conversions still under way (what a Watcher lists to coalesce polling).
CONVERSION_ACTIVE_STATUSES: tuple[str, ...] = CONVERSION_TABLE.active
#: The pipeline phases in the live spec's order (``OrgDatasetFileConversionPhase``). The seed
#: doc's order (0-10) is this one without ``manual_kcl_override``, so progress computed from a
#: phase's position in this tuple moves forward on old and new servers alike.
ConversionPhase: TypeAlias = Literal[
    "queued",
    "zoo_generated_original_metadata",
    "snapshot_original",
    "user_provided_metadata",
    "manual_kcl_override",
    "convert_raw_kcl",
    "zoo_generated_raw_kcl_metadata",
    "snapshot_raw_kcl",
    "salon",
    "zoo_generated_salon_kcl_metadata",
    "snapshot_salon_kcl",
    "completed",
]
CONVERSION_PHASES: tuple[str, ...] = get_args(ConversionPhase)
#: ``sort_by`` values of ``GET /org/datasets/{id}/conversions`` (``ConversionSortMode``).
ConversionSortMode: TypeAlias = Literal[
    "created_at_ascending",
    "created_at_descending",
    "status_ascending",
    "status_descending",
    "phase_ascending",
    "phase_descending",
    "updated_at_ascending",
    "updated_at_descending",
]
CONVERSION_SORT_MODES: tuple[str, ...] = get_args(ConversionSortMode)
_PHASE_INDEX: Mapping[str, int] = MappingProxyType(
    {phase: index for index, phase in enumerate(CONVERSION_PHASES)}
)
_LAST_PHASE_INDEX = len(CONVERSION_PHASES) - 1


def conversion_state(status: str) -> JobState:
    """A conversion status as a JobState: :data:`CONVERSION_STATES`, then any
    ``error_*`` status is FAILED; anything else is UNKNOWN (with one warning)."""
    return CONVERSION_TABLE.state(status)


class DatasetSnapshotImage(msgspec.Struct, kw_only=True, frozen=True, repr_omit_defaults=True):
    """A snapshot image of a conversion stage (``OrgDatasetSnapshotImage``)."""

    data_base64: str = ""
    mime_type: str | None = None

    def __repr__(self) -> str:
        """The MIME type and the size of the base64 text, never the image itself."""
        return (
            f"DatasetSnapshotImage(mime_type={self.mime_type!r}, <{len(self.data_base64)} chars>)"
        )

    @property
    def data(self) -> bytes:
        """The image bytes. Standard and URL-safe base64, padded or not, are both accepted;
        raises ValueError if ``data_base64`` is not base64 at all."""
        text = self.data_base64.strip().rstrip("=").replace("-", "+").replace("_", "/")
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"data_base64 is not base64: {exc}") from None


class DatasetConversion(JobModel, kw_only=True, frozen=True):
    """A Zoo org dataset file conversion, from ``GET /org/datasets/{id}/conversions/{cid}``
    (``OrgDatasetFileConversionDetails``) or as the list endpoint summarises it
    (``OrgDatasetFileConversionSummary``, a subset: no outputs, no snapshot images, no
    override text). Unknown fields are ignored; ``status`` and ``phase`` are plain strings.
    ``job_state`` maps ``status`` through :data:`CONVERSION_TABLE` (the table, then the
    ``error_*`` rule, else UNKNOWN)."""

    state_table: ClassVar[StateTable] = CONVERSION_TABLE
    id: str
    status: str
    phase: str | None = None
    dataset_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    status_message: str | None = None
    file_path: str | None = None
    file_etag: str | None = None
    file_size: int | None = None
    importer_version: str | None = None
    metadata: Any = None
    # Only GET /org/datasets/{id}/conversions/{conversion_id} sends the fields below.
    output: str | None = None
    raw_kcl_output: str | None = None
    salon_kcl_output: str | None = None
    raw_kcl_similarity_score: float | None = None
    salon_kcl_similarity_score: float | None = None
    original_snapshot_images: tuple[DatasetSnapshotImage, ...] = ()
    raw_kcl_snapshot_images: tuple[DatasetSnapshotImage, ...] = ()
    salon_kcl_snapshot_images: tuple[DatasetSnapshotImage, ...] = ()
    manual_kcl_override: str | None = None
    manual_kcl_override_active: bool = False
    manual_kcl_override_updated_at: datetime | None = None
    #: Set by a wait (never by the server): the progress last known before the conversion
    #: entered a phase this library does not know, which :attr:`progress` then reports.
    last_known_progress: float | None = None

    @property
    def phase_index(self) -> int | None:
        """The phase's position in :data:`CONVERSION_PHASES` (the live order, so
        ``completed`` is 11), or None for a phase this library does not know."""
        return None if self.phase is None else _PHASE_INDEX.get(self.phase)

    @property
    def status_detail(self) -> str | None:
        """The pipeline phase, shown beside the status (``in_progress · kcl_generation``)."""
        return self.phase or None

    @property
    def progress(self) -> float | None:
        """0.0 at ``queued`` to 1.0 at ``completed``, from the phase's position in
        :data:`CONVERSION_PHASES`; 1.0 once terminal (whatever the phase).

        For an unknown (or missing) phase of a conversion still under way, the last known
        progress: every wait (``watch``, ``on_update``, ``Watcher.last``) reports
        conversions through :meth:`continued_from`, so that is never None after a known
        value; a conversion decoded on its own has None there.
        """
        if self.is_terminal:
            return 1.0
        index = self.phase_index
        return self.last_known_progress if index is None else index / _LAST_PHASE_INDEX

    def continued_from(self, previous: DatasetConversion) -> DatasetConversion:
        """This look at the conversion as a wait reports it after ``previous``: in an unknown
        phase it keeps ``previous``'s progress."""
        if self.phase_index is not None or self.is_terminal:
            return self
        known = previous.progress
        if known is None or known == self.last_known_progress:
            return self
        return msgspec.structs.replace(self, last_known_progress=known)

    @property
    def error(self) -> str | None:
        """Why the conversion failed: ``status_message``, or the ``error_*`` status itself
        when the server sent no message. None unless the conversion FAILED."""
        if self.job_state is not JobState.FAILED:
            return None
        return self.status_message or self.status


# -- org dataset stats ----------------------------------------------------------------------

_STATUS_ORDER: Mapping[str, int] = MappingProxyType(
    {status: index for index, status in enumerate(CONVERSION_STATUSES)}
)


class DatasetStats(JobModel, kw_only=True, frozen=True):
    """A whole org dataset as one job, from ``GET /org/datasets/{id}/stats``
    (``OrgDatasetConversionStatsResponse``): its conversions counted by raw status.

    Each status of :attr:`by_status` is classified by :data:`CONVERSION_TABLE` (an unknown
    one counts as still under way). ``job_state`` is RUNNING while any conversion is queued,
    in progress or in an unknown status (or ``total`` counts conversions :attr:`by_status`
    does not); then SUCCEEDED if none failed, else FAILED. An empty dataset is SUCCEEDED.
    ``progress`` is the share of conversions in a terminal status (finished / total)."""

    state_table: ClassVar[StateTable] = CONVERSION_TABLE
    #: No status field of its own: :attr:`summary` (its counts) is what displays show.
    status_field: ClassVar[str] = "summary"
    dataset_id: str
    by_status: dict[str, int] = msgspec.field(default_factory=dict)
    total: int = 0
    successes: int = 0
    failures: int = 0

    @property
    def id(self) -> str:
        """The dataset's id."""
        return self.dataset_id

    def _counts(self) -> tuple[int, int, int]:
        """(still under way, finished, failed) conversions, from :attr:`by_status`."""
        active = finished = failed = 0
        for status, count in self.by_status.items():
            if count <= 0:
                continue
            state = self.state_table.state(status)
            if state.is_terminal:
                finished += count
                if state is JobState.FAILED:
                    failed += count
            else:
                active += count
        # Conversions the server counts in total but in no status: not known to be done.
        active += max(self.total - active - finished, 0)
        return active, finished, max(failed, self.failures)

    @property
    def job_state(self) -> JobState:
        """RUNNING while any conversion is under way; then SUCCEEDED if none failed, else
        FAILED."""
        active, _, failed = self._counts()
        if active:
            return JobState.RUNNING
        return JobState.FAILED if failed else JobState.SUCCEEDED

    @property
    def progress(self) -> float:
        """Finished conversions / ``total`` (1.0 once terminal, and for an empty dataset)."""
        active, finished, _ = self._counts()
        # active + finished is total, unless by_status counts more than total says.
        return finished / (active + finished) if active else 1.0

    @property
    def error(self) -> str | None:
        """``"3 of 200 conversions failed"`` once the dataset FAILED; None otherwise."""
        active, _, failed = self._counts()
        if active or not failed:
            return None
        return f"{failed} of {max(self.total, failed)} conversions failed"

    @property
    def summary(self) -> str:
        """The counts by status, known statuses in lifecycle order (``"success 197,
        error_user 3"``); ``"empty"`` for a dataset without conversions."""
        counts = sorted(
            ((status, count) for status, count in self.by_status.items() if count > 0),
            key=lambda pair: (_STATUS_ORDER.get(pair[0], len(_STATUS_ORDER)), pair[0]),
        )
        return ", ".join(f"{status} {count}" for status, count in counts) or "empty"

    @property
    def status_detail(self) -> str | None:
        """How many conversions finished (``"150/200 finished"``), beside the counts."""
        active, finished, _ = self._counts()
        return f"{finished}/{active + finished} finished"
