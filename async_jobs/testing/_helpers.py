"""Building blocks for fake API plugins: timelines walked on the fake clock, distinct creation
times, opaque cursor pages and JSON responses. Every built-in fake uses them; so can yours."""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from aiohttp import web

from ._clock import FakeClock

__all__ = [
    "CreationTimes",
    "CursorPage",
    "InvalidCursor",
    "Moment",
    "Timeline",
    "cursor_page",
    "json_response",
    "walk",
]

S = TypeVar("S")
T = TypeVar("T")

#: A cursor: the offset, the page's number in its listing and the listing's scan key. The
#: ``&``, ``=``, ``+`` and ``/`` in it are there on purpose: a client must URL-encode cursors.
_CURSOR = re.compile(r"^o=(\d+)&n=(\d+)&k=([A-Za-z0-9_+.-]+)/==\Z")
_SCAN = re.compile(r"^[A-Za-z0-9_+.-]+\Z")


def walk(start: float, script: Iterable[tuple[S, float | None]]) -> list[tuple[float, S]]:
    """(fake time, state) steps from a script of (state, seconds in it) pairs starting at
    ``start``; a duration of None ends the walk there (the state stays for good)."""
    steps: list[tuple[float, S]] = []
    at = start
    for state, duration in script:
        steps.append((at, state))
        if duration is None:
            break
        at += duration
    return steps


@dataclass(frozen=True)
class Moment(Generic[S]):
    """Where a :class:`Timeline` stands at one instant: its ``state``, when that state began
    (``since``), when the job first started and when it finished (fake seconds, or None)."""

    state: S
    since: float
    started: float | None
    finished: float | None


class Timeline(Generic[S]):
    """A scripted walk through states on the fake clock: step ``i`` (``steps[i] = (at,
    state)``) is entered at fake time ``at``. Before its first step a timeline is in it.

    ``Timeline.script(server.clock.now(), [("starting", 1), ("processing", 2), ("succeeded",
    None)])`` starts now, processes after one second and succeeds two seconds later.
    """

    def __init__(self, steps: Iterable[tuple[float, S]]) -> None:
        self.steps: list[tuple[float, S]] = list(steps)
        if not self.steps:
            raise ValueError("a timeline needs at least one step")

    @classmethod
    def script(cls, start: float, script: Iterable[tuple[S, float | None]]) -> Timeline[S]:
        """A timeline walking ``script`` (see :func:`walk`) from fake time ``start``."""
        return cls(walk(start, script))

    def index(self, now: float) -> int:
        """The index of the step the timeline is in at fake time ``now``."""
        return max(bisect.bisect_right([at for at, _ in self.steps], now) - 1, 0)

    def state(self, now: float) -> S:
        """The state at fake time ``now``."""
        return self.steps[self.index(now)][1]

    def since(self, now: float) -> float:
        """When the step the timeline is in at ``now`` was entered."""
        return self.steps[self.index(now)][0]

    def first(self, now: float, predicate: Callable[[S], bool]) -> float | None:
        """When the first step entered by ``now`` whose state matches began (None: none did)."""
        return next((at for at, s in self.steps[: self.index(now) + 1] if predicate(s)), None)

    def last(self, now: float, predicate: Callable[[S], bool]) -> float | None:
        """When the last step entered by ``now`` whose state matches began (None: none did)."""
        found = None
        for at, state in self.steps[: self.index(now) + 1]:
            if predicate(state):
                found = at
        return found

    def at(
        self,
        now: float,
        *,
        started: Callable[[S], bool],
        finished: Callable[[S], bool],
    ) -> Moment[S]:
        """The :class:`Moment` at ``now``: ``started`` says which states mean the job has
        started (the first such step is its start), ``finished`` which ones end it (its
        finish is when its current state began, if that state is one of them)."""
        at, state = self.steps[self.index(now)]
        return Moment(state, at, self.first(now, started), at if finished(state) else None)

    def cut(self, at: float, *, inclusive: bool = True) -> None:
        """Drop every step entered after ``at`` (and at ``at`` itself unless ``inclusive``)."""
        self.steps = [s for s in self.steps if s[0] < at or (inclusive and s[0] == at)]

    def goto(self, at: float, state: S) -> None:
        """From fake time ``at`` on, stay in ``state``: the rest of the script is dropped."""
        self.cut(at)
        self.steps.append((at, state))


class CreationTimes:
    """Distinct, increasing creation instants, so that listings sorted by creation time have
    a total order, as real APIs' do (two jobs made in the same instant differ by 1 µs)."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._last_wall: datetime | None = None

    def next(self, clock: FakeClock) -> tuple[float, datetime]:
        """The next creation instant on ``clock``: (fake seconds, UTC wall-clock time)."""
        now = clock.now()
        if self._last is not None and now <= self._last:
            now = self._last + 1e-6
        wall = clock.wall(now)
        if self._last_wall is not None and wall <= self._last_wall:
            wall = self._last_wall + timedelta(microseconds=1)
        self._last, self._last_wall = now, wall
        return now, wall


class InvalidCursor(ValueError):
    """A cursor this listing did not hand out (malformed, or from another listing)."""


@dataclass(frozen=True)
class CursorPage(Generic[T]):
    """One page of a listing and the cursor of the next page (None: this is the last one)."""

    items: Sequence[T]
    next_cursor: str | None


def cursor_page(
    items: Sequence[T],
    limit: int,
    cursor: str | None = None,
    *,
    scan: str = "all",
    sizes: Sequence[int] = (),
    cursor_on_last_page: bool = False,
) -> CursorPage[T]:
    """One page of ``items`` (already filtered and sorted) of at most ``limit`` items, after
    ``cursor`` (None: the first page). A cursor is bound to ``scan`` (name the listing's
    filter and order in it, ``[A-Za-z0-9_+.-]``): one from another listing raises
    :class:`InvalidCursor`, as does a malformed one. The n-th page holds at most
    ``sizes[n]`` items (0: an empty page that still has a next cursor);
    ``cursor_on_last_page`` gives every non-empty page a next cursor, so a listing ends with
    an empty page."""
    if not _SCAN.match(scan):
        raise ValueError(f"scan must match [A-Za-z0-9_+.-]+, got {scan!r}")
    offset = number = 0
    if cursor is not None:
        match = _CURSOR.match(cursor)
        if match is None or match.group(3) != scan:
            raise InvalidCursor(cursor)
        offset, number = int(match.group(1)), int(match.group(2))
    if number < len(sizes):
        limit = min(limit, max(sizes[number], 0))
    page = items[offset : offset + limit]
    end = offset + len(page)
    more = end < len(items) or (cursor_on_last_page and bool(page))
    return CursorPage(page, f"o={end}&n={number + 1}&k={scan}/==" if more else None)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response; datetimes in ``body`` are written as ISO 8601 (UTC with a ``Z``)."""
    return web.Response(
        text=json.dumps(body, default=_default),
        status=status,
        headers=dict(headers or {}),
        content_type="application/json",
    )
