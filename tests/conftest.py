"""Shared fixtures: a FakeApiServer per test, a fast ZooClient, and a token-leak guard."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer, RedisServer, RedisServerNotFound

pytest_plugins = ["pytester", "tests._no_skips"]

#: A token unlikely to appear anywhere by accident, so finding it anywhere is a leak.
TOKEN = "tok-" + secrets.token_hex(16)
FAST_RETRY = aj.RetryPolicy(max_attempts=4, initial=0.001, maximum=0.01)
FAST_POLL = aj.PollPolicy(initial=0.005, multiplier=1.5, maximum=0.02, jitter=0.1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _LeakCatcher(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage() + (self.format(record) if record.exc_info else "")
        if TOKEN in text:
            self.leaks.append(text)


@pytest.fixture(autouse=True)
def no_token_in_logs() -> Iterator[None]:
    """Every test runs with async_jobs logging at DEBUG; no record may contain the token."""
    logger = logging.getLogger("async_jobs")
    catcher = _LeakCatcher()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(catcher)
    try:
        yield
    finally:
        logger.removeHandler(catcher)
        logger.setLevel(old_level)
    assert not catcher.leaks, f"token leaked into logs: {catcher.leaks[:3]}"


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer(token=TOKEN) as fake:
        yield fake


@pytest.fixture
async def zoo(server: FakeApiServer) -> AsyncIterator[aj.ZooClient]:
    async with aj.ZooClient(
        token=TOKEN, base_url=server.url, retry=FAST_RETRY, poll=FAST_POLL, timeout=5
    ) as client:
        yield client


#: Tasks that belong to the fake server's side of a connection (accepting, handling).
SERVER_TASKS = ("RequestHandler.", "BaseSelectorEventLoop._accept_connection")


def client_tasks() -> set[object]:
    """The running asyncio tasks, minus the fake server's own connection handlers."""
    import asyncio

    return {
        task
        for task in asyncio.all_tasks()
        if not task.get_coro().__qualname__.startswith(SERVER_TASKS)  # type: ignore[union-attr]
    }


async def eventually(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait until ``predicate()`` holds: for effects of another process, where no event exists."""
    import anyio

    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free loopback port (AOF on, fsync always), stopped after.
    Missing redis-server: the test fails in CI (CI=true) and is skipped elsewhere."""
    from ._redis import unavailable

    try:
        server = RedisServer()
    except RedisServerNotFound as exc:
        unavailable(str(exc))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A ``redis.asyncio.Redis`` on :func:`redis_server`."""
    from ._redis import redis_module

    client = redis_module().Redis(
        host=redis_server.host, port=redis_server.port, socket_timeout=10, socket_connect_timeout=2
    )
    try:
        yield client
    finally:
        await client.aclose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the Redis fleet tests collected (jobs, duplicates, time)."""
    import sys

    module = sys.modules.get(f"{__package__}._redis") if __package__ else None
    lines = getattr(module, "REPORT", [])
    if lines:
        terminalreporter.section("durable watches (Redis)")
        for line in lines:
            terminalreporter.write_line(line)
