"""The poll loop: :func:`watch` and :func:`wait_until_terminal` over a :class:`JobRef`.

The poller knows only how to fetch a job (the ref) and what the job says about itself
(``job_state``, ``is_terminal``); scheduling comes from :mod:`async_jobs._policy`.
"""

from __future__ import annotations

import base64
import inspect
import math
import random
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterator,
    Sequence,
)
from contextlib import aclosing, contextmanager, nullcontext
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import anyio
import msgspec

from . import _clock, events
from ._errors import (
    ApiError,
    AsyncJobsError,
    AuthenticationError,
    BadRequestError,
    ConditionNotMet,
    DecodeError,
    JobFailed,
    NotFoundError,
    PollStalled,
    RateLimitedError,
    TransportError,
    WaitTimeout,
)
from ._policy import (
    Decision,
    Outcome,
    PollSchedule,
    PollStep,
    Stop,
    check_schedule,
    policy_for,
)
from ._ratelimit import Slots
from ._redact import get_logger
from ._tasks import run_concurrently
from .models._state import JobState

__all__ = [
    "ActiveListing",
    "Job",
    "JobRef",
    "Poller",
    "check_timeout",
    "continued",
    "outcome_of",
    "wait_all",
    "wait_until",
    "wait_until_terminal",
    "watch",
]

logger = get_logger("async_jobs.poll")


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
T = TypeVar("T")
OnUpdate = Callable[[J], Any]

#: Errors that end a wait at once: asking again cannot help.
FATAL_ERRORS: tuple[type[Exception], ...] = (BadRequestError, AuthenticationError, NotFoundError)
#: Errors that only cost one poll: the loop backs off and asks again.
MISSED_POLL_ERRORS: tuple[type[Exception], ...] = (ApiError, TransportError, DecodeError)


TOKEN_VERSION = 1
#: The least time a wait's last look starts before its deadline (see Poller.until_deadline).
FINAL_LOOK_LEAD = 0.1
#: The most time a wait's last look starts before its deadline (twice a slow look's latency).
MAX_FINAL_LOOK_LEAD = 1.0
#: The longest a remote cancel after a timed-out or cancelled wait may take (shielded).
CANCEL_GRACE = 5.0


class ActiveListing(Generic[J_co]):
    """How to list, in one paged sweep, every active job of a group (a Zoo dataset, a
    Metafold project, ...); a :class:`~async_jobs.Watcher` polls such a group through it.
    Jobs are matched to refs by ``job.id == ref.ids[-1]``."""

    __slots__ = ("key", "list_active", "name")

    def __init__(
        self,
        key: Hashable,
        list_active: Callable[[], AsyncIterator[J_co]],
        *,
        name: str | None = None,
    ) -> None:
        self.key: Hashable = key
        self.list_active: Callable[[], AsyncIterator[J_co]] = list_active
        #: How logs and events name the group (``zoo.dataset_conversions:<dataset id>``).
        self.name: str = name if name is not None else str(key)

    def __repr__(self) -> str:
        return f"ActiveListing({self.key!r})"


class JobRef(Generic[J_co]):
    """A handle on one remote job: its kind, its ids, and how to fetch it.

    Clients make these (``zoo.async_operation(id)``, ``mf.job(id)``, ...); anything with an
    async ``fetch`` returning a job model can be waited on."""

    __slots__ = ("_cancel", "_fetch", "_key", "ids", "kind", "listeners", "listing", "poll")

    def __init__(
        self,
        kind: str,
        ids: tuple[str, ...],
        fetch: Callable[[], Awaitable[J_co]],
        *,
        poll: PollSchedule | None = None,
        listing: ActiveListing[Any] | None = None,
        listeners: Sequence[events.Listener] = (),
        cancel: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.kind: str = kind
        self.ids: tuple[str, ...] = ids
        #: The client's default schedule, used when a wait names none (or leaves a state out).
        self.poll: PollSchedule | None = poll
        #: How a Watcher lists this job with its active siblings.
        self.listing: ActiveListing[Any] | None = listing
        #: The client's event listeners: every wait on this job reports to them too.
        self.listeners: tuple[events.Listener, ...] = tuple(listeners)
        self._fetch = fetch
        self._cancel = cancel
        self._key = f"{kind}:{'/'.join(ids)}"  # once: a Watcher keys several tables by it

    def to_token(self) -> str:
        """A resume token: the job's kind and ids, never a credential. Rebuild the ref in
        another process with :meth:`from_token`."""
        payload = msgspec.json.encode([TOKEN_VERSION, self.kind, list(self.ids)])
        return base64.urlsafe_b64encode(payload).decode().rstrip("=")

    @staticmethod
    def from_token(token: str, *clients: Any) -> JobRef[Any]:
        """The ref a :meth:`to_token` token names, made by whichever of ``clients`` serves
        its kind (``ValueError`` if the token is malformed or no client serves it)."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            version, kind, ids = msgspec.json.decode(raw, type=tuple[int, str, tuple[str, ...]])
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            raise ValueError("not a JobRef token") from None
        if version != TOKEN_VERSION:
            raise ValueError(f"unsupported JobRef token version {version}")
        for client in clients:
            make = getattr(client, "job_ref", None)
            ref = make(kind, ids) if make is not None else None
            if ref is not None:
                return ref  # type: ignore[no-any-return]
        raise ValueError(f"none of the given clients serves {kind!r} jobs")

    @property
    def key(self) -> str:
        """A stable identity such as ``zoo.async_operation:<id>``."""
        return self._key

    async def fetch(self) -> J_co:
        """Fetch the job's current state once."""
        return await self._fetch()

    @property
    def can_cancel(self) -> bool:
        """True if the API can cancel this job (a Metafold workflow, say)."""
        return self._cancel is not None

    async def cancel(self) -> Any:
        """Ask the API to cancel the job; what it answers (the job, for Metafold workflows).
        ``NotImplementedError`` for a kind of job the API cannot cancel."""
        if self._cancel is None:
            raise NotImplementedError(f"{self.kind} jobs cannot be canceled through the API")
        return await self._cancel()

    def __repr__(self) -> str:
        return f"JobRef({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobRef) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


class _NoAnswer(TransportError):
    """A poll still unanswered at its stall deadline."""


class Poller(Generic[J]):
    """The bookkeeping of one followed job (or one Watcher group's listing) around the pure
    :class:`~async_jobs._policy.PollStep`: what was last seen, the log line and the events of
    each poll. :func:`watch` and both Watcher loops drive it; nothing else polls."""

    __slots__ = (
        "current",
        "deadline",
        "error",
        "final_look",
        "key",
        "last",
        "latency",
        "listeners",
        "met",
        "polls",
        "schedules",
        "started",
        "step",
        "wait_id",
    )

    def __init__(
        self,
        key: str,
        *schedules: PollSchedule | None,
        stall_timeout: float | None = None,
        listeners: Sequence[events.Listener] = (),
    ) -> None:
        now = _clock.now()
        self.key = key
        #: Where the policy of each state comes from, first match wins (see policy_for).
        self.schedules = schedules
        self.step = PollStep(policy_for(None, *schedules), stall_timeout=stall_timeout, ok_at=now)
        self.final_look = False  # the last sleep before the deadline was trimmed
        self.deadline: float | None = None  # the enclosing deadline, once read
        self.latency = 0.0  # how long the last successful look took
        self.met = False  # a wait_until condition held on the last job seen
        self.last: J | None = None
        self.error: BaseException | None = None  # of the last missed poll
        self.polls = 0
        self.started = now
        self.listeners = tuple(listeners)
        self.wait_id = events.new_wait_id()
        self.current = events.CurrentWait(key, self.wait_id, self.listeners)

    def seen(self, job: J) -> tuple[J, bool, Decision]:
        """Record a successful look at the job: the job as reported (its last known progress
        kept), whether it changed, and what comes next."""
        previous = self.last
        job = continued(previous, job)
        changed = previous is None or job != previous
        if changed:
            self.last = job
            self.step.policy = policy_for(job.job_state, *self.schedules)
        self.polls += 1
        decision = self.listed(changed)
        if events.enabled(self.listeners):
            state = job.job_state.value
            self._poll_done(state, changed)
            old = previous.job_state.value if previous is not None else None
            if old != state:
                moved = events.StateChanged(key=self.key, old=old, new=state, wait_id=self.wait_id)
                events.emit(moved, self.listeners)
        return job, changed, decision

    def unchanged(self, now: float) -> None:
        """Record a look (in a group's listing) at a job that is just as it was last seen:
        what :meth:`seen` records for it, without working out a next poll the listing's own
        pace decides."""
        self.polls += 1
        self.error = None
        self.step.succeeded(now)
        if events.enabled(self.listeners) and self.last is not None:
            self._poll_done(self.last.job_state.value, changed=False)

    def _poll_done(self, state: str, changed: bool) -> None:
        done = events.PollDone(key=self.key, state=state, changed=changed, wait_id=self.wait_id)
        events.emit(done, self.listeners)

    def listed(self, changed: bool) -> Decision:
        """Record a successful poll (a look at the job, or a group's listing)."""
        self.error = None
        outcome = Outcome.CHANGED if changed else Outcome.UNCHANGED
        return self.step.record(outcome, _clock.now(), rand=random.random())

    def missed(self, exc: BaseException) -> Decision:
        """Record a failed poll: a fatal error (400, 401/403, 404) ends the wait, anything
        else is a missed poll, backed off (the server's ``Retry-After`` wins)."""
        fatal = isinstance(exc, FATAL_ERRORS)
        hint = exc.retry_after if isinstance(exc, RateLimitedError) else None
        outcome = Outcome.FATAL if fatal else Outcome.MISSED
        decision = self.step.record(outcome, _clock.now(), hint=hint, rand=random.random())
        if fatal:
            return decision
        if not isinstance(exc, _NoAnswer) or self.error is None:
            self.error = exc  # the cause of a stall: the last real failure, if there was one
        logger.debug("missed a poll of %s: %s", self.key, exc)
        if events.enabled(self.listeners):
            missed = events.PollMissed(
                key=self.key,
                error=type(exc).__name__,
                consecutive=self.step.misses,
                delay=decision.delay,
                wait_id=self.wait_id,
            )
            events.emit(missed, self.listeners)
        return decision

    def stalled(self) -> PollStalled[J]:
        """The error ending a stalled wait, caused by the last failed attempt."""
        state = self.last.job_state.value if self.last is not None else "never seen"
        error = PollStalled(
            f"no poll of {self.key} succeeded for {self.step.stall_timeout}s (last: {state})",
            last=self.last,
        )
        error.__cause__ = self.error
        return error

    async def fetch(self, fetch: Callable[[], Awaitable[T]]) -> T:
        """``fetch()``, given up at the stall deadline (a miss, as a timeout would be); its
        requests report this wait (:data:`~async_jobs.events.CURRENT_WAIT`)."""
        token = events.CURRENT_WAIT.set(self.current)
        started = _clock.now()
        try:
            remaining = self.step.stall_deadline - started
            if math.isinf(remaining):
                result = await fetch()
            else:
                with anyio.move_on_after(max(remaining, 0.0)) as stall:
                    result = await fetch()
                if stall.cancelled_caught:
                    raise _NoAnswer(f"no answer for {self.key} before its stall timeout")
            self.latency = _clock.now() - started
            return result
        finally:
            events.CURRENT_WAIT.reset(token)

    def until_deadline(self, delay: float) -> float:
        """``delay``, trimmed once so that the last look before the enclosing deadline (a
        wait's timeout, a caller's ``anyio.fail_after``) happens just before it instead of a
        sleep running past it; the look starts early by about twice the last look's latency
        (0.1 s to 1 s), so that it ends before the deadline.

        The deadline is read at the first sleep and again only once the next look would come
        within :data:`MAX_FINAL_LOOK_LEAD` of it, where a trim can start (reading it walks
        every enclosing cancel scope, on every poll otherwise): a deadline an enclosing scope
        gets or brings forward later in the wait still ends it, only without the trimmed last
        look."""
        if self.final_look:
            return delay
        now = _clock.now()
        deadline = self.deadline
        if deadline is None or now + delay >= deadline - MAX_FINAL_LOOK_LEAD:
            deadline = self.deadline = anyio.current_effective_deadline()
            if math.isinf(deadline):
                return delay
        look_at = deadline - min(max(2.0 * self.latency, FINAL_LOOK_LEAD), MAX_FINAL_LOOK_LEAD)
        if now + delay < look_at:
            return delay
        self.final_look = True
        return max(look_at - now, 0.0)

    @classmethod
    def waiting_on(
        cls, ref: JobRef[J], poll: PollSchedule | None, stall_timeout: float | None
    ) -> Poller[J]:
        """The poller of one wait on ``ref`` (``poll``, else the ref's client's schedule)."""
        schedule = check_schedule(poll)
        return cls(
            ref.key, schedule, ref.poll, stall_timeout=stall_timeout, listeners=ref.listeners
        )

    @contextmanager
    def reporting(self) -> Iterator[None]:
        """The wait's span: WaitStarted on entry, WaitDone with the outcome of how it left
        (the terminal job's state, or the error that ended it)."""
        self.started_event()
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.done_event(outcome_of(error, self.last, met=self.met))

    def started_event(self) -> None:
        """Emit :class:`~async_jobs.events.WaitStarted`."""
        if events.enabled(self.listeners):
            events.emit(events.WaitStarted(key=self.key, wait_id=self.wait_id), self.listeners)

    def done_event(self, outcome: str) -> None:
        """Emit :class:`~async_jobs.events.WaitDone` with ``outcome``."""
        if events.enabled(self.listeners):
            duration = _clock.now() - self.started
            done = events.WaitDone(
                key=self.key,
                outcome=outcome,
                duration=duration,
                polls=self.polls,
                wait_id=self.wait_id,
            )
            events.emit(done, self.listeners)


def check_timeout(timeout: float | None) -> None:
    """ValueError unless ``timeout`` is None or a number of seconds >= 0 (NaN is not)."""
    if timeout is not None and not timeout >= 0:
        raise ValueError("timeout must be >= 0 or None")


def continued(previous: J | None, job: J) -> J:
    """``job`` as a wait reports it after ``previous``: a model that can carry history (a
    conversion in an unknown phase keeps its last known progress) gets it."""
    if previous is None:
        return job
    carry = getattr(job, "continued_from", None)
    return job if carry is None else carry(previous)


def outcome_of(error: BaseException | None, job: Job | None, *, met: bool = False) -> str:
    """The ``WaitDone`` outcome of a wait that ended with ``error`` (or the terminal ``job``,
    or, ``met``, the job that met a :func:`wait_until` condition)."""
    if error is None:
        if job is not None and job.is_terminal:
            return job.job_state.value
        return "met" if met else "interrupted"
    if isinstance(error, (JobFailed, ConditionNotMet)):
        return str(error.job.job_state.value)
    if isinstance(error, PollStalled):
        return "stalled"
    if isinstance(error, WaitTimeout):
        return "timeout"
    if isinstance(error, AsyncJobsError):
        return "error"
    # Cancelled, or a watch() its caller stopped reading (closed at its yield): interrupted.
    stopped = (anyio.get_cancelled_exc_class(), GeneratorExit)
    return "interrupted" if isinstance(error, stopped) else "error"


async def _follow(poller: Poller[J], ref: JobRef[J]) -> AsyncGenerator[J, None]:
    """Every observed change of ``ref``'s job, ending with the terminal one; raises the fatal
    error, or :class:`~async_jobs.PollStalled` once nothing succeeded for the stall timeout."""
    while True:
        try:
            job = await poller.fetch(ref._fetch)
        except MISSED_POLL_ERRORS as exc:
            decision = poller.missed(exc)
            if decision.stop is Stop.FATAL:
                raise
            if decision.stop is Stop.STALLED:
                raise poller.stalled() from poller.error
        else:
            job, changed, decision = poller.seen(job)
            if changed:
                yield job
                if job.is_terminal:
                    return
        await _clock.sleep(poller.until_deadline(decision.delay))


async def watch(
    ref: JobRef[J], *, poll: PollSchedule | None = None, stall_timeout: float | None = None
) -> AsyncGenerator[J, None]:
    """Yield the job each time it is seen to change (the first look included), ending with
    the terminal one.

    Transient trouble (connection errors, 429, 5xx, an unreadable body) costs a poll and is
    retried with backoff; 400, 401/403 and 404 raise their typed error. With
    ``stall_timeout``, :class:`~async_jobs.PollStalled` once no poll succeeded for that many
    seconds. ``poll`` is a :class:`~async_jobs.PollPolicy` or a ``{JobState: PollPolicy}``
    mapping (the schedule follows the job's state). Bound the wait with ``anyio.fail_after``
    (the last look lands just before its deadline) or use :func:`wait_until_terminal`.
    """
    poller = Poller.waiting_on(ref, poll, stall_timeout)
    with poller.reporting():
        async with aclosing(_follow(poller, ref)) as updates:
            async for job in updates:
                yield job


async def _notify(on_update: OnUpdate[J], job: J) -> None:
    result = on_update(job)
    if inspect.isawaitable(result):
        await result


async def _cancel_remotely(ref: JobRef[Any], poller: Poller[Any]) -> None:
    """Ask the API to cancel ``ref``'s job after its wait timed out or was cancelled:
    shielded from the caller's cancellation, given up after :data:`CANCEL_GRACE` seconds; a
    failure is logged, never raised over the timeout or cancellation that caused it."""
    if not ref.can_cancel:
        logger.debug("%s cannot be canceled through the API: left running", ref.key)
        return
    last = poller.last
    if last is not None and last.is_terminal:
        return
    with anyio.move_on_after(CANCEL_GRACE, shield=True) as grace:
        try:
            answer = await ref.cancel()
        except AsyncJobsError as exc:
            logger.warning("could not cancel %s after its wait ended: %s", ref.key, exc)
            return
        if isinstance(getattr(answer, "job_state", None), JobState):
            poller.last = answer
        logger.info("canceled %s: its wait ended before the job did", ref.key)
    if grace.cancelled_caught:
        logger.warning("could not cancel %s within %ss", ref.key, CANCEL_GRACE)


async def _wait(
    ref: JobRef[J],
    until: Callable[[J], bool],
    *,
    timeout: float | None,
    poll: PollSchedule | None,
    on_update: OnUpdate[J] | None,
    stall_timeout: float | None,
    cancel_on_timeout: bool = False,
    goal: str = "not terminal",
) -> J:
    """The one wait loop: the first observed job for which ``until(job)`` holds."""
    check_timeout(timeout)
    poller = Poller.waiting_on(ref, poll, stall_timeout)
    with poller.reporting():
        try:
            # No timeout, no scope of its own: the caller's deadlines still apply.
            with anyio.move_on_after(timeout) if timeout is not None else nullcontext():
                async with aclosing(_follow(poller, ref)) as updates:
                    async for job in updates:
                        if on_update is not None:
                            await _notify(on_update, job)
                        if until(job):
                            poller.met = True
                            return job
                        if job.is_terminal:
                            raise ConditionNotMet(job)
            # _follow only ends after a terminal job, so the deadline is what stopped us.
            last = poller.last
            state = last.job_state.value if last is not None else "never seen"
            raise WaitTimeout(f"{ref.key} {goal} after {timeout}s (last: {state})", last=last)
        except (WaitTimeout, anyio.get_cancelled_exc_class()) as exc:
            if cancel_on_timeout:
                await _cancel_remotely(ref, poller)
                if isinstance(exc, WaitTimeout):
                    exc.last = poller.last
            raise


async def wait_until(
    ref: JobRef[J],
    until: Callable[[J], bool],
    *,
    timeout: float | None = None,
    poll: PollSchedule | None = None,
    on_update: OnUpdate[J] | None = None,
    stall_timeout: float | None = None,
) -> J:
    """Poll ``ref`` until ``until(job)`` holds and return that job, terminal or not (a phase
    reached, a progress figure passed).

    A job that turns terminal without meeting ``until`` raises
    :class:`~async_jobs.ConditionNotMet` (``.job``): it will not change again. Past
    ``timeout`` seconds raises :class:`~async_jobs.WaitTimeout` carrying ``.last``; with
    ``stall_timeout``, :class:`~async_jobs.PollStalled` once no poll succeeded for that
    long. ``on_update`` (sync or async) gets every observed change; ``poll`` is a
    :class:`~async_jobs.PollPolicy` or a ``{JobState: PollPolicy}`` mapping. The last look
    before the deadline happens just before it. Cancelling the caller stops polling at once.
    """
    return await _wait(
        ref,
        until,
        timeout=timeout,
        poll=poll,
        on_update=on_update,
        stall_timeout=stall_timeout,
        goal="did not meet the condition",
    )


def _terminal(job: Job) -> bool:
    return job.is_terminal


async def wait_until_terminal(
    ref: JobRef[J],
    *,
    timeout: float | None = None,
    poll: PollSchedule | None = None,
    on_update: OnUpdate[J] | None = None,
    raise_on_failure: bool = False,
    stall_timeout: float | None = None,
    cancel_on_timeout: bool = False,
) -> J:
    """Poll ``ref`` until the job is terminal and return it (:func:`wait_until` with
    "terminal" as the condition).

    A failed or canceled job is a result, unless ``raise_on_failure`` (then
    :class:`~async_jobs.JobFailed`). Past ``timeout`` seconds raises
    :class:`~async_jobs.WaitTimeout` carrying ``.last``; with ``stall_timeout``, raises
    :class:`~async_jobs.PollStalled` once no poll succeeded for that many seconds.
    ``on_update`` (sync or async) gets every observed change; ``poll`` is a
    :class:`~async_jobs.PollPolicy` or a ``{JobState: PollPolicy}`` mapping. The last look
    before the deadline happens just before it. Cancelling the caller stops polling at once.

    With ``cancel_on_timeout``, a job the API can cancel (a Metafold workflow: see
    :attr:`JobRef.can_cancel`) is canceled on the server when the wait times out or the
    caller is cancelled, before the error propagates: shielded, for at most 5 seconds, a
    failure to cancel logged; ``WaitTimeout.last`` is then the canceled job. Other jobs are
    left running.
    """
    last = await _wait(
        ref,
        _terminal,
        timeout=timeout,
        poll=poll,
        on_update=on_update,
        stall_timeout=stall_timeout,
        cancel_on_timeout=cancel_on_timeout,
    )
    if raise_on_failure and last.job_state in (JobState.FAILED, JobState.CANCELED):
        raise JobFailed(last)
    return last


async def wait_all(
    refs: Sequence[JobRef[J]],
    *,
    timeout: float | None = None,
    poll: PollSchedule | None = None,
    on_update: OnUpdate[J] | None = None,
    fail_fast: bool = False,
    max_concurrency: int = 8,
) -> list[J]:
    """Wait for every ref concurrently and return the terminal jobs in the order of ``refs``.

    Every job is watched from the start, with at most ``max_concurrency`` requests in flight
    at once (so a slow job never holds up the others). A failed or canceled job is a result,
    unless ``fail_fast``: then the first one seen raises :class:`~async_jobs.JobFailed` and
    every other wait is cancelled. A fatal error of one wait (400, 401/403, 404) cancels the
    rest and is raised as is (never inside an exception group). Past ``timeout`` raises
    :class:`~async_jobs.WaitTimeout` whose ``.last`` lists the last job seen per ref (None if
    never seen). No task outlives the call.
    """
    check_timeout(timeout)
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
        raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
    latest: dict[int, J] = {}
    done: dict[int, J] = {}
    limiter = Slots(max_concurrency)

    def limited(ref: JobRef[J]) -> JobRef[J]:
        async def fetch() -> J:
            async with limiter:
                return await ref.fetch()

        return JobRef(ref.kind, ref.ids, fetch, poll=ref.poll, listeners=ref.listeners)

    async def wait_one(index: int, ref: JobRef[J]) -> None:
        # An error here (a fatal one, or JobFailed with fail_fast) ends every wait.
        async with aclosing(watch(limited(ref), poll=poll)) as updates:
            async for job in updates:
                latest[index] = job
                if on_update is not None:
                    await _notify(on_update, job)
        job = latest[index]
        done[index] = job
        if fail_fast and job.job_state in (JobState.FAILED, JobState.CANCELED):
            raise JobFailed(job)

    with anyio.move_on_after(timeout):
        await run_concurrently(partial(wait_one, index, ref) for index, ref in enumerate(refs))
    if len(done) < len(refs):
        missing = len(refs) - len(done)
        raise WaitTimeout(
            f"{missing} of {len(refs)} jobs not terminal after {timeout}s",
            last=[latest.get(index) for index in range(len(refs))],
        )
    return [done[index] for index in range(len(refs))]
