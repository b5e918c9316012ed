"""Shared fixtures: a FakeApiServer per test, a fast ZooClient, and a token-leak guard."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer, RedisCluster, RedisServer, RedisServerNotFound

pytest_plugins = ["pytester", "tests._no_skips"]

#: The official SDKs (kittycad 1.x, metafold >= 0.12) require Python >= 3.11, so the modules
#: that drive them are not collected on 3.10 (nothing is skipped: they do not exist there). The
#: fake's Zoo bodies are still checked against the spec's schemas there
#: (test_fake_spec_schemas.py).
collect_ignore = (
    [
        "test_vendor_sdk_compat.py",
        "test_vendor_sdk_conversions.py",
        "test_vendor_sdk_metafold.py",
    ]
    if sys.version_info < (3, 11)
    else []
)


def pytest_configure(config: pytest.Config) -> None:
    if sys.version_info < (3, 11):
        # CPython 3.10's sslproto never marks a TLS transport closed when the peer closed it
        # first (python/cpython#90476, fixed by 3.11's rewrite; aiohttp#5426 for servers), so
        # the https tests' servers raise a false ResourceWarning there. 3.11+ still catches a
        # real unclosed transport.
        config.addinivalue_line(
            "filterwarnings",
            "ignore:unclosed transport <asyncio.sslproto._SSLProtocolTransport:ResourceWarning",
        )


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
def no_token_in_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test runs with async_jobs logging at DEBUG and a process-wide event listener; no
    record and no event may contain the token. (A test marked ``no_listeners`` runs with no
    listener at all, to cover the path where events are never built.)"""
    logger = logging.getLogger("async_jobs")
    catcher = _LeakCatcher()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(catcher)
    leaked_events: list[str] = []

    def guard(event: aj.events.Event) -> None:
        text = repr(event)
        if TOKEN in text:
            leaked_events.append(text)

    listening = request.node.get_closest_marker("no_listeners") is None
    remove = aj.add_listener(guard) if listening else None
    try:
        yield
    finally:
        if remove is not None:
            remove()
        logger.removeHandler(catcher)
        logger.setLevel(old_level)
    assert not catcher.leaks, f"token leaked into logs: {catcher.leaks[:3]}"
    assert not leaked_events, f"token leaked into events: {leaked_events[:3]}"


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
        # SIGKILL: its data is thrown away anyway, and a graceful stop waits up to 0.1 s for
        # the server's next cron tick.
        server.stop(kill=True)
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


#: The run's Redis Cluster and its forming, started in the background at collection.
_CLUSTER: list[tuple[RedisCluster, Future[None]]] = []


def _form_redis_cluster(session: pytest.Session) -> None:
    """Form the cluster in a thread while other tests run (``redis-cli --cluster create``
    sleeps about 2 s), if a collected test uses it. The binaries are found here, before any
    test changes PATH; a missing one is left for the fixture to report."""
    if not any("redis_cluster" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    try:
        cluster = RedisCluster(masters=3)
    except RedisServerNotFound:
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="redis-cluster")
    _CLUSTER.append((cluster, pool.submit(cluster.start)))
    pool.shutdown(wait=False)  # the thread ends once the cluster is formed


@pytest.fixture(scope="session")
def _redis_cluster_session() -> Iterator[RedisCluster]:
    """The run's one 3-master Redis Cluster (formed in the background, see above)."""
    from ._redis import unavailable

    if _CLUSTER:
        cluster, forming = _CLUSTER[0]
    else:
        try:
            cluster = RedisCluster(masters=3)
        except RedisServerNotFound as exc:
            unavailable(str(exc))
        forming = Future()
        forming.set_result(None)
        cluster.start()
    try:
        forming.result()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def redis_cluster(_redis_cluster_session: RedisCluster) -> RedisCluster:
    """A 3-master Redis Cluster of real redis-servers (AOF on, fsync always) with no keys, every
    node up and ``cluster_state:ok``. Shared by the run's tests (each starts on an empty one);
    missing redis-server or redis-cli: the test fails in CI (CI=true), is skipped elsewhere."""
    cluster = _redis_cluster_session
    cluster.start()  # brings back a node a test left stopped; waits until the cluster is ok
    cluster.flush()
    return cluster


@pytest.fixture
async def redis_cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[Any]:
    """A ``redis.asyncio.RedisCluster`` on :func:`redis_cluster`, closed after."""
    from ._redis import redis_module

    client = redis_module().RedisCluster(
        startup_nodes=redis_cluster.startup_nodes, socket_timeout=10, socket_connect_timeout=2
    )
    try:
        yield client
    finally:
        await client.aclose()


def _modules_with(session: pytest.Session, name: str) -> list[Callable[[], None]]:
    """``name`` of each test module of the run's items that defines it."""
    modules = {item.module for item in session.items if isinstance(item, pytest.Function)}
    found = (getattr(module, name, None) for module in modules)
    return [hook for hook in found if callable(hook)]


def pytest_collection_finish(session: pytest.Session) -> None:
    """A test module's ``start_in_background()`` (the type checkers of test_typing.py) runs
    once the run knows it has tests there, so that slow subprocesses run while other tests
    do; its ``stop_in_background()`` runs at the end of the session."""
    if session.config.option.collectonly:
        return
    # Under pytest-xdist every worker collects every test: one worker starts the background
    # work (the file's tests run on one worker, ``--dist loadfile``; if that is another one,
    # it starts the checkers when its first test there needs them).
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0":
        for start in _modules_with(session, "start_in_background"):
            start()
    _form_redis_cluster(session)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for stop in _modules_with(session, "stop_in_background"):
        stop()
    for cluster, forming in _CLUSTER:  # formed for tests that did not run (-x, say)
        forming.exception()
        cluster.close()


#: The key of a test report's user property carrying a line of :data:`tests._redis.REPORT`.
_REPORT_KEY = "durable watches (Redis)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Carry the figures a Redis fleet test collected on its report (which pytest-xdist sends
    from its worker to the process printing the summary)."""
    import sys

    outcome = yield
    module = sys.modules.get(f"{__package__}._redis") if __package__ else None
    lines = getattr(module, "REPORT", None)
    if call.when == "call" and lines:
        report = outcome.get_result()
        report.user_properties.extend((_REPORT_KEY, line) for line in lines)
        lines.clear()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the Redis fleet tests collected (jobs, duplicates, time)."""
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        for key, value in getattr(report, "user_properties", ())
        if key == _REPORT_KEY
    ]
    if lines:
        terminalreporter.section(_REPORT_KEY)
        for line in lines:
            terminalreporter.write_line(str(line))


# -- No task left behind -------------------------------------------------------------------
# An async test fails if, once its body has returned, an asyncio task it started is still
# pending (the fake server's connection handlers aside: they belong to the server fixture).
# Every test fails if asyncio logs an error meanwhile, such as "Task was destroyed but it is
# pending!" or an unclosed session. Tested in tests/test_leak_check.py.

#: Loop iterations a test's finishing tasks get to end after its body returned.
SETTLE_ITERATIONS = 100


async def pending_tasks_left(before: set[object]) -> list[object]:
    """Tasks (not the caller's) started since ``before`` and still pending once the loop had
    ``SETTLE_ITERATIONS`` turns to let finishing ones end; the fake server's excluded."""
    import asyncio

    me = asyncio.current_task()
    left: list[object] = []
    for _ in range(SETTLE_ITERATIONS):
        left = [task for task in client_tasks() - before if task is not me]
        if not left:
            break
        await asyncio.sleep(0)
    return left


def describe_task(task: object) -> str:
    """A task's name and the coroutine it runs (where it is suspended, if known)."""
    import asyncio

    assert isinstance(task, asyncio.Task)
    coro = task.get_coro()
    frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
    where = f" at {frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else ""
    return f"{task.get_name()} {getattr(coro, '__qualname__', coro)!s}{where}"


def _no_pending_tasks(test: Callable[..., Any]) -> Callable[..., Any]:
    import asyncio
    import functools

    @functools.wraps(test)
    async def checked(**kwargs: Any) -> None:
        before = set(asyncio.all_tasks())
        await test(**kwargs)
        left = await pending_tasks_left(before)
        if left:
            for task in left:
                task.cancel()  # type: ignore[attr-defined]
            names = "\n  ".join(describe_task(task) for task in left[:10])
            more = f"\n  ... and {len(left) - 10} more" if len(left) > 10 else ""
            pytest.fail(f"the test left {len(left)} asyncio task(s) pending:\n  {names}{more}")

    return checked


@pytest.hookimpl(hookwrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Iterator[None]:
    """Run every anyio test (each hypothesis example too) through :func:`_no_pending_tasks`."""
    import inspect

    func = pyfuncitem.obj
    hypothesis = getattr(func, "hypothesis", None)
    inner = getattr(hypothesis, "inner_test", None)
    if "anyio_backend" not in pyfuncitem.funcargs:
        yield
    elif hypothesis is not None and inspect.iscoroutinefunction(inner):
        hypothesis.inner_test = _no_pending_tasks(inner)
        try:
            yield
        finally:
            hypothesis.inner_test = inner
    elif inspect.iscoroutinefunction(func):
        pyfuncitem.obj = _no_pending_tasks(func)
        try:
            yield
        finally:
            pyfuncitem.obj = func
    else:
        yield


class _AsyncioErrors(logging.Handler):
    """Collects what asyncio logs at ERROR: destroyed pending tasks, exceptions nobody
    retrieved, unclosed sessions (anything the loop's default exception handler reports)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def no_asyncio_errors() -> Iterator[_AsyncioErrors]:
    """Fail the test if asyncio logged an error during it (a task destroyed while pending,
    ...); young garbage is collected first so such a task is found in the test that made it."""
    import gc

    logger = logging.getLogger("asyncio")
    catcher = _AsyncioErrors()
    logger.addHandler(catcher)
    try:
        yield catcher
        gc.collect(1)
    finally:
        logger.removeHandler(catcher)
    assert not catcher.messages, "asyncio reported lost work:\n" + "\n".join(catcher.messages)


@pytest.fixture(autouse=True, scope="session")
def no_asyncio_errors_at_exit() -> Iterator[None]:
    """After the last test, a full collection: a pending task destroyed only then (held in
    an old reference cycle) still fails the run."""
    import gc

    yield
    logger = logging.getLogger("asyncio")
    catcher = _AsyncioErrors()
    logger.addHandler(catcher)
    try:
        gc.collect()
    finally:
        logger.removeHandler(catcher)
    assert not catcher.messages, "asyncio reported lost work:\n" + "\n".join(catcher.messages)
