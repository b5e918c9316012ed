"""The watches one worker holds: each one's entry, ref and failed attempts, and the table of
them that bounds how many a worker takes (``prefetch``)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import anyio

from ... import _clock
from ..._policy import Decision, Outcome, PollStep, RetryPolicy
from ..._poll import JobRef
from ._records import WatchEntry

#: A held entry: its partition and its entry id.
Ident = tuple[int, str]


class _Held:
    """One watch this worker holds."""

    __slots__ = ("context", "entry", "entry_id", "future", "partition", "ref", "settling", "step")

    def __init__(self, partition: int, entry_id: str, entry: WatchEntry) -> None:
        self.partition = partition
        self.entry_id = entry_id
        self.entry = entry
        self.context: dict[str, Any] = {}
        self.ref: JobRef[Any] | None = None
        self.future: Any = None
        self.step: PollStep | None = None  # the failures of its watch and handler so far
        self.settling = False

    @property
    def ident(self) -> Ident:
        """Its entry: the partition and the entry id (ids repeat across partitions)."""
        return (self.partition, self.entry_id)

    @property
    def finishing(self) -> bool:
        """Whether its job was found terminal (its handler runs, or will) or it is being
        settled."""
        return self.settling or (self.future is not None and self.future.done())

    @property
    def attempts(self) -> int:
        """Failed attempts (of the watch or the handler) so far."""
        return self.step.misses if self.step is not None else 0

    def failed(self, retry: RetryPolicy) -> Decision:
        """Count one more failed attempt: how long until the next one, or EXHAUSTED."""
        if self.step is None:
            self.step = PollStep(retry)
        return self.step.record(Outcome.MISSED, _clock.now(), rand=random.random())


class Holding:
    """The watches a worker holds, by :attr:`_Held.ident`, at most ``prefetch`` of them."""

    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch
        self._held: dict[Ident, _Held] = {}
        self._room = anyio.Event()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, ident: object) -> bool:
        return ident in self._held

    def __iter__(self) -> Iterator[_Held]:
        return iter(list(self._held.values()))

    def snapshot(self, partition: int) -> dict[str, _Held]:
        """The watches of ``partition`` held now, by entry id (a copy)."""
        return {i: held for (p, i), held in self._held.items() if p == partition}

    def holds(self, held: _Held) -> bool:
        """Whether ``held`` is still held (not released, not taken over meanwhile)."""
        return self._held.get(held.ident) is held

    def add(self, held: _Held) -> None:
        """Hold ``held``."""
        self._held[held.ident] = held

    def release(self, held: _Held) -> None:
        """Stop holding ``held`` (if it still is), making room for another."""
        if self.holds(held):
            del self._held[held.ident]
            self._room.set()

    def take_all(self) -> list[_Held]:
        """Stop holding anything; what was held."""
        held, self._held = list(self._held.values()), {}
        return held

    def room_left(self) -> int:
        """How many more watches may be held."""
        return self.prefetch - len(self._held)

    async def wait_for_room(self) -> None:
        """Return once another watch may be held."""
        while self.room_left() <= 0:
            event = self._room
            await event.wait()
            if self._room is event:
                self._room = anyio.Event()
