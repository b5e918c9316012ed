"""The outage bookkeeping shared by the transport (per host) and the durable worker (per
Redis): pure, ``now`` is an argument."""

from __future__ import annotations

import logging

import pytest

from async_jobs._outage import Outage

LOG = logging.getLogger("async_jobs.test_outage")


def _levels(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.levelname for r in caplog.records if r.name == LOG.name]


def test_an_outage_starts_after_that_many_failures_and_ends_at_an_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    outage = Outage("api.example", LOG, after=3)
    outage.failed("503", 0.0)
    outage.failed("503", 1.0)
    outage.answered(2.0)  # a blip: nothing logged
    assert _levels(caplog) == []
    for now in (3.0, 4.0, 5.0, 6.0):
        outage.failed("503", now)
    outage.answered(9.5)
    assert _levels(caplog) == ["WARNING", "INFO"]
    assert "api.example" in caplog.records[0].getMessage()
    assert "after 6.5 s (4 failed attempts)" in caplog.records[1].getMessage()


def test_failures_just_after_an_outage_are_its_tail(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    outage = Outage("redis at h:1", LOG, quiet=5.0)
    outage.failed("closed", 0.0)
    outage.answered(1.0)
    outage.failed("closed", 2.0)  # within 5 s of the end: the same outage
    outage.answered(2.5)
    outage.failed("refused", 20.0)  # long after: a new one
    outage.answered(21.0)
    assert _levels(caplog) == ["WARNING", "INFO", "WARNING", "INFO"]
