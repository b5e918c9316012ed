"""The suite's own guard (tests/conftest.py): a test that leaves an asyncio task pending, or
lets one be destroyed while pending, fails."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import _AsyncioErrors, pending_tasks_left

#: A conftest for pytester's runs: the guard exactly as the suite uses it.
GUARDED = "from tests.conftest import anyio_backend, no_asyncio_errors, pytest_pyfunc_call\n"

LEAKY_TESTS = """
import asyncio
import gc

import pytest

pytestmark = pytest.mark.anyio


async def test_clean() -> None:
    task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    await task


async def test_leaves_a_task_pending() -> None:
    asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="forgotten")


async def test_lets_a_pending_task_be_destroyed() -> None:
    never = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        await never

    task = asyncio.get_running_loop().create_task(waits())
    await asyncio.sleep(0)
    del task, never  # nothing holds the task any more: asyncio destroys it, still pending
    gc.collect()


async def test_finishing_task_is_not_a_leak() -> None:
    async def three_turns() -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.get_running_loop().create_task(three_turns())
"""


def test_a_test_leaving_a_task_pending_or_destroyed_fails(
    pytester: pytest.Pytester, no_asyncio_errors: _AsyncioErrors
) -> None:
    pytester.makeconftest(GUARDED)
    pytester.makepyfile(test_leaky=LEAKY_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    # The destroyed task's test passes its call and errors at teardown, where it is checked.
    result.assert_outcomes(passed=3, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_leaves_a_task_pending*",
            "*the test left 1 asyncio task(s) pending:",
            "*forgotten sleep at *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_lets_a_pending_task_be_destroyed*",
            "*asyncio reported lost work:",
            "*Task was destroyed but it is pending!",
        ]
    )
    # The inner run logged through the same "asyncio" logger this test is guarded by.
    no_asyncio_errors.messages.clear()


@pytest.mark.anyio
async def test_pending_tasks_left_names_only_new_unfinished_tasks() -> None:
    before = set(asyncio.all_tasks())
    forever = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
    quick = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    try:
        assert await pending_tasks_left(before) == [forever]
        assert quick.done()
        assert await pending_tasks_left(before | {forever}) == []
    finally:
        forever.cancel()
        await asyncio.gather(forever, return_exceptions=True)
