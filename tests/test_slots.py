"""Slots, the one bound on work in flight: never more holders than slots, first come first
served, no slot lost to a cancelled waiter, and a free slot taken without a loop turn."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from async_jobs._ratelimit import Slots

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("total", [0, -1, True, 1.5])
def test_a_bound_is_a_positive_int(total: object) -> None:
    with pytest.raises(ValueError, match="total"):
        Slots(total)  # type: ignore[arg-type]


async def test_a_free_slot_is_taken_without_a_loop_turn() -> None:
    slots = Slots(2)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.ensure_future(other())
    async with slots:
        assert slots.in_use == 1
        assert ran == []  # the other task did not get to run: entering did not yield
    await task
    assert slots.in_use == 0


async def test_waiters_are_served_in_order_and_never_more_than_total() -> None:
    slots = Slots(2)
    order: list[int] = []
    peak = 0
    release = anyio.Event()

    async def work(index: int) -> None:
        nonlocal peak
        async with slots:
            order.append(index)
            peak = max(peak, slots.in_use)
            await release.wait()

    async with anyio.create_task_group() as tg:
        for index in range(6):
            tg.start_soon(work, index)
        await anyio.wait_all_tasks_blocked()
        assert order == [0, 1] and slots.waiting == 4
        release.set()
    assert order == list(range(6)) and peak == 2
    assert slots.in_use == 0 and slots.waiting == 0


async def test_a_waiter_cancelled_in_the_queue_takes_no_slot() -> None:
    slots = Slots(1)
    async with slots:
        with anyio.move_on_after(0.01):
            async with slots:
                pytest.fail("entered a full Slots")
        assert slots.waiting == 0
    assert slots.in_use == 0
    async with slots:  # the slot is still there
        assert slots.in_use == 1


async def test_a_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    slots = Slots(1)
    got: list[str] = []

    async def wait_for_slot(name: str) -> None:
        async with slots:
            got.append(name)

    await slots.__aenter__()
    first = asyncio.ensure_future(wait_for_slot("first"))
    second = asyncio.ensure_future(wait_for_slot("second"))
    await anyio.wait_all_tasks_blocked()
    await slots.__aexit__(None, None, None)  # the slot is handed to "first"...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.wait({first, second}, timeout=5)  # a lost slot would leave "second" waiting
    assert got == ["second"] and first.cancelled()
    assert slots.in_use == 0 and slots.waiting == 0


@settings(max_examples=30, deadline=None)
@given(
    total=st.integers(1, 4),
    plan=st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=12),
)
def test_any_mix_of_work_and_cancellations_keeps_the_bound_and_frees_every_slot(
    total: int, plan: list[tuple[int, bool]]
) -> None:
    async def main() -> None:
        slots = Slots(total)
        peak = 0

        async def work(turns: int) -> None:
            nonlocal peak
            async with slots:
                peak = max(peak, slots.in_use)
                for _ in range(turns):
                    await asyncio.sleep(0)

        tasks = [asyncio.ensure_future(work(turns)) for turns, _ in plan]
        await asyncio.sleep(0)
        for task, (_, cancel) in zip(tasks, plan, strict=True):
            if cancel:
                task.cancel()
        await asyncio.wait(tasks, timeout=5)  # a lost slot would leave the rest waiting
        assert all(task.done() for task in tasks)
        assert peak <= total
        assert slots.in_use == 0 and slots.waiting == 0

    asyncio.run(main())


async def test_a_cancelled_caller_takes_no_free_slot() -> None:
    slots = Slots(1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        async with slots:
            pytest.fail("a cancelled caller entered")
    assert slots.in_use == 0
