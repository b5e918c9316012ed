"""How a worker's loops wait out Redis trouble: on the library's one poll step
(:class:`~async_jobs._policy.PollStep`), logged once per outage."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from redis import exceptions as redis_errors

from ... import _clock
from ..._outage import Outage
from ..._policy import Outcome, PollPolicy, PollStep
from ..._redact import get_logger
from ._replies import _is_nogroup

if TYPE_CHECKING:
    from ._watches import DurableWatches

logger: logging.Logger = get_logger("async_jobs.redis")

#: Seconds after a Redis outage's end during which new trouble counts as part of it.
REDIS_QUIET = 5.0
#: How the worker loops back off while Redis is unreachable.
REDIS_BACKOFF = PollPolicy(initial=0.1, multiplier=2.0, maximum=5.0, jitter=0.2)
#: Redis errors a worker waits out (a restart, a failover, a dropped connection; on a Redis
#: Cluster, a cluster down or a slot without a node while a master restarts).
RECOVERABLE_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterError,
    redis_errors.TryAgainError,
    redis_errors.SlotNotCoveredError,
    OSError,
)
#: Redis errors that waiting cannot fix: a wrong password or missing permissions.
FATAL_ERRORS: tuple[type[Exception], ...] = (
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.NoPermissionError,
)


def is_transport_glitch(exc: BaseException) -> bool:
    """Whether ``exc`` is a lost connection that redis-py's asyncio client let out as an
    ``AttributeError`` or ``TypeError`` raised inside redis-py or asyncio's transports (a
    write on a connection the peer closed, or one dropped while connecting: redis-py#4287),
    rather than as a ``ConnectionError``."""
    if not isinstance(exc, (AttributeError, TypeError)) or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module.startswith(("redis.", "asyncio."))


class _Backoff:
    """Waits out Redis trouble in one loop, on the library's one poll step; the worker's
    :class:`~async_jobs._outage.Outage` logs the start and the end of an outage."""

    def __init__(self, watches: DurableWatches, what: str, health: Outage) -> None:
        self.watches = watches
        self.what = what
        self.health = health
        self.step = PollStep(REDIS_BACKOFF)

    async def trouble(self, exc: Exception) -> None:
        """Wait out ``exc`` if it is a passing Redis problem; re-raise anything else."""
        if isinstance(exc, FATAL_ERRORS):
            raise exc
        if _is_nogroup(exc):
            self.watches.forget_groups()  # the groups are gone (data lost): make them again
        elif not isinstance(exc, RECOVERABLE_ERRORS) and not is_transport_glitch(exc):
            raise exc
        now = _clock.now()
        decision = self.step.record(Outcome.MISSED, now, rand=random.random())
        self.health.failed(f"{type(exc).__name__}: {exc}, while {self.what}", now)
        logger.debug(
            "redis trouble while %s (%s: %s); retry %d in %.2f s",
            self.what,
            type(exc).__name__,
            exc,
            self.step.misses,
            decision.delay,
        )
        await _clock.sleep(decision.delay)

    def ok(self) -> None:
        """The loop's last Redis command was answered."""
        if self.step.misses or self.health.failures:
            now = _clock.now()
            if self.step.misses:
                self.step.record(Outcome.CHANGED, now)
            self.health.answered(now)
