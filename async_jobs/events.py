"""What happens inside async_jobs, as small frozen structs handed to listeners.

The one seam for logs, metrics and traces (as stamina hands its hooks a small struct): a
listener is a cheap synchronous callable taking an :class:`Event`. Register one for the whole
process with :func:`add_listener`, or for one client or Watcher with ``listeners=[...]``::

    remove = aj.add_listener(lambda event: print(event))
    ...
    remove()

A listener that raises is logged (``async_jobs.events``) and never breaks a request, a wait or
the other listeners. With no listener registered, emitting costs one truth test. No event
holds a token or a secret query value: URLs are the ones the library logs (credentials
stripped), and errors are exception type names.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import NamedTuple

import msgspec

from ._redact import get_logger

__all__ = [
    "CURRENT_WAIT",
    "CallbackFailed",
    "CurrentWait",
    "Event",
    "Listener",
    "ListingFallback",
    "PollDone",
    "PollMissed",
    "RequestDone",
    "RetryScheduled",
    "StateChanged",
    "WaitDone",
    "WaitStarted",
    "add_listener",
    "emit",
    "enabled",
    "new_wait_id",
]

logger: logging.Logger = get_logger("async_jobs.events")


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base class of every event."""


class RequestDone(Event, frozen=True, kw_only=True):
    """One HTTP attempt ended: ``status`` None when no response came; ``error`` the exception
    type name, or None; ``duration`` in seconds; ``attempt`` counts from 1. ``key`` and
    ``wait_id`` name the wait (or Watcher group listing) it was sent for, if any."""

    method: str
    url: str
    status: int | None
    attempt: int
    duration: float
    request_id: str | None = None
    error: str | None = None
    key: str | None = None
    wait_id: int | None = None


class RetryScheduled(Event, frozen=True, kw_only=True):
    """A request failed transiently and will be sent again after ``delay`` seconds; ``cause``
    is the error's type name; ``attempt`` is the attempt that failed (from 1)."""

    method: str
    url: str
    attempt: int
    delay: float
    cause: str
    key: str | None = None
    wait_id: int | None = None


class WaitStarted(Event, frozen=True, kw_only=True):
    """A wait on the job ``key`` began (a ``wait_until_terminal``, a ``watch``, or a Watcher
    watch); ``wait_id`` tells this wait from another of the same job in every event of it."""

    key: str
    wait_id: int = 0


class PollDone(Event, frozen=True, kw_only=True):
    """A poll saw the job ``key`` in ``state`` (a JobState value); ``changed`` if it differs
    from the last look."""

    key: str
    state: str
    changed: bool
    wait_id: int = 0


class PollMissed(Event, frozen=True, kw_only=True):
    """A poll of ``key`` (a job, or a Watcher group's listing) failed transiently: ``error``
    the exception type name, ``consecutive`` the misses in a row, ``delay`` until the next
    try."""

    key: str
    error: str
    consecutive: int
    delay: float
    wait_id: int = 0


class StateChanged(Event, frozen=True, kw_only=True):
    """The job ``key`` moved from ``old`` (None on the first look) to ``new`` (JobState
    values)."""

    key: str
    old: str | None
    new: str
    wait_id: int = 0


class WaitDone(Event, frozen=True, kw_only=True):
    """A wait ended: ``outcome`` is ``succeeded``, ``failed`` or ``canceled`` (the job's
    terminal state, also when it ended without meeting a :func:`~async_jobs.wait_until`
    condition), ``met`` (a job not yet terminal met the condition), ``timeout``, ``stalled``,
    ``error`` (a typed error ended it) or ``interrupted`` (the caller cancelled); ``polls``
    counts the successful looks."""

    key: str
    outcome: str
    duration: float
    polls: int
    wait_id: int = 0


class ListingFallback(Event, frozen=True, kw_only=True):
    """A Watcher group's listing answered ``status``: its jobs are polled one by one."""

    group: str
    status: int | None


class CallbackFailed(Event, frozen=True, kw_only=True):
    """An ``on_update`` callback raised ``error`` (the exception type name) for ``key``; the
    job stays watched."""

    key: str
    error: str


#: A listener: a cheap synchronous callable taking an event.
Listener = Callable[[Event], object]


class CurrentWait(NamedTuple):
    """The wait (or Watcher group listing) a request is sent for."""

    key: str
    wait_id: int
    listeners: tuple[Listener, ...]


#: Set by the poll engine around each poll: requests sent within it report its key and id,
#: and reach its listeners too.
CURRENT_WAIT: ContextVar[CurrentWait | None] = ContextVar("async_jobs_current_wait", default=None)

_wait_ids = itertools.count(1)


def new_wait_id() -> int:
    """A process-unique id for a new wait."""
    return next(_wait_ids)


_global: tuple[Listener, ...] = ()
_lock = threading.Lock()


def add_listener(listener: Listener) -> Callable[[], None]:
    """Call ``listener`` with every event of this process; returns a function removing it
    (calling it twice is harmless)."""
    global _global
    with _lock:
        _global = (*_global, listener)

    def remove() -> None:
        global _global
        with _lock:
            remaining = list(_global)
            if listener in remaining:
                remaining.remove(listener)
            _global = tuple(remaining)

    return remove


def enabled(local: Sequence[Listener] = ()) -> bool:
    """True when an event would reach a listener (build the event only then)."""
    return bool(_global or local)


def emit(event: Event, local: Sequence[Listener] = ()) -> None:
    """Hand ``event`` to the process-wide listeners, then to ``local`` ones; a listener that
    raises is logged and skipped."""
    for listener in (*_global, *local):
        try:
            listener(event)
        except Exception:
            logger.exception("event listener %r failed on %s", listener, type(event).__name__)
