"""Chaos soak: thousands of mixed waits against a server that misbehaves at random.

Bounded to about 3 s of back-to-back waves by default; set ASYNC_JOBS_SOAK_MINUTES to run
waves of waits for that long instead, e.g.
``ASYNC_JOBS_SOAK_MINUTES=10 python -m pytest tests/test_chaos.py -s``.
Every wait must end in the server's own final state, or with the documented typed error where
the fault is permanent; none may hang; tasks, sockets and file descriptors return to their
starting count; RSS does not grow from the first to the last quarter of the run.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections import Counter
from typing import Any

import anyio
import pytest

import async_jobs as aj
from async_jobs.models.metafold import METAFOLD_STATES
from async_jobs.models.zoo import OPERATION_STATES, conversion_state
from async_jobs.testing import FakeApiServer

from .conftest import TOKEN, client_tasks, eventually

pytestmark = pytest.mark.anyio

SOAK_MINUTES = float(os.environ.get("ASYNC_JOBS_SOAK_MINUTES", "0.05") or 0)
WAITS = 2000
RETRY = aj.RetryPolicy(max_attempts=4, initial=0.01, multiplier=2.0, maximum=0.5)
POLL = aj.PollPolicy(initial=0.1, multiplier=1.5, maximum=0.5, jitter=0.2)
REQUEST_TIMEOUT = 1.0
#: Fixed UUIDs: the datasets of the wave, and operations that do not exist (404).
DATASETS = tuple(str(uuid.uuid5(uuid.NAMESPACE_URL, f"async-jobs-chaos:ds-{i}")) for i in range(7))
MISSING = tuple(str(uuid.uuid5(uuid.NAMESPACE_URL, f"async-jobs-chaos:op-{i}")) for i in range(5))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Counting(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "; retry " in message:
            self.counts["request retries"] += 1
        elif message.startswith("missed a poll"):
            self.counts["missed polls"] += 1


def _arm_faults(server: FakeApiServer) -> None:
    # Permanent faults first (first match wins), then the random ones on every route.
    server.inject("status", status=403, times=None, route="/projects/forbidden/*")
    server.inject("status", status=503, probability=0.10, times=None)
    server.inject("status", status=429, retry_after="0.05", probability=0.015, times=None)
    server.inject("status", status=429, retry_after_date=1.0, probability=0.015, times=None)
    server.inject("drop", probability=0.01, times=None)
    server.inject("truncated", probability=0.01, times=None)
    server.inject("html", status=502, probability=0.01, times=None)
    server.inject("latency", delay=REQUEST_TIMEOUT + 0.5, probability=0.002, times=None)
    server.inject("latency", delay=0.0, max_delay=0.2, probability=0.2, times=None)


def _wave(
    server: FakeApiServer, rng: random.Random, size: int
) -> list[tuple[str, tuple[str, ...]]]:
    """``size`` jobs of every kind finishing within ~3 s, plus a few that can never succeed."""
    jobs: list[tuple[str, tuple[str, ...]]] = []
    for index in range(size):
        a, b = rng.uniform(0.05, 1.5), rng.uniform(0.05, 1.5)
        kind = index % 3
        if kind == 0:
            final = rng.choice(["completed", "failed"])
            op = server.zoo.add_operation(
                timeline=[("queued", a), ("in_progress", b), (final, None)], error="bad"
            )
            jobs.append(("zoo.async_operation", (op.id,)))
        elif kind == 1:
            dataset = DATASETS[index % len(DATASETS)]
            final = rng.choice(["success", "error_execution", "canceled"])
            conv = server.conversions.add_conversion(
                dataset, [("queued", a), ("in_progress", b), (final, None)], error="bad"
            )
            jobs.append(("zoo.dataset_conversion", (dataset, conv.id)))
        else:
            project = f"proj-{index % 3}"
            final = rng.choice(["success", "failure", "canceled"])
            job = server.metafold.add_job(
                project, timeline=[("pending", a), ("started", b), (final, None)], error="bad"
            )
            jobs.append(("metafold.job", (project, job.id)))
    for index in range(5):
        jobs.append(("zoo.async_operation", (MISSING[index],)))
        job = server.metafold.add_job("forbidden", timeline=[("started", None)])
        jobs.append(("metafold.job", ("forbidden", job.id)))
    return jobs


def _truth(server: FakeApiServer, kind: str, ids: tuple[str, ...]) -> aj.JobState:
    if kind == "zoo.async_operation":
        return OPERATION_STATES[server.zoo.status(ids[0])]
    if kind == "zoo.dataset_conversion":
        return conversion_state(server.conversions.state(ids[1])[0])
    return METAFOLD_STATES[server.metafold.state(*ids)]


async def test_chaos_soak() -> None:
    counting = _Counting()
    logger = logging.getLogger("async_jobs")
    logger.addHandler(counting)
    # DEBUG records still reach the token guard (a handler on this logger), but not pytest's
    # capture on the root logger, which would keep tens of thousands of them in memory.
    logger.propagate = False
    outcomes: Counter[str] = Counter()
    rss_samples: list[tuple[float, int]] = []
    rng = random.Random(11)
    tasks_before = client_tasks()
    fds_before = _fds()
    try:
        async with FakeApiServer(token=TOKEN, seed=5) as server:
            server.keep_requests = False
            _arm_faults(server)
            fds_with_server = _fds()
            deadline = time.monotonic() + SOAK_MINUTES * 60
            options: dict[str, Any] = {"token": TOKEN, "base_url": server.url, "retry": RETRY}
            async with (
                aj.ZooClient(timeout=REQUEST_TIMEOUT, **options) as zoo,
                aj.MetafoldClient(timeout=REQUEST_TIMEOUT, **options) as mf,
            ):

                async def sample_rss() -> None:
                    while True:
                        rss_samples.append((time.monotonic(), _rss()))
                        await anyio.sleep(0.2)

                async def one(kind: str, ids: tuple[str, ...]) -> None:
                    ref = zoo.job_ref(kind, ids) or mf.job_ref(kind, ids)
                    assert ref is not None
                    try:
                        final = await aj.wait_until_terminal(ref, timeout=60, poll=POLL)
                    except aj.NotFoundError:
                        assert ids[0] in MISSING
                        outcomes["404 NotFoundError"] += 1
                    except aj.AuthenticationError:
                        assert ids[0] == "forbidden"
                        outcomes["403 AuthenticationError"] += 1
                    else:
                        assert final.job_state is _truth(server, kind, ids), (kind, ids, final)
                        outcomes[final.job_state.value] += 1

                async with anyio.create_task_group() as sampler:
                    sampler.start_soon(sample_rss)
                    while True:
                        with anyio.fail_after(120):  # a hang fails the test, never CI's clock
                            async with anyio.create_task_group() as tg:
                                for kind, ids in _wave(server, rng, WAITS):
                                    tg.start_soon(one, kind, ids)
                        if time.monotonic() >= deadline:
                            break
                    sampler.cancel_scope.cancel()
            injected = dict(server.faults.injected)
            requests = server.request_count
            # The server closes its side of each keep-alive connection a moment later.
            await eventually(lambda: _fds() <= fds_with_server, timeout=10)
    finally:
        logger.removeHandler(counting)
        logger.propagate = True
    await eventually(lambda: _fds() <= fds_before, timeout=10)
    assert client_tasks() == tasks_before
    total = sum(outcomes.values())
    assert total >= WAITS + 10 and total % (WAITS + 10) == 0
    assert (
        outcomes["404 NotFoundError"]
        == outcomes["403 AuthenticationError"]
        == total // (WAITS + 10) * 5
    )
    for kind in ("status", "drop", "truncated", "html", "latency"):
        assert injected.get(kind, 0) > 0, injected
    quarter = max(len(rss_samples) // 4, 1)
    first = sum(r for _, r in rss_samples[:quarter]) / quarter
    last = sum(r for _, r in rss_samples[-quarter:]) / quarter
    assert last <= first * 1.10 + 8 * 2**20, (first, last)
    print(
        f"\nchaos soak: {total} waits, {requests} requests; outcomes {dict(outcomes)}; "
        f"faults injected {injected}; {dict(counting.counts)}; "
        f"RSS first quarter {first / 2**20:.1f} MiB, last {last / 2**20:.1f} MiB"
    )
