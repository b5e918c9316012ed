"""Fault injection for the fake server: errors, latency, broken bodies, dropped connections."""

from __future__ import annotations

import asyncio
import fnmatch
import random
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Fault", "FaultKind", "FaultPlan"]

FaultKind = Literal[
    "status", "latency", "malformed", "truncated", "drop", "html", "redirect", "body", "hold"
]


@dataclass
class Fault:
    """One injected misbehaviour.

    ``route`` is a glob on the request path (``/async/operations/*``); ``times`` how many
    requests it hits (None: every one), each with ``probability``. Kinds:

    - ``status``: answer ``status`` with the API's error body, with ``Retry-After``:
      ``retry_after`` as given, or an HTTP date ``retry_after_date`` seconds from now; with
      ``served=True`` the request is first handled as usual (whatever it does is done, a
      POST acted on) and only its answer is replaced by the error, as when a server or a
      proxy fails after the work was done;
    - ``latency``: wait ``delay`` seconds (or a random time up to ``max_delay``), then answer
      normally;
    - ``malformed``: 200 with a body that is not JSON;
    - ``truncated``: the real answer cut in half with the full Content-Length, then close;
    - ``drop``: close the connection without answering;
    - ``html``: ``status`` (default 502) with an HTML error page;
    - ``redirect``: ``status`` (default 307) to ``location``;
    - ``body``: ``status`` (default 200) with exactly ``body`` and extra ``headers`` (for
      hostile bodies: gzip bombs, non-UTF-8, deep nesting, ...);
    - ``hold``: keep the request waiting until :meth:`release`, then answer normally (with
      ``server.in_flight`` a test sees how many requests a client keeps open at once).
    """

    kind: FaultKind
    route: str = "*"
    times: int | None = 1
    probability: float = 1.0
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    location: str | None = None
    max_delay: float | None = None
    retry_after_date: float | None = None
    body: bytes | None = None
    headers: dict[str, str] | None = None
    served: bool = False
    hits: int = field(default=0, init=False)
    _released: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def release(self) -> None:
        """Let every held request (and every later one) through."""
        self._released.set()

    async def wait_released(self) -> None:
        """Return once :meth:`release` was called."""
        await self._released.wait()

    def matches(self, path: str) -> bool:
        """True if this fault covers ``path`` and has hits left."""
        if self.times is not None and self.hits >= self.times:
            return False
        return fnmatch.fnmatchcase(path, self.route)


class FaultPlan:
    """The faults armed on a server, first match wins."""

    def __init__(self, seed: int | None = 0) -> None:
        self.faults: list[Fault] = []
        self.injected: dict[str, int] = {}
        self._random = random.Random(seed)

    def add(self, fault: Fault) -> Fault:
        """Arm ``fault``."""
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Disarm every fault."""
        self.faults.clear()

    def uniform(self, low: float, high: float) -> float:
        """A seeded random number in [low, high]."""
        return self._random.uniform(low, high)

    def pick(self, path: str) -> Fault | None:
        """The fault to apply to a request for ``path``, counting the hit."""
        for fault in self.faults:
            if fault.matches(path) and (
                fault.probability >= 1.0 or self._random.random() < fault.probability
            ):
                fault.hits += 1
                self.injected[fault.kind] = self.injected.get(fault.kind, 0) + 1
                return fault
        return None
