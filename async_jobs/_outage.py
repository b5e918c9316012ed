"""Whether something the library talks to (an API host, a Redis server) is failing: one
WARNING when an outage starts, one INFO at the first answer after it, nothing per attempt
(each failed attempt is the caller's own DEBUG line)."""

from __future__ import annotations

import logging
import math

__all__ = ["Outage"]


class Outage:
    """The failures in a row of one ``subject``, logged on ``logger``.

    An outage starts once ``after`` attempts in a row got no usable answer, and ends at the
    next answer. New failures within ``quiet`` seconds of an outage's end are its tail (another
    caller finding its pooled connection closed by the restart, say): they are not logged as
    an outage again. Pure apart from logging: ``now`` is an argument.
    """

    __slots__ = ("after", "ended", "failures", "logger", "quiet", "since", "subject", "warned")

    def __init__(
        self, subject: str, logger: logging.Logger, *, after: int = 1, quiet: float = 0.0
    ) -> None:
        self.subject = subject
        self.logger = logger
        self.after = after
        self.quiet = quiet
        self.failures = 0
        self.since = 0.0  # when the failures in a row began
        self.ended = -math.inf  # when the last outage ended
        self.warned = False  # this outage was logged

    def failed(self, error: object, now: float) -> None:
        """An attempt got no usable answer; ``error`` says what went wrong."""
        self.failures += 1
        if self.failures == 1:
            self.since = now
        if self.failures == self.after:
            self.warned = now - self.ended >= self.quiet
            if self.warned:
                self.logger.warning(
                    "%s is not answering (%d attempts in a row failed, last: %s); retrying",
                    self.subject,
                    self.failures,
                    error,
                )

    def answered(self, now: float) -> None:
        """An attempt got an answer."""
        if not self.failures:
            return
        if self.failures >= self.after:
            self.ended = now
            if self.warned:
                self.logger.info(
                    "%s is answering again after %.1f s (%d failed attempts)",
                    self.subject,
                    now - self.since,
                    self.failures,
                )
        self.failures = 0
        self.warned = False
