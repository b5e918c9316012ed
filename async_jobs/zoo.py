"""ZooClient: Zoo async operations (and, with models/zoo.py, everything Zoo serves us)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from functools import partial

import msgspec

from ._client import BaseClient, from_env
from ._http import DEFAULT_MAX_BODY_SIZE, DEFAULT_TIMEOUT, ClientSession, StaticTokenAuth, api_path
from ._paging import Page, merge_streams
from ._policy import PollPolicy, RetryPolicy
from ._poll import JobRef
from .models.zoo import OPERATION_SORT_MODES, OPERATION_STATUSES, AsyncOperation

__all__ = ["ZooClient"]

DEFAULT_BASE_URL = "https://api.zoo.dev"
_operation_decoder = msgspec.json.Decoder(AsyncOperation)
_operation_page_decoder = msgspec.json.Decoder(Page[AsyncOperation])


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    return limit


def _check_max_items(max_items: int | None) -> None:
    if max_items is not None and (not isinstance(max_items, int) or max_items < 0):
        raise ValueError(f"max_items must be an int >= 0, got {max_items!r}")


def _created_at_key(op: AsyncOperation) -> float:
    return op.created_at.timestamp() if op.created_at is not None else float("-inf")


class ZooClient(BaseClient):
    """Async client for the Zoo API (https://api.zoo.dev).

    ``token`` defaults to ``ZOO_API_TOKEN``, then ``KITTYCAD_API_TOKEN``; ``base_url`` to
    ``ZOO_HOST``, then ``https://api.zoo.dev``. Pass ``session=`` to reuse your own
    ``ClientSession`` (it is never closed by the client). Use as
    ``async with ZooClient() as zoo:`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        token: str | None = None,
        base_url: str | None = None,
        session: ClientSession | None = None,
        *,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        allow_insecure_http: bool = False,
    ) -> None:
        super().__init__(
            base_url=from_env(base_url, "ZOO_HOST") or DEFAULT_BASE_URL,
            auth=StaticTokenAuth(from_env(token, "ZOO_API_TOKEN", "KITTYCAD_API_TOKEN")),
            session=session,
            timeout=timeout,
            retry=retry,
            poll=poll,
            max_body_size=max_body_size,
            allow_insecure_http=allow_insecure_http,
        )

    # -- async operations -------------------------------------------------------------------

    async def list_async_operations(
        self,
        status: str | None = None,
        sort_by: str = "created_at_descending",
        limit: int | None = None,
        page_token: str | None = None,
    ) -> Page[AsyncOperation]:
        """One page of ``GET /async/operations`` (a staff-only endpoint today)."""
        if status is not None:
            _check_choice("status", status, OPERATION_STATUSES)
        _check_choice("sort_by", sort_by, OPERATION_SORT_MODES)
        _check_limit(limit)
        return await self._http.get(
            api_path("async", "operations"),
            _operation_page_decoder,
            {"limit": limit, "page_token": page_token, "sort_by": sort_by, "status": status},
        )

    def iter_async_operations(
        self,
        status: str | Sequence[str] | None = None,
        sort_by: str = "created_at_descending",
        limit: int | None = None,
        max_items: int | None = None,
    ) -> AsyncGenerator[AsyncOperation, None]:
        """Every operation with the given status(es), in ``sort_by`` order.

        ``status=None`` means every known status. Each status is its own stream, fetched
        concurrently with the next page prefetched, and the streams are merged by
        ``created_at``. Arguments are checked before any request is sent.
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
            _check_choice("status", one, OPERATION_STATUSES)
        _check_choice("sort_by", sort_by, OPERATION_SORT_MODES)
        _check_limit(limit)
        _check_max_items(max_items)

        async def fetch(one: str, token: str | None) -> Page[AsyncOperation]:
            return await self.list_async_operations(one, sort_by, limit, token)

        return merge_streams(
            [partial(fetch, one) for one in statuses],
            key=_created_at_key,
            descending=sort_by == "created_at_descending",
            max_items=max_items,
        )

    async def get_async_operation(self, op_id: str) -> AsyncOperation:
        """``GET /async/operations/{id}``: one operation with its type-specific output."""
        return await self._http.get(api_path("async", "operations", op_id), _operation_decoder)

    def async_operation(self, op_id: str) -> JobRef[AsyncOperation]:
        """A JobRef for :func:`~async_jobs.wait_until_terminal` and :func:`~async_jobs.watch`."""
        api_path("async", "operations", op_id)  # validate now, not at the first poll
        return JobRef(
            "zoo.async_operation",
            (op_id,),
            partial(self.get_async_operation, op_id),
            poll=self.poll,
        )
