"""What both Zoo fakes (async operations and dataset conversions) share: options, UUID path
ids, page sizes and cursors, times and the error body."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web

from ._helpers import InvalidCursor, cursor_page

__all__ = [
    "API_CALL_ID",
    "ZooOptions",
    "check_uuid",
    "new_id",
    "parse_uuid",
    "zoo_error",
    "zoo_page",
    "zoo_page_size",
    "zoo_time",
]

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_UINT32_MAX = 2**32 - 1
_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
#: The header naming every Zoo response (and the ``request_id`` of its error bodies).
API_CALL_ID = "X-Api-Call-Id"


@dataclass
class ZooOptions:
    """How the fake Zoo API (async operations and dataset conversions alike) behaves where the
    real one is strict or varies. Shared by ``server.zoo.options`` and
    ``server.conversions.options``; set fields at any time.

    - ``uuid_ids`` (default True): path ids are UUIDs, as in the spec's path schema; any other
      id is a 400 before any lookup, and ``add_*`` refuse to create one;
    - ``max_page_size`` (default 1000): the most items a page holds; a larger ``limit`` is
      capped, or answered 400 with ``reject_over_limit``;
    - ``page_sizes``: the n-th page of every listing holds at most ``page_sizes[n]`` items
      (0: an empty page that still carries a ``next_page``), later pages ``limit``;
    - ``token_on_last_page``: every non-empty page carries a ``next_page`` (as dropshot's
      ``ResultsPage`` does), so a listing always ends with an empty page without one;
    - ``ascending_only``: ``GET /async/operations`` serves ``created_at`` ascending whatever
      ``sort_by`` says (the spec: "we only support scanning in ascending order").
    """

    uuid_ids: bool = True
    max_page_size: int = MAX_PAGE_SIZE
    reject_over_limit: bool = False
    page_sizes: Sequence[int] = ()
    token_on_last_page: bool = False
    ascending_only: bool = False


def parse_uuid(text: str) -> str | None:
    """``text`` as a canonical (lower-case, hyphenated) UUID, or None if it is not one."""
    return str(uuid.UUID(text)) if _UUID.match(text) else None


def check_uuid(options: ZooOptions, name: str, text: str) -> str | web.Response:
    """The path id to look up, or the 400 the real server's path schema answers."""
    if not options.uuid_ids:
        return text
    canonical = parse_uuid(text)
    if canonical is None:
        return zoo_error(
            400, f"bad parameter in URL path: {name}: invalid UUID: {text[:80]!r}", None
        )
    return canonical


def new_id(options: ZooOptions, given: str | None, what: str) -> str:
    """The id of a new fake object: ``given`` (checked against ``uuid_ids``) or a new UUID."""
    if given is None:
        return str(uuid.uuid4())
    if not options.uuid_ids:
        return given
    canonical = parse_uuid(given)
    if canonical is None:
        raise ValueError(
            f"{what} id {given!r} is not a UUID: the real API's ids are (use uuid.uuid4(), or "
            "set options.uuid_ids = False to serve other ids)"
        )
    return canonical


def zoo_time(moment: datetime | None) -> str | None:
    """A datetime as Zoo writes it: ISO 8601 with a ``Z``."""
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def zoo_page_size(query: Mapping[str, str], options: ZooOptions) -> int | web.Response:
    """The ``limit`` of a Zoo list request (a uint32 >= 1), capped at ``max_page_size``, or
    the 400 to answer instead."""
    try:
        limit = int(query.get("limit", DEFAULT_PAGE_SIZE))
    except ValueError:
        return zoo_error(400, "limit must be an integer", "invalid_request")
    if not 1 <= limit <= _UINT32_MAX:
        return zoo_error(400, "limit must be a uint32 >= 1", "invalid_request")
    if limit > options.max_page_size and options.reject_over_limit:
        return zoo_error(
            400, f"limit must be <= {options.max_page_size}, got {limit}", "invalid_request"
        )
    return min(limit, options.max_page_size)


def zoo_page(
    items: Sequence[T], query: Mapping[str, str], options: ZooOptions, scan: str
) -> tuple[Sequence[T], str | None] | web.Response:
    """One page of ``items`` (already filtered and sorted) for a list request, and its
    ``next_page`` token; or the 400 to answer instead. A token is bound to ``scan`` (the
    listing's filter and order): one from another listing is refused."""
    limit = zoo_page_size(query, options)
    if isinstance(limit, web.Response):
        return limit
    try:
        page = cursor_page(
            items,
            limit,
            query.get("page_token"),
            scan=scan,
            sizes=options.page_sizes,
            cursor_on_last_page=options.token_on_last_page,
        )
    except InvalidCursor:
        return zoo_error(400, "invalid page_token", "invalid_request")
    return page.items, page.next_cursor


def zoo_error(status: int, message: str, error_code: str | None = None) -> web.Response:
    """A Zoo-style error response: ``{error_code, message, request_id}``."""
    request_id = str(uuid.uuid4())
    body: dict[str, Any] = {"message": message, "request_id": request_id}
    if error_code:
        body["error_code"] = error_code
    return web.json_response(body, status=status, headers={API_CALL_ID: request_id})
