"""The Zoo API fake: async operations with scripted lifecycles and, beside them, the org dataset
conversions (``server.conversions``), served together as one plugin the way ``ZooClient`` is
one client."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from ..models.zoo import OPERATION_SORT_MODES, OPERATION_STATES, OPERATION_STATUSES
from ._clock import FakeClock
from ._conversions import FakeConversions
from ._helpers import CreationTimes
from ._helpers import Timeline as Walk
from ._plugin import FakeApi
from ._zoo_wire import (
    API_CALL_ID,
    ZooOptions,
    check_uuid,
    new_id,
    zoo_error,
    zoo_page,
    zoo_time,
)

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

Timeline = Sequence[tuple[str, float | None]]
DEFAULT_TIMELINE: Timeline = (("queued", 0.05), ("in_progress", 0.2), ("completed", None))
#: Who the list endpoint names as ``worker`` once one picked the operation up.
FAKE_WORKER = "fake-worker-1"
_WAITING = ("queued", "uploaded")


def _is_terminal(status: str) -> bool:
    state = OPERATION_STATES.get(status)
    return state is not None and state.is_terminal


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


@dataclass
class FakeOperation:
    """One scripted async operation, walking ``timeline`` on the server's clock."""

    id: str
    type: str
    created: float
    created_at: datetime
    timeline: Walk[str]
    error: str | None = None
    user_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    input: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> list[tuple[float, str]]:
        """(fake time, status) of each step: it enters ``steps[i][1]`` at ``steps[i][0]``."""
        return self.timeline.steps

    def status_at(self, now: float) -> tuple[str, float | None, float | None, float]:
        """(status, started, completed, last change) at fake time ``now``."""
        walk = self.timeline
        started = walk.first(now, lambda status: status not in _WAITING)
        return walk.state(now), started, walk.last(now, _is_terminal), walk.since(now)


class FakeZoo(FakeApi):
    """The Zoo API fake: its async operations, served from memory, and its dataset
    conversions (:attr:`conversions`); ``options`` (:class:`ZooOptions`, shared by both) say
    how strictly. Every response carries an ``X-Api-Call-Id``, as the real API's do."""

    name = "zoo"
    prefixes: tuple[str, ...] = ("/async", "/org")

    def __init__(self, clock: FakeClock | None = None, options: ZooOptions | None = None) -> None:
        super().__init__(clock)
        self.options: ZooOptions = options if options is not None else ZooOptions()
        self.operations: dict[str, FakeOperation] = {}
        #: The dataset conversions (``server.conversions``), on the same clock and options.
        self.conversions: FakeConversions = FakeConversions(self.clock, self.options)
        self._created = CreationTimes()

    def attach(self, server: Any) -> None:
        """Adopt the server's clock, for the conversions too."""
        super().attach(server)
        self.conversions.clock = self.clock

    def error(self, path: str, status: int, message: str, code: str | None = None) -> web.Response:
        """Zoo's error body: ``{error_code, message, request_id}``."""
        return zoo_error(status, message, code)

    def finish(self, request: web.Request, response: web.StreamResponse) -> None:
        """Name every response with an ``X-Api-Call-Id``."""
        response.headers.setdefault(API_CALL_ID, str(uuid.uuid4()))

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
        op = FakeOperation(
            id=op_id,
            type=type,
            created=now,
            created_at=self._created.next(self.clock)[1],
            timeline=Walk.script(now, timeline),
            error=error,
            input=input if input is not None else {"src_format": "obj"},
            extra=dict(extra or {}),
        )
        self.operations[op.id] = op
        return op

    def set_status(self, op_id: str, status: str, *, error: str | None = None) -> None:
        """Move an operation to ``status`` now, dropping the rest of its timeline."""
        op = self.operations[op_id]
        op.timeline.goto(self.clock.now(), status)
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
            if status is None or op.timeline.state(now) == status  # status_at(now)[0], cheaper
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
        """Register the Zoo routes (operations and conversions) on ``app``."""
        app.router.add_get("/async/operations", self.handle_list)
        app.router.add_get("/async/operations/{id}", self.handle_get)
        self.conversions.add_routes(app)
