"""The Zoo half of the fake server: async operations with scripted lifecycles."""

from __future__ import annotations

import base64
import bisect
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web

from ..models.zoo import OPERATION_SORT_MODES, OPERATION_STATES, OPERATION_STATUSES
from ._clock import FakeClock

__all__ = [
    "FakeOperation",
    "FakeZoo",
    "ZooOptions",
    "check_uuid",
    "new_id",
    "zoo_error",
    "zoo_page",
    "zoo_time",
]

T = TypeVar("T")
Timeline = Sequence[tuple[str, float | None]]
DEFAULT_TIMELINE: Timeline = (("queued", 0.05), ("in_progress", 0.2), ("completed", None))
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_UINT32_MAX = 2**32 - 1
#: A page token: the offset, the page's number in its listing and the listing's scan key.
_TOKEN = re.compile(r"^o=(\d+)&n=(\d+)&k=([A-Za-z0-9_+]+)/==\Z")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
#: Who the list endpoint names as ``worker`` once one picked the operation up.
FAKE_WORKER = "fake-worker-1"


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


# What each operation type carries in GET /async/operations/{id} (the AsyncApiCallOutput
# variants), before and after it completes.
_TYPE_FIELDS: dict[str, dict[str, Any]] = {
    "file_conversion": {"src_format": "obj", "output_format": "stl"},
    "file_volume": {"src_format": "obj", "output_unit": "cm3"},
    "file_center_of_mass": {"src_format": "obj", "output_unit": "mm"},
    "file_mass": {
        "src_format": "obj",
        "output_unit": "g",
        "material_density": 1.05,
        "material_density_unit": "kg:m3",
    },
    "file_density": {
        "src_format": "obj",
        "output_unit": "kg:m3",
        "material_mass": 12.5,
        "material_mass_unit": "g",
    },
    "file_surface_area": {"src_format": "obj", "output_unit": "mm2"},
    "text_to_cad": {
        "model": "cad",
        "model_version": "v1.4",
        "output_format": "step",
        "prompt": "a 12-tooth spur gear",
    },
    "text_to_cad_iteration": {
        "code": "const gear = startSketchOn(XY)",
        "model": "kcl_iteration",
        "model_version": "v1.4",
        "original_source_code": "const part = startSketchOn(XY)",
        "source_ranges": [],
    },
    "text_to_cad_multi_file_iteration": {
        "model": "kcl_iteration",
        "model_version": "v1.4",
        "source_ranges": [],
    },
}
_RESULTS: dict[str, dict[str, Any]] = {
    "file_conversion": {
        "outputs": {"output.stl": base64.urlsafe_b64encode(b"solid fake\nendsolid").decode()}
    },
    "file_volume": {"volume": 42.5},
    "file_center_of_mass": {"center_of_mass": {"x": 1.0, "y": 2.0, "z": 3.0}},
    "file_mass": {"mass": 44.6},
    "file_density": {"density": 0.29},
    "file_surface_area": {"surface_area": 1234.5},
    "text_to_cad": {"code": "const gear = startSketchOn(XY)", "kcl_version": "0.2.0"},
}


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
    offset = number = 0
    token = query.get("page_token")
    if token is not None:
        match = _TOKEN.match(token)
        if match is None or match.group(3) != scan:
            return zoo_error(400, "invalid page_token", "invalid_request")
        offset, number = int(match.group(1)), int(match.group(2))
    if number < len(options.page_sizes):
        limit = min(limit, max(options.page_sizes[number], 0))
    page = items[offset : offset + limit]
    end = offset + len(page)
    more = end < len(items) or (options.token_on_last_page and bool(page))
    next_page = f"o={end}&n={number + 1}&k={scan}/==" if more else None
    return page, next_page


def zoo_error(status: int, message: str, error_code: str | None = None) -> web.Response:
    """A Zoo-style error response: ``{error_code, message, request_id}``."""
    request_id = str(uuid.uuid4())
    body: dict[str, Any] = {"message": message, "request_id": request_id}
    if error_code:
        body["error_code"] = error_code
    return web.json_response(body, status=status, headers={"X-Api-Call-Id": request_id})


@dataclass
class FakeOperation:
    """One scripted async operation: it enters ``steps[i][1]`` at fake time ``steps[i][0]``."""

    id: str
    type: str
    created: float
    created_at: datetime
    steps: list[tuple[float, str]]
    error: str | None = None
    user_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    input: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def status_at(self, now: float) -> tuple[str, float | None, float | None, float]:
        """(status, started, completed, last change) at fake time ``now``."""
        index = max(bisect.bisect_right([t for t, _ in self.steps], now) - 1, 0)
        status = self.steps[index][1]
        started = completed = None
        for at, name in self.steps[: index + 1]:
            state = OPERATION_STATES.get(name)
            if started is None and name not in ("queued", "uploaded"):
                started = at
            if state is not None and state.is_terminal:
                completed = at
        return status, started, completed, self.steps[index][0]


class FakeZoo:
    """The Zoo API's async operations, served from memory; ``options`` (:class:`ZooOptions`)
    say how strictly."""

    def __init__(self, clock: FakeClock, options: ZooOptions | None = None) -> None:
        self.clock = clock
        self.options: ZooOptions = options if options is not None else ZooOptions()
        self.operations: dict[str, FakeOperation] = {}
        self._last_created: datetime | None = None

    def _creation_time(self) -> datetime:
        created_at = self.clock.wall()
        # Keep creation times distinct so created_at order is total, as it is for the real API.
        if self._last_created is not None and created_at <= self._last_created:
            created_at = self._last_created + timedelta(microseconds=1)
        self._last_created = created_at
        return created_at

    def add_operation(
        self,
        type: str = "file_conversion",
        timeline: Timeline = DEFAULT_TIMELINE,
        *,
        error: str | None = None,
        id: str | None = None,
        input: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> FakeOperation:
        """Create an operation that walks ``timeline``: (status, seconds in it) pairs, the last
        one's duration None (it stays there). A ``failed`` step reports ``error``. ``id`` is
        a new UUID unless given (a UUID too, unless ``options.uuid_ids`` is off)."""
        if not timeline:
            raise ValueError("timeline must have at least one step")
        op_id = new_id(self.options, id, "operation")
        now = self.clock.now()
        steps: list[tuple[float, str]] = []
        at = now
        for status, duration in timeline:
            steps.append((at, status))
            if duration is None:
                break
            at += duration
        op = FakeOperation(
            id=op_id,
            type=type,
            created=now,
            created_at=self._creation_time(),
            steps=steps,
            error=error,
            input=input if input is not None else {"src_format": "obj"},
            extra=dict(extra or {}),
        )
        self.operations[op.id] = op
        return op

    def set_status(self, op_id: str, status: str, *, error: str | None = None) -> None:
        """Move an operation to ``status`` now, dropping the rest of its timeline."""
        op = self.operations[op_id]
        now = self.clock.now()
        op.steps = [s for s in op.steps if s[0] <= now] + [(now, status)]
        if error is not None:
            op.error = error

    def status(self, op_id: str) -> str:
        """The operation's status right now (the server's truth)."""
        return self.operations[op_id].status_at(self.clock.now())[0]

    # -- wire format ------------------------------------------------------------------------

    def _common(self, op: FakeOperation) -> dict[str, Any]:
        status, started, completed, changed = op.status_at(self.clock.now())
        return {
            "id": op.id,
            "type": op.type,
            "status": status,
            "created_at": zoo_time(op.created_at),
            "updated_at": zoo_time(
                self.clock.wall(changed) if changed > op.created else op.created_at
            ),
            "started_at": zoo_time(None if started is None else self.clock.wall(started)),
            "completed_at": zoo_time(None if completed is None else self.clock.wall(completed)),
            "error": op.error if status == "failed" else None,
            "user_id": op.user_id,
        }

    def list_item(self, op: FakeOperation) -> dict[str, Any]:
        """The operation as ``GET /async/operations`` lists it (``AsyncApiCall``)."""
        body = self._common(op)
        done = body["status"] == "completed"
        body.update(
            attempts=1 if body["started_at"] else 0,
            input=op.input,
            # "For async file conversion operations, this endpoint does not return the
            # contents of converted files (`output`)."
            output=_RESULTS.get(op.type) if done and op.type != "file_conversion" else None,
            # A non-null string in the spec: empty until a worker picks the operation up.
            worker=FAKE_WORKER if body["started_at"] else "",
        )
        return body

    def detail(self, op: FakeOperation) -> dict[str, Any]:
        """The operation as ``GET /async/operations/{id}`` returns it (``AsyncApiCallOutput``)."""
        body = self._common(op)
        body.update(_TYPE_FIELDS.get(op.type, {}))
        if op.type.startswith("text_to_cad"):
            body["conversation_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, op.id))
        if body["status"] == "completed":
            body.update(_RESULTS.get(op.type, {}))
        body.update(op.extra)
        return body

    # -- handlers ---------------------------------------------------------------------------

    async def handle_list(self, request: web.Request) -> web.Response:
        """``GET /async/operations``: ``status`` (none: every status), ``sort_by`` (none:
        ``created_at_ascending``), ``limit`` and ``page_token``, all optional as in the spec."""
        query = request.query
        status, sort_by = query.get("status"), query.get("sort_by", "created_at_ascending")
        if status is not None and status not in OPERATION_STATUSES:
            return zoo_error(400, f"invalid status: {status!r}", "invalid_request")
        if sort_by not in OPERATION_SORT_MODES:
            return zoo_error(400, f"invalid sort_by: {sort_by!r}", "invalid_request")
        now = self.clock.now()
        chosen = [
            op
            for op in self.operations.values()
            if status is None or op.status_at(now)[0] == status
        ]
        descending = sort_by == "created_at_descending" and not self.options.ascending_only
        chosen.sort(key=lambda op: op.created_at, reverse=descending)
        paged = zoo_page(chosen, query, self.options, f"{status or 'any'}+{sort_by}")
        if isinstance(paged, web.Response):
            return paged
        page, next_page = paged
        return web.json_response(
            {"items": [self.list_item(op) for op in page], "next_page": next_page}
        )

    async def handle_get(self, request: web.Request) -> web.Response:
        """``GET /async/operations/{id}``."""
        op_id = check_uuid(self.options, "id", request.match_info["id"])
        if isinstance(op_id, web.Response):
            return op_id
        op = self.operations.get(op_id)
        if op is None:
            return zoo_error(404, "async operation not found", "not_found")
        return web.json_response(self.detail(op))

    def add_routes(self, app: web.Application) -> None:
        """Register the Zoo routes on ``app``."""
        app.router.add_get("/async/operations", self.handle_list)
        app.router.add_get("/async/operations/{id}", self.handle_get)
