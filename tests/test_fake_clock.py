"""The fake server's clock: speed changes and jumps, without an event loop."""

from __future__ import annotations

import time

import pytest

from async_jobs.testing import FakeClock


def test_set_speed_changes_the_pace_without_a_jump() -> None:
    clock = FakeClock(speed=0)
    clock.advance(10.0)
    time.sleep(0.01)
    assert clock.now() == 10.0  # stopped: real time does not count
    before = time.monotonic()
    clock.set_speed(1.0)
    running = clock.now()
    after = time.monotonic()
    # It ran only since set_speed: the time spent stopped before does not count.
    assert 10.0 <= running <= 10.0 + (after - before)
    clock.set_speed(0)
    stopped = clock.now()
    time.sleep(0.01)
    assert clock.now() == stopped
    clock.set_speed(2.0)
    time.sleep(0.01)
    assert clock.now() > stopped
    with pytest.raises(ValueError):
        clock.set_speed(-1)
