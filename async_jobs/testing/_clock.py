"""The fake server's clock: real time scaled by ``speed``, plus whatever a test advanced."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

__all__ = ["FakeClock"]


class FakeClock:
    """Seconds since the server started, as the fake's job timelines see them.

    ``speed`` scales real time (2.0 runs timelines twice as fast); :meth:`advance` jumps ahead
    without sleeping, so a test can move a job along instantly.
    """

    def __init__(self, speed: float = 1.0, *, epoch: datetime | None = None) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.speed: float = speed
        self.epoch: datetime = epoch or datetime.now(timezone.utc)
        self._started = time.monotonic()
        self._offset = 0.0

    def now(self) -> float:
        """Fake seconds elapsed since the clock started."""
        return (time.monotonic() - self._started) * self.speed + self._offset

    def set_speed(self, speed: float) -> None:
        """Run at ``speed`` from now on (0 stops the clock), without a jump in :meth:`now`."""
        if speed < 0:
            raise ValueError("speed must be >= 0")
        now = self.now()
        self._started = time.monotonic()
        self._offset = now
        self.speed = speed

    def advance(self, seconds: float) -> None:
        """Jump ahead by ``seconds`` of fake time."""
        if seconds < 0:
            raise ValueError("the fake clock only moves forward")
        self._offset += seconds

    def wall(self, at: float | None = None) -> datetime:
        """The UTC wall-clock time of fake instant ``at`` (default: now)."""
        return self.epoch + timedelta(seconds=self.now() if at is None else at)
