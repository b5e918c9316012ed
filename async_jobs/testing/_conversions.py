"""The Zoo org dataset conversions of the fake server, with scripted lifecycles.

A conversion walks a timeline of steps. A step is ``(name, seconds)`` or ``(status, phase,
seconds)``; the last step's seconds are None (it stays there). In the short form a known phase
sets the status too (``queued`` is queued, ``completed`` is success, any other phase is
in_progress) and any other name is a status that keeps the current phase (``success`` moves
it to ``completed``). So ``[("queued", 1), ("convert_raw_kcl", 1), ("queued", 1), ("salon", 1),
("completed", None)]`` is a conversion retried after a dropped worker, ``("error_user", None)``
ends one in failure, and ``("in_progress", "mesh_repair", 1)`` reports a phase the library does
not know.

A retrigger (``POST .../conversions/{conversion_id}/retrigger``, or ``POST
/org/datasets/{id}/retrigger`` for several) restarts a conversion's walk at the fake clock's
now, from ``queued``, along its ``rerun`` timeline (default: every phase, then success); each
conversion counts the retriggers it received (``retriggers``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from ..models._state import JobState
from ..models.zoo import (
    CONVERSION_PHASES,
    CONVERSION_SORT_MODES,
    CONVERSION_STATUSES,
    conversion_state,
)
from ._clock import FakeClock
from ._helpers import CreationTimes
from ._helpers import Timeline as Walk
from ._zoo_wire import ZooOptions, check_uuid, new_id, zoo_error, zoo_page, zoo_time

__all__ = ["ConversionStep", "FakeConversion", "FakeConversions"]

ConversionStep = tuple[str, float | None] | tuple[str, str, float | None]
Timeline = Sequence[ConversionStep]

_QUEUED, _RUNNING, _SUCCESS, _DONE = "queued", "in_progress", "success", "completed"
_PHASE_INDEX = {phase: index for index, phase in enumerate(CONVERSION_PHASES)}
_STATUS_INDEX = {status: index for index, status in enumerate(CONVERSION_STATUSES)}
_OVERRIDE_PHASE = "manual_kcl_override"

#: Every phase of the live spec but ``manual_kcl_override``, 10 ms each, then success.
DEFAULT_TIMELINE: tuple[ConversionStep, ...] = (
    *((phase, 0.01) for phase in CONVERSION_PHASES[:-1] if phase != _OVERRIDE_PHASE),
    (_DONE, None),
)
#: The same walk through every phase, ``manual_kcl_override`` included.
OVERRIDE_TIMELINE: tuple[ConversionStep, ...] = (
    *((phase, 0.01) for phase in CONVERSION_PHASES[:-1]),
    (_DONE, None),
)
#: How long a retriggered conversion stays queued when its ``rerun`` starts elsewhere.
RERUN_QUEUED = 0.01
#: "If omitted, we [...] only retrigger ``in_progress`` conversions that have been running for
#: more than 5 minutes" (the spec of ``POST /org/datasets/{id}/retrigger``), in fake seconds.
STUCK_AFTER = 300.0
_FILTER = re.compile(r"^status:([A-Za-z0-9_]+)\Z")
_FAKE_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06"

# What each stage leaves behind once the pipeline has moved past the named phase.
_ORIGINAL_DONE = _PHASE_INDEX["snapshot_original"]
_RAW_DONE = _PHASE_INDEX["convert_raw_kcl"]
_RAW_SNAPSHOT_DONE = _PHASE_INDEX["snapshot_raw_kcl"]
_SALON_DONE = _PHASE_INDEX["salon"]
_SALON_SNAPSHOT_DONE = _PHASE_INDEX["snapshot_salon_kcl"]


def _snapshot(stage: str) -> list[dict[str, str]]:
    data = base64.b64encode(_FAKE_PNG + stage.encode()).decode()
    return [{"data_base64": data, "mime_type": "image/png"}]


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _parse_steps(start: float, phase: str, timeline: Timeline) -> Walk[tuple[str, str]]:
    """The walk through (status, phase) states ``timeline`` scripts, starting at ``start``
    in ``phase``."""
    if not timeline:
        raise ValueError("timeline must have at least one step")
    script: list[tuple[tuple[str, str], float | None]] = []
    for step in timeline:
        if len(step) == 3:
            status, phase, duration = step
        else:
            name, duration = step
            if name in _PHASE_INDEX:
                phase = name
                status = _QUEUED if name == _QUEUED else _SUCCESS if name == _DONE else _RUNNING
            else:
                status = name
                if status == _SUCCESS:
                    phase = _DONE
        script.append(((status, phase), duration))
    return Walk.script(start, script)


@dataclass
class FakeConversion:
    """One scripted conversion, walking (status, phase) states on the server's clock."""

    id: str
    dataset_id: str
    created: float
    created_at: datetime
    timeline: Walk[tuple[str, str]]
    file_path: str
    file_size: int
    error: str | None = None
    metadata: dict[str, str] | None = None
    manual_kcl_override: str | None = None
    importer_version: str = "kcl-importer 0.9.3"
    extra: dict[str, Any] = field(default_factory=dict)
    #: The walk a retrigger restarts from ``queued`` at the fake clock's now (None: every
    #: phase, 10 ms each, then success); set it to choose where a retriggered run ends.
    rerun: Timeline | None = None
    #: How many retriggers reached this conversion (through either retrigger route).
    retriggers: int = 0

    @property
    def file_etag(self) -> str:
        """A stable ETag derived from the file path."""
        return '"' + hashlib.sha256(self.file_path.encode()).hexdigest()[:32] + '"'

    @property
    def steps(self) -> list[tuple[float, str, str]]:
        """(fake time, status, phase) of each step of the timeline."""
        return [(at, status, phase) for at, (status, phase) in self.timeline.steps]

    def index_at(self, now: float) -> int:
        """The index of the step the conversion is in at fake time ``now``."""
        return self.timeline.index(now)

    def at(self, now: float) -> tuple[str, str]:
        """(status, phase) at fake time ``now``."""
        return self.timeline.state(now)

    def status_since(self, now: float) -> float:
        """When the conversion entered the status it has at ``now`` (a phase change within
        it does not count; its creation if it never changed status)."""
        steps = self.steps
        index = self.index_at(now)
        while index > 0 and steps[index - 1][1] == steps[index][1]:
            index -= 1
        return steps[index][0]


class FakeConversions:
    """The Zoo API's org dataset conversions, served from memory (``server.conversions``);
    ``options`` (:class:`ZooOptions`, shared with ``server.zoo``) say how strictly."""

    def __init__(self, clock: FakeClock, options: ZooOptions | None = None) -> None:
        self.clock = clock
        self.options: ZooOptions = options if options is not None else ZooOptions()
        self.datasets: dict[str, dict[str, FakeConversion]] = {}
        #: Dataset id -> how many ``POST /org/datasets/{id}/retrigger`` it received.
        self.dataset_retriggers: dict[str, int] = {}
        self._created = CreationTimes()
        self._count = 0

    def add_dataset(self, dataset_id: str | None = None) -> str:
        """Create an empty dataset (a new UUID unless given; a UUID too, unless
        ``options.uuid_ids`` is off) and return its id."""
        dataset_id = new_id(self.options, dataset_id, "dataset")
        self.datasets.setdefault(dataset_id, {})
        return dataset_id

    def add_conversion(
        self,
        dataset_id: str,
        timeline: Timeline | None = None,
        *,
        error: str | None = None,
        id: str | None = None,
        file_path: str | None = None,
        file_size: int | None = None,
        metadata: dict[str, str] | None = None,
        manual_kcl_override: str | None = None,
        extra: dict[str, Any] | None = None,
        rerun: Timeline | None = None,
    ) -> FakeConversion:
        """Create a conversion in ``dataset_id`` (created if new) that walks ``timeline`` (see
        the module docstring; default: every phase, 10 ms each, then success, through
        ``manual_kcl_override`` when one is given). ``error`` is the ``status_message`` of
        ``error_*`` steps; ``extra`` fields are added to the detail body as they are;
        ``rerun`` is the walk a retrigger restarts (default: like ``timeline``'s default)."""
        if timeline is None:
            timeline = OVERRIDE_TIMELINE if manual_kcl_override is not None else DEFAULT_TIMELINE
        dataset_id = self.add_dataset(dataset_id)
        conversion_id = new_id(self.options, id, "conversion")
        self._count += 1
        now = self.clock.now()
        conversion = FakeConversion(
            id=conversion_id,
            dataset_id=dataset_id,
            created=now,
            created_at=self._created.next(self.clock)[1],
            timeline=_parse_steps(now, _QUEUED, timeline),
            file_path=file_path or f"parts/part-{self._count:05d}.step",
            file_size=file_size if file_size is not None else 1024 + 37 * self._count,
            error=error,
            metadata=metadata,
            manual_kcl_override=manual_kcl_override,
            extra=dict(extra or {}),
            rerun=rerun,
        )
        self.datasets[dataset_id][conversion.id] = conversion
        return conversion

    def _find(self, conversion_id: str) -> FakeConversion:
        for conversions in self.datasets.values():
            if conversion_id in conversions:
                return conversions[conversion_id]
        raise KeyError(conversion_id)

    def restart(self, conversion_id: str, timeline: Timeline) -> None:
        """Replace the rest of a conversion's timeline with ``timeline``, starting now."""
        conversion = self._find(conversion_id)
        now = self.clock.now()
        rest = _parse_steps(now, conversion.at(now)[1], timeline)
        conversion.timeline.cut(now, inclusive=False)
        conversion.timeline.steps += rest.steps

    def set_status(self, conversion_id: str, status: str, *, phase: str | None = None) -> None:
        """Move a conversion to ``status`` now, for good. Without ``phase`` the step reads as
        in a timeline (``queued`` also resets the phase, ``success`` sets ``completed``, other
        statuses keep the current phase)."""
        if phase is None:
            self.restart(conversion_id, [(status, None)])
        else:
            self.restart(conversion_id, [(status, phase, None)])

    def cancel(self, conversion_id: str) -> None:
        """Cancel a conversion now."""
        self.set_status(conversion_id, "canceled")

    def retrigger(self, conversion_id: str) -> FakeConversion:
        """Run a conversion again, as the retrigger routes do: from ``queued`` at the fake
        clock's now along its ``rerun`` timeline, the rest of its current walk dropped.
        Counted in its ``retriggers``."""
        conversion = self._find(conversion_id)
        rerun = conversion.rerun
        if rerun is None:
            override = conversion.manual_kcl_override is not None
            rerun = OVERRIDE_TIMELINE if override else DEFAULT_TIMELINE
        now = self.clock.now()
        walk = _parse_steps(now, _QUEUED, rerun)
        if walk.steps[0][1][0] != _QUEUED:
            walk = _parse_steps(now, _QUEUED, [(_QUEUED, RERUN_QUEUED), *rerun])
        conversion.timeline.cut(now, inclusive=False)
        conversion.timeline.steps += walk.steps
        conversion.retriggers += 1
        return conversion

    def to_retrigger(self, dataset_id: str, statuses: Collection[str] | None) -> list[str]:
        """The conversions of a dataset a ``POST /org/datasets/{id}/retrigger`` runs again
        now: those whose status is one of ``statuses``; without them every one that did not
        succeed, ``in_progress`` ones only once they have run for more than
        :data:`STUCK_AFTER` seconds."""
        now = self.clock.now()
        chosen = []
        for conversion in self.datasets[dataset_id].values():
            status = conversion.at(now)[0]
            if statuses is not None:
                wanted = status in statuses
            elif status == _RUNNING:
                wanted = now - conversion.status_since(now) > STUCK_AFTER
            else:
                wanted = status != _SUCCESS
            if wanted:
                chosen.append(conversion.id)
        return chosen

    def stats(self, dataset_id: str) -> dict[str, Any]:
        """The body of ``GET /org/datasets/{id}/stats`` now
        (``OrgDatasetConversionStatsResponse``): counts by raw status, the total, the
        successes and the failures (conversions in an ``error_*`` status)."""
        now = self.clock.now()
        by_status: dict[str, int] = {}
        for conversion in self.datasets[dataset_id].values():
            status = conversion.at(now)[0]
            by_status[status] = by_status.get(status, 0) + 1
        states = {status: conversion_state(status) for status in by_status}
        return {
            "by_status": by_status,
            "dataset_id": dataset_id,
            "failures": sum(n for s, n in by_status.items() if states[s] is JobState.FAILED),
            "successes": sum(n for s, n in by_status.items() if states[s] is JobState.SUCCEEDED),
            "total": sum(by_status.values()),
        }

    def state(self, conversion_id: str) -> tuple[str, str]:
        """The conversion's (status, phase) right now (the server's truth)."""
        return self._find(conversion_id).at(self.clock.now())

    # -- wire format ------------------------------------------------------------------------

    def _view(self, conversion: FakeConversion) -> tuple[dict[str, Any], int]:
        """The summary body, and the furthest phase index reached in the current run."""
        now = self.clock.now()
        index = conversion.index_at(now)
        steps = conversion.steps
        at, status, phase = steps[index]
        run_start = 0
        for i, (_, step_status, _) in enumerate(steps[: index + 1]):
            if step_status == _QUEUED:
                run_start = i
        run = steps[run_start : index + 1]
        started = next((t for t, s, _ in run if s != _QUEUED), None)
        state = conversion_state(status)
        # "The date and time the conversion got its current status" (the spec): when the
        # current status began (a phase change within it does not count); None while the
        # conversion still has the status it was created with.
        got_status = index
        while got_status > 0 and steps[got_status - 1][1] == status:
            got_status -= 1
        status_since = steps[got_status][0] if got_status > 0 else None
        reached = max((_PHASE_INDEX.get(p, -1) for _, _, p in run), default=-1)
        if status == _SUCCESS:
            reached = len(CONVERSION_PHASES)
        override = conversion.manual_kcl_override is not None
        body: dict[str, Any] = {
            "completed_at": zoo_time(
                None if status_since is None else self.clock.wall(status_since)
            ),
            "created_at": zoo_time(conversion.created_at),
            "dataset_id": conversion.dataset_id,
            "file_etag": conversion.file_etag,
            "file_path": conversion.file_path,
            "file_size": conversion.file_size,
            "id": conversion.id,
            "importer_version": conversion.importer_version if started is not None else None,
            "manual_kcl_override_active": override,
            "manual_kcl_override_updated_at": zoo_time(conversion.created_at) if override else None,
            "metadata": conversion.metadata,
            "phase": phase,
            "raw_kcl_similarity_score": 0.97 if reached > _RAW_SNAPSHOT_DONE else None,
            "salon_kcl_similarity_score": 0.99 if reached > _SALON_SNAPSHOT_DONE else None,
            "started_at": zoo_time(None if started is None else self.clock.wall(started)),
            "status": status,
            "status_message": conversion.error if state is JobState.FAILED else None,
            "updated_at": zoo_time(
                self.clock.wall(at) if at > conversion.created else conversion.created_at
            ),
        }
        return body, reached

    def summary(self, conversion: FakeConversion) -> dict[str, Any]:
        """The conversion as the list endpoint sends it (``OrgDatasetFileConversionSummary``)."""
        return self._view(conversion)[0]

    def detail(self, conversion: FakeConversion) -> dict[str, Any]:
        """The conversion as ``GET .../conversions/{id}`` sends it
        (``OrgDatasetFileConversionDetails``)."""
        body, reached = self._view(conversion)
        name = conversion.file_path.rsplit("/", 1)[-1].split(".")[0].replace("-", "_")
        raw = f"// raw KCL of {conversion.file_path}\nconst {name} = startSketchOn(XY)\n"
        salon = f"// {conversion.file_path}, refactored\nconst {name} = startSketchOn(XY)\n"
        body.update(
            manual_kcl_override=conversion.manual_kcl_override,
            original_snapshot_images=_snapshot("original") if reached > _ORIGINAL_DONE else [],
            raw_kcl_output=raw if reached > _RAW_DONE else None,
            raw_kcl_snapshot_images=_snapshot("raw") if reached > _RAW_SNAPSHOT_DONE else [],
            salon_kcl_output=salon if reached > _SALON_DONE else None,
            salon_kcl_snapshot_images=_snapshot("salon") if reached > _SALON_SNAPSHOT_DONE else [],
            output=salon if body["status"] == _SUCCESS else None,
        )
        body.update(conversion.extra)
        return body

    # -- handlers ---------------------------------------------------------------------------

    @staticmethod
    def _sort_key(sort_by: str, body: dict[str, Any]) -> tuple[Any, ...]:
        field_name = sort_by.rsplit("_", 1)[0]
        if field_name == "status":
            first: Any = _STATUS_INDEX.get(body["status"], len(_STATUS_INDEX))
        elif field_name == "phase":
            first = _PHASE_INDEX.get(body["phase"], len(_PHASE_INDEX))
        else:
            first = _parse_time(body[field_name])
        return (first, _parse_time(body["created_at"]), body["id"])

    async def handle_list(self, request: web.Request) -> web.Response:
        """``GET /org/datasets/{id}/conversions``: limit, page_token, sort_by, filter
        (``status:<value>``), q (id or file path contains) and phase."""
        dataset_id = check_uuid(self.options, "id", request.match_info["id"])
        if isinstance(dataset_id, web.Response):
            return dataset_id
        conversions = self.datasets.get(dataset_id)
        if conversions is None:
            return zoo_error(404, "dataset not found", "not_found")
        query = request.query
        sort_by = query.get("sort_by", "created_at_descending")
        if sort_by not in CONVERSION_SORT_MODES:
            return zoo_error(400, f"invalid sort_by: {sort_by!r}", "invalid_request")
        status_filter: str | None = None
        if "filter" in query:
            match = _FILTER.match(query["filter"])
            if match is None:
                return zoo_error(400, f"invalid filter: {query['filter']!r}", "invalid_request")
            status_filter = match.group(1)
        search = query.get("q", "").lower()
        phase = query.get("phase")
        digest = hashlib.sha256(
            "\0".join((query.get("filter", ""), search, phase or "")).encode()
        ).hexdigest()[:8]
        now = self.clock.now()
        # Only the conversions that can match get a body (building one is the costly part);
        # what is sent is checked on the body itself, as it always was.
        chosen = [
            body
            for body in (
                self.summary(c)
                for c in conversions.values()
                if _may_match(c.at(now), status_filter, phase)
            )
            if (status_filter is None or body["status"] == status_filter)
            and (phase is None or body["phase"] == phase)
            and (search in body["id"].lower() or search in body["file_path"].lower())
        ]
        chosen.sort(
            key=lambda body: self._sort_key(sort_by, body), reverse=sort_by.endswith("descending")
        )
        paged = zoo_page(chosen, query, self.options, f"{digest}+{sort_by}")
        if isinstance(paged, web.Response):
            return paged
        page, next_page = paged
        return web.json_response({"items": list(page), "next_page": next_page})

    async def handle_get(self, request: web.Request) -> web.Response:
        """``GET /org/datasets/{id}/conversions/{conversion_id}``."""
        conversion = self._conversion(request)
        if isinstance(conversion, web.Response):
            return conversion
        return web.json_response(self.detail(conversion))

    def _conversion(self, request: web.Request) -> FakeConversion | web.Response:
        """The conversion of the request's path, or the 400/404 to answer instead."""
        dataset_id = check_uuid(self.options, "id", request.match_info["id"])
        if isinstance(dataset_id, web.Response):
            return dataset_id
        raw_id = request.match_info["conversion_id"]
        conversion_id = check_uuid(self.options, "conversion_id", raw_id)
        if isinstance(conversion_id, web.Response):
            return conversion_id
        conversion = self.datasets.get(dataset_id, {}).get(conversion_id)
        if conversion is None:
            return zoo_error(404, "dataset conversion not found", "not_found")
        return conversion

    def _dataset(self, request: web.Request) -> str | web.Response:
        """The dataset of the request's path, or the 400/404 to answer instead."""
        dataset_id = check_uuid(self.options, "id", request.match_info["id"])
        if isinstance(dataset_id, web.Response):
            return dataset_id
        if dataset_id not in self.datasets:
            return zoo_error(404, "dataset not found", "not_found")
        return dataset_id

    async def handle_stats(self, request: web.Request) -> web.Response:
        """``GET /org/datasets/{id}/stats``."""
        dataset_id = self._dataset(request)
        if isinstance(dataset_id, web.Response):
            return dataset_id
        return web.json_response(self.stats(dataset_id))

    async def handle_retrigger(self, request: web.Request) -> web.Response:
        """``POST /org/datasets/{id}/conversions/{conversion_id}/retrigger``: 204."""
        dataset_id = self._dataset(request)  # an unknown dataset is "dataset not found"
        if isinstance(dataset_id, web.Response):
            return dataset_id
        conversion = self._conversion(request)
        if isinstance(conversion, web.Response):
            return conversion
        self.retrigger(conversion.id)
        return web.Response(status=204)

    async def handle_retrigger_dataset(self, request: web.Request) -> web.Response:
        """``POST /org/datasets/{id}/retrigger[?statuses=a,b]``: 204. Every status named must
        be a known one (a 400 otherwise, as the server's enum parsing answers)."""
        dataset_id = self._dataset(request)
        if isinstance(dataset_id, web.Response):
            return dataset_id
        statuses: set[str] | None = None
        if "statuses" in request.query:
            statuses = set(request.query["statuses"].split(","))
            unknown = sorted(statuses - set(CONVERSION_STATUSES))
            if unknown:
                return zoo_error(400, f"invalid statuses: {unknown!r}", "invalid_request")
        self.dataset_retriggers[dataset_id] = self.dataset_retriggers.get(dataset_id, 0) + 1
        for conversion_id in self.to_retrigger(dataset_id, statuses):
            self.retrigger(conversion_id)
        return web.Response(status=204)

    def add_routes(self, app: web.Application) -> None:
        """Register the conversion and dataset routes on ``app``."""
        app.router.add_get("/org/datasets/{id}/conversions", self.handle_list)
        app.router.add_get("/org/datasets/{id}/conversions/{conversion_id}", self.handle_get)
        app.router.add_post(
            "/org/datasets/{id}/conversions/{conversion_id}/retrigger", self.handle_retrigger
        )
        app.router.add_get("/org/datasets/{id}/stats", self.handle_stats)
        app.router.add_post("/org/datasets/{id}/retrigger", self.handle_retrigger_dataset)


def _may_match(now: tuple[str, str], status: str | None, phase: str | None) -> bool:
    """Whether a conversion in (status, phase) ``now`` can pass a listing's filters."""
    return (status is None or now[0] == status) and (phase is None or now[1] == phase)
