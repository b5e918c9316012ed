"""ZooClient: Zoo async operations and org dataset conversions (models in models/zoo.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from functools import partial
from typing import TYPE_CHECKING

import msgspec

from ._api import JobApi, JobKind
from ._client import ApiClient, ClientOptions, ClientSettings, from_env
from ._http import ClientSession, ErrorDetails, StaticTokenAuth, api_path
from ._paging import Page, iter_items, merge_streams
from ._poll import JobRef
from .models.zoo import (
    CONVERSION_ACTIVE_STATUSES,
    OPERATION_ACTIVE_STATUSES,
    OPERATION_SORT_MODES,
    OPERATION_STATUSES,
    AsyncOperation,
    ConversionPhase,
    ConversionSortMode,
    ConversionStatus,
    ConversionStatusFilter,
    DatasetConversion,
    DatasetStats,
    OperationSortMode,
    OperationStatus,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "ASYNC_OPERATION",
    "DATASET",
    "DATASET_CONVERSION",
    "ZOO_API",
    "ZooClient",
    "zoo_error_details",
]

DEFAULT_BASE_URL = "https://api.zoo.dev"
#: Page size of the active-job listings a Watcher sweeps (a server may cap it lower).
LISTING_PAGE_SIZE = 1000
_operation_page_decoder = msgspec.json.Decoder(Page[AsyncOperation])
_conversion_page_decoder = msgspec.json.Decoder(Page[DatasetConversion])


def _check_value(name: str, value: str) -> str:
    """An enumerated parameter: any non-empty string, so a value the server adds tomorrow is
    sent as is (the server answers one it does not know with a 400, a BadRequestError)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    return limit


def _check_max_items(max_items: int | None) -> None:
    if max_items is not None and (not isinstance(max_items, int) or max_items < 0):
        raise ValueError(f"max_items must be an int >= 0, got {max_items!r}")


def _check_text(name: str, value: str | None) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
    return value


def _statuses_value(statuses: Sequence[str] | str) -> str:
    """``statuses`` as the one comma-separated query value the retrigger endpoint takes."""
    names = statuses.split(",") if isinstance(statuses, str) else list(statuses)
    if not names:
        raise ValueError("statuses must name at least one status (or be None)")
    for name in names:
        if not isinstance(name, str) or not name or "," in name:
            raise ValueError(f"each status must be a non-empty string without ',', got {name!r}")
    return ",".join(dict.fromkeys(names))


def _created_at_key(op: AsyncOperation) -> float:
    return op.created_at.timestamp() if op.created_at is not None else float("-inf")


class _ZooError(msgspec.Struct):
    """Zoo's error body (``Error`` in its spec)."""

    error_code: str | None = None
    message: str | None = None
    request_id: str | None = None


_error_decoder = msgspec.json.Decoder(_ZooError)


def zoo_error_details(body: bytes) -> ErrorDetails:
    """A Zoo error body ``{error_code, message, request_id}`` as :class:`ErrorDetails`."""
    parsed = _error_decoder.decode(body)
    return ErrorDetails(parsed.message, parsed.error_code, parsed.request_id)


def _active_operations(zoo: ZooClient) -> AsyncIterator[AsyncOperation]:
    """Every operation still under way: one stream per active status, merged."""
    return zoo.iter_async_operations(OPERATION_ACTIVE_STATUSES, limit=LISTING_PAGE_SIZE)


async def _active_conversions(zoo: ZooClient, dataset_id: str) -> AsyncIterator[DatasetConversion]:
    """Every conversion of a dataset still under way. The filter takes one status: one
    stream per active status, fetched concurrently."""

    async def page(status: str, token: str | None) -> Page[DatasetConversion]:
        return await zoo.list_dataset_conversions(
            dataset_id, limit=LISTING_PAGE_SIZE, page_token=token, filter=f"status:{status}"
        )

    streams = [partial(page, status) for status in CONVERSION_ACTIVE_STATUSES]
    async with aclosing(merge_streams(streams, key=None)) as items:
        async for item in items:
            yield item


#: A Zoo async operation (``GET /async/operations/{id}``), listed API-wide.
ASYNC_OPERATION: JobKind[AsyncOperation] = JobKind(
    "zoo.async_operation",
    AsyncOperation,
    "/async/operations/{id}",
    group="zoo.async_operations",
    list_active=_active_operations,
    label="operation",
)
#: A Zoo org dataset conversion, listed per dataset.
DATASET_CONVERSION: JobKind[DatasetConversion] = JobKind(
    "zoo.dataset_conversion",
    DatasetConversion,
    "/org/datasets/{dataset_id}/conversions/{id}",
    group="zoo.dataset_conversions",
    list_active=_active_conversions,
    label="conversion",
)
#: A whole Zoo org dataset as one job (``GET /org/datasets/{id}/stats``): terminal once no
#: conversion is under way, progress = finished / total. Polled on its own (no listing).
DATASET: JobKind[DatasetStats] = JobKind(
    "zoo.dataset",
    DatasetStats,
    "/org/datasets/{dataset_id}/stats",
    label="dataset",
)
#: The Zoo API: its job kinds, its error body and its ``X-Api-Call-Id`` request ids.
ZOO_API = JobApi(
    "zoo",
    (ASYNC_OPERATION, DATASET_CONVERSION, DATASET),
    decode_error=zoo_error_details,
    request_id_header="X-Api-Call-Id",
)


class ZooClient(ApiClient):
    """Async client for the Zoo API (https://api.zoo.dev).

    ``token`` defaults to ``ZOO_API_TOKEN``, then ``KITTYCAD_API_TOKEN``; ``base_url`` to
    ``ZOO_HOST``, then ``https://api.zoo.dev``. Pass ``session=`` to reuse your own
    ``ClientSession`` (it is never closed by the client). ``options=``
    (:class:`~async_jobs.ClientOptions`) or its fields as keywords (``poll=``, ``retry=``,
    ``timeout=``, ...) set how requests are sent. Use as ``async with ZooClient() as zoo:``
    or call :meth:`aclose`.
    """

    api = ZOO_API
    credentials_hint = "no Zoo API token: set ZOO_API_TOKEN (or KITTYCAD_API_TOKEN)"

    def __init__(
        self,
        token: str | None = None,
        base_url: str | None = None,
        session: ClientSession | None = None,
        *,
        options: ClientOptions | None = None,
        **settings: Unpack[ClientSettings],
    ) -> None:
        super().__init__(
            base_url=from_env(base_url, "ZOO_HOST") or DEFAULT_BASE_URL,
            auth=StaticTokenAuth(from_env(token, "ZOO_API_TOKEN", "KITTYCAD_API_TOKEN")),
            session=session,
            options=options,
            **settings,
        )

    # -- async operations -------------------------------------------------------------------

    async def list_async_operations(
        self,
        status: OperationStatus | str | None = None,
        sort_by: OperationSortMode | str = "created_at_ascending",
        limit: int | None = None,
        page_token: str | None = None,
    ) -> Page[AsyncOperation]:
        """One page of ``GET /async/operations`` (a staff-only endpoint today).

        ``sort_by`` defaults to ``created_at_ascending``: Zoo's spec says the endpoint only
        scans ``created_at`` ascending (a server may serve ``created_at_descending`` in
        ascending order all the same; :meth:`iter_async_operations` detects that).

        ``status`` (:data:`~async_jobs.models.zoo.OPERATION_STATUSES`) and ``sort_by``
        (:data:`~async_jobs.models.zoo.OPERATION_SORT_MODES`) are typed ``Literal[...] | str``:
        known values complete in editors, and a value the server adds later is sent as is
        (one it does not know comes back as :class:`~async_jobs.BadRequestError`).
        """
        if status is not None:
            _check_value("status", status)
        _check_value("sort_by", sort_by)
        _check_limit(limit)
        return await self._http.get(
            api_path("async", "operations"),
            _operation_page_decoder,
            {"limit": limit, "page_token": page_token, "sort_by": sort_by, "status": status},
        )

    def iter_async_operations(
        self,
        status: OperationStatus | str | Sequence[OperationStatus | str] | None = None,
        sort_by: OperationSortMode | str = "created_at_ascending",
        limit: int | None = None,
        max_items: int | None = None,
    ) -> AsyncGenerator[AsyncOperation, None]:
        """Every operation with the given status(es), in ``sort_by`` order (default
        ``created_at_ascending``, the only order Zoo's spec says the endpoint scans in).

        ``status=None`` means every known status. Each status is its own stream, their pages
        fetched concurrently, and the streams are merged by ``created_at``. Every stream is
        checked to come in ``sort_by`` order, within a page and across pages: one out of
        order (a server that ignores ``created_at_descending``, say) raises
        :class:`~async_jobs.DecodeError` naming the sort, instead of merging wrongly.
        ``status`` and ``sort_by`` are typed ``Literal[...] | str``, as in
        :meth:`list_async_operations`: a new status is sent as is; merging several streams
        needs a ``sort_by`` of :data:`~async_jobs.models.zoo.OPERATION_SORT_MODES` (the
        order it merges in). Arguments are checked before any request is sent.
        """
        if status is None:
            statuses: Sequence[str] = OPERATION_STATUSES
        elif isinstance(status, str):
            statuses = (status,)
        else:
            statuses = tuple(dict.fromkeys(status))
            if not statuses:
                raise ValueError("status must name at least one status")
        for one in statuses:
            _check_value("status", one)
        _check_value("sort_by", sort_by)
        if len(statuses) > 1 and sort_by not in OPERATION_SORT_MODES:
            raise ValueError(
                f"merging {len(statuses)} status streams needs a sort_by of "
                f"{', '.join(OPERATION_SORT_MODES)}; got {sort_by!r}"
            )
        _check_limit(limit)
        _check_max_items(max_items)

        async def fetch(one: str, token: str | None) -> Page[AsyncOperation]:
            return await self.list_async_operations(one, sort_by, limit, token)

        known = sort_by in OPERATION_SORT_MODES
        return merge_streams(
            [partial(fetch, one) for one in statuses],
            key=_created_at_key if known else None,  # an order it does not know: one stream
            descending=sort_by == "created_at_descending",
            max_items=max_items,
            order=sort_by,
            what="operations",
        )

    async def get_async_operation(self, op_id: str) -> AsyncOperation:
        """``GET /async/operations/{id}``: one operation with its type-specific output."""
        return await self.fetch(ASYNC_OPERATION, op_id)

    def async_operation(self, op_id: str) -> JobRef[AsyncOperation]:
        """A JobRef for :func:`~async_jobs.wait_until_terminal` and :func:`~async_jobs.watch`."""
        return self.ref(ASYNC_OPERATION, op_id)

    # -- org dataset conversions ------------------------------------------------------------

    async def list_dataset_conversions(
        self,
        dataset_id: str,
        *,
        sort_by: ConversionSortMode | str = "created_at_descending",
        limit: int | None = None,
        page_token: str | None = None,
        filter: ConversionStatusFilter | str | None = None,
        q: str | None = None,
        phase: ConversionPhase | str | None = None,
    ) -> Page[DatasetConversion]:
        """One page of ``GET /org/datasets/{id}/conversions`` (summaries: no outputs or
        snapshot images; :meth:`get_dataset_conversion` has those).

        ``sort_by`` is one of the eight ``ConversionSortMode`` values; ``filter`` is the
        API's filter string, e.g. ``"status:success"`` (one expression, sent as is); ``q``
        searches conversion ids and file paths; ``phase`` names one pipeline phase (sent as
        is, so a phase the server adds later works too). Checked before any request.

        ``sort_by``, ``filter`` and ``phase`` are typed ``Literal[...] | str``: known values
        (:data:`~async_jobs.models.zoo.CONVERSION_SORT_MODES`,
        :data:`~async_jobs.models.zoo.CONVERSION_STATUS_FILTERS`,
        :data:`~async_jobs.models.zoo.CONVERSION_PHASES`) complete in editors, new server
        values are sent as is.
        """
        path = api_path("org", "datasets", dataset_id, "conversions")
        _check_value("sort_by", sort_by)
        _check_limit(limit)
        _check_text("page_token", page_token)
        _check_text("filter", filter)
        _check_text("q", q)
        _check_text("phase", phase)
        return await self._http.get(
            path,
            _conversion_page_decoder,
            {
                "limit": limit,
                "page_token": page_token,
                "sort_by": sort_by,
                "filter": filter,
                "q": q,
                "phase": phase,
            },
        )

    def iter_dataset_conversions(
        self,
        dataset_id: str,
        *,
        sort_by: ConversionSortMode | str = "created_at_descending",
        limit: int | None = None,
        filter: ConversionStatusFilter | str | None = None,
        q: str | None = None,
        phase: ConversionPhase | str | None = None,
        max_items: int | None = None,
    ) -> AsyncGenerator[DatasetConversion, None]:
        """Every conversion of a dataset matching ``filter``/``q``/``phase``, in ``sort_by``
        order, as one stream (``filter`` is one expression in the API, so there is nothing to
        merge). Arguments are checked before any request.

        ``sort_by``, ``filter`` and ``phase`` are typed ``Literal[...] | str``, as in
        :meth:`list_dataset_conversions`: known values complete in editors, new server values
        still type-check."""
        api_path("org", "datasets", dataset_id, "conversions")
        _check_value("sort_by", sort_by)
        _check_limit(limit)
        _check_text("filter", filter)
        _check_text("q", q)
        _check_text("phase", phase)
        _check_max_items(max_items)

        async def fetch(token: str | None) -> Page[DatasetConversion]:
            return await self.list_dataset_conversions(
                dataset_id,
                sort_by=sort_by,
                limit=limit,
                page_token=token,
                filter=filter,
                q=q,
                phase=phase,
            )

        return iter_items(fetch, max_items=max_items)

    async def get_dataset_conversion(
        self, dataset_id: str, conversion_id: str
    ) -> DatasetConversion:
        """``GET /org/datasets/{id}/conversions/{conversion_id}``: the full conversion, with
        its KCL outputs and snapshot images."""
        return await self.fetch(DATASET_CONVERSION, dataset_id, conversion_id)

    def dataset_conversion(self, dataset_id: str, conversion_id: str) -> JobRef[DatasetConversion]:
        """A JobRef for :func:`~async_jobs.wait_until_terminal` and :func:`~async_jobs.watch`.
        A conversion that goes back from ``in_progress`` to ``queued`` (a retry) is reported
        and waited on."""
        return self.ref(DATASET_CONVERSION, dataset_id, conversion_id)

    # -- whole datasets ---------------------------------------------------------------------

    async def get_dataset_stats(self, dataset_id: str) -> DatasetStats:
        """``GET /org/datasets/{id}/stats``: the dataset's conversions counted by status
        (``by_status``, ``total``, ``successes``, ``failures``), as one job."""
        return await self.fetch(DATASET, dataset_id)

    def dataset(self, dataset_id: str) -> JobRef[DatasetStats]:
        """A JobRef on a whole dataset as one job, for :func:`~async_jobs.wait_until_terminal`
        and :func:`~async_jobs.watch`: terminal once no conversion is queued or in progress
        (an unknown status counts as under way), SUCCEEDED if none failed, else FAILED;
        ``progress`` is finished / total. One request per poll, however large the dataset."""
        return self.ref(DATASET, dataset_id)

    async def retrigger_conversion(self, dataset_id: str, conversion_id: str) -> None:
        """``POST /org/datasets/{id}/conversions/{conversion_id}/retrigger`` (204): run the
        conversion again from ``queued``; wait on it with :meth:`dataset_conversion`.

        A POST is retried only when the server surely did not act on it (connection refused
        before sending, 429, 503 with Retry-After); any other failure is raised as is (a
        :class:`~async_jobs.ServerError` for a 500), so a retrigger is never sent twice
        behind your back."""
        path = api_path("org", "datasets", dataset_id, "conversions", conversion_id, "retrigger")
        await self._http.request("POST", path)

    async def retrigger_dataset(
        self,
        dataset_id: str,
        statuses: Sequence[ConversionStatus | str] | str | None = None,
    ) -> None:
        """``POST /org/datasets/{id}/retrigger`` (204): run again the dataset's conversions
        whose status is one of ``statuses`` (sent as one comma-separated value,
        ``statuses=success,in_progress``; a str is such a list already). None leaves the
        choice to the server: every conversion that did not succeed, ``in_progress`` ones
        only once they have run for more than 5 minutes. Wait on the dataset with
        :meth:`dataset`.

        A POST is retried only when the server surely did not act on it (connection refused
        before sending, 429, 503 with Retry-After); any other failure is raised as is (a
        :class:`~async_jobs.ServerError` for a 500), so a retrigger is never sent twice
        behind your back. Arguments are checked before any request."""
        path = api_path("org", "datasets", dataset_id, "retrigger")
        value = None if statuses is None else _statuses_value(statuses)
        await self._http.request("POST", path, params={"statuses": value})
