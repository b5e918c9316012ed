"""The event loop's clock and sleep, read straight from asyncio.

aiohttp ties the library to asyncio, so anyio's backend lookup on each call (what
``anyio.current_time()`` and ``anyio.sleep()`` do first) buys nothing; these are what anyio's
asyncio backend runs, without it, on the per-poll path. Deadlines and cancellation are
unchanged: anyio's cancel scopes on asyncio use the same loop clock and cancel this sleep."""

from __future__ import annotations

import asyncio

__all__ = ["now", "sleep"]

_running_loop = asyncio.get_running_loop


def now() -> float:
    """The running event loop's clock (``anyio.current_time()`` on asyncio)."""
    return _running_loop().time()


#: Sleep ``delay`` seconds (``anyio.sleep`` on asyncio; 0 yields to the loop once).
sleep = asyncio.sleep
