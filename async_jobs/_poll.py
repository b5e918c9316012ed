"""The poll loop: :func:`watch` and :func:`wait_until_terminal` over a :class:`JobRef`.

The poller knows only how to fetch a job (the ref) and what the job says about itself
(``job_state``, ``is_terminal``); scheduling comes from :mod:`async_jobs._policy`.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Generic, Protocol, TypeVar

import anyio

from ._errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    DecodeError,
    JobFailed,
    NotFoundError,
    RateLimitedError,
    TransportError,
    WaitTimeout,
)
from ._policy import PollPolicy, next_delay
from .models._state import JobState

__all__ = ["Job", "JobRef", "watch", "wait_until_terminal"]

logger = logging.getLogger("async_jobs")


class Job(Protocol):
    """What every job model offers the poller."""

    @property
    def id(self) -> str:
        """The job's id."""
        ...

    @property
    def job_state(self) -> JobState:
        """The API's status mapped to a JobState."""
        ...

    @property
    def is_terminal(self) -> bool:
        """True once the job will not change again."""
        ...

    @property
    def progress(self) -> float | None:
        """0.0-1.0, or None when the API reports none."""
        ...

    @property
    def error(self) -> str | None:
        """The job's error message, if any."""
        ...


J = TypeVar("J", bound=Job)
J_co = TypeVar("J_co", bound=Job, covariant=True)
OnUpdate = Callable[[J], Any]

#: Errors that end a wait at once: asking again cannot help.
FATAL_ERRORS: tuple[type[Exception], ...] = (BadRequestError, AuthenticationError, NotFoundError)
#: Errors that only cost one poll: the loop backs off and asks again.
MISSED_POLL_ERRORS: tuple[type[Exception], ...] = (ApiError, TransportError, DecodeError)


class JobRef(Generic[J_co]):
    """A handle on one remote job: its kind, its ids, and how to fetch it.

    Clients make these (``zoo.async_operation(id)``, ``mf.job(id)``, ...); anything with an
    async ``fetch`` returning a job model can be waited on."""

    __slots__ = ("_fetch", "ids", "kind", "poll")

    def __init__(
        self,
        kind: str,
        ids: tuple[str, ...],
        fetch: Callable[[], Awaitable[J_co]],
        *,
        poll: PollPolicy | None = None,
    ) -> None:
        self.kind = kind
        self.ids = ids
        self.poll = poll  # the client's default schedule, used when a wait names none
        self._fetch = fetch

    @property
    def key(self) -> str:
        """A stable identity such as ``zoo.async_operation:<id>``."""
        return f"{self.kind}:{'/'.join(self.ids)}"

    async def fetch(self) -> J_co:
        """Fetch the job's current state once."""
        return await self._fetch()

    def __repr__(self) -> str:
        return f"JobRef({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobRef) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


async def watch(ref: JobRef[J], *, poll: PollPolicy | None = None) -> AsyncGenerator[J, None]:
    """Yield the job each time it is seen to change (the first look included), ending with
    the terminal one.

    Transient trouble (connection errors, 429, 5xx, an unreadable body) costs a poll and is
    retried with backoff; 400, 401/403 and 404 raise their typed error. Bound the wait with
    ``anyio.fail_after`` or use :func:`wait_until_terminal`.
    """
    policy = poll or ref.poll or PollPolicy()
    last: J | None = None
    step = 0
    while True:
        hint: float | None = None
        try:
            job = await ref.fetch()
        except FATAL_ERRORS:
            raise
        except MISSED_POLL_ERRORS as exc:
            if isinstance(exc, RateLimitedError):
                hint = exc.retry_after
            logger.info("missed a poll of %s: %s", ref.key, exc)
        else:
            if last is None or job != last:
                if last is not None:
                    step = 0  # the job moved: look again soon
                last = job
                yield job
                if job.is_terminal:
                    return
        await anyio.sleep(next_delay(policy, step, hint=hint, rand=random.random()))
        step += 1


async def _notify(on_update: OnUpdate[J], job: J) -> None:
    result = on_update(job)
    if inspect.isawaitable(result):
        await result


async def wait_until_terminal(
    ref: JobRef[J],
    *,
    timeout: float | None = None,
    poll: PollPolicy | None = None,
    on_update: OnUpdate[J] | None = None,
    raise_on_failure: bool = False,
) -> J:
    """Poll ``ref`` until the job is terminal and return it.

    A failed or canceled job is a result, unless ``raise_on_failure`` (then
    :class:`~async_jobs.JobFailed`). Past ``timeout`` seconds raises
    :class:`~async_jobs.WaitTimeout` carrying ``.last``. ``on_update`` (sync or async) gets
    every observed change. Cancelling the caller stops polling at once.
    """
    if timeout is not None and (math.isnan(timeout) or timeout < 0):
        raise ValueError("timeout must be >= 0 or None")
    last: J | None = None
    with anyio.move_on_after(timeout):
        async with aclosing(watch(ref, poll=poll)) as updates:
            async for job in updates:
                last = job
                if on_update is not None:
                    await _notify(on_update, job)
    if last is not None and last.is_terminal:
        if raise_on_failure and last.job_state in (JobState.FAILED, JobState.CANCELED):
            raise JobFailed(last)
        return last
    # watch() only ends after a terminal job, so the deadline is what stopped us.
    state = last.job_state.value if last is not None else "never seen"
    raise WaitTimeout(f"{ref.key} not terminal after {timeout}s (last: {state})", last=last)
