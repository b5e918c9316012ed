"""Where the time goes: pyinstrument (an optional dependency, extra ``bench``) around one async
workload, summarised as self time per package and the top functions by self time."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

_SITE = re.compile(r"(?:site|dist)-packages/([A-Za-z0-9_]+)")
_STDLIB = re.compile(r"/lib/python3\.\d+/([A-Za-z0-9_]+)")


def available() -> bool:
    """True if pyinstrument can be imported."""
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        return False
    return True


def _package(path: str | None) -> str:
    path = path or ""
    if "/async_jobs/" in path:
        return "async_jobs"
    if "/benchmarks/" in path:
        return "benchmarks (the workload)"
    match = _SITE.search(path)
    if match:
        return match.group(1)
    match = _STDLIB.search(path)
    if match:
        return f"stdlib {match.group(1)}"
    if path == "<built-in>":
        return "C calls (socket I/O incl. the kernel's loopback work, decoders)"
    return "other"


_IDLE = ("epoll.poll", "select.select", "poll.poll", "kqueue.control", "sleep", "wait")


def _idle(frame: Any) -> bool:
    """Waiting, not computing: the event loop's selector, an ``[await]``, a blocking sleep."""
    if frame.identifier.startswith("[await]"):
        return True
    return bool(frame.file_path == "<built-in>" or not frame.file_path) and str(
        frame.function
    ).endswith(_IDLE)


def summarise(root: Any, top: int = 10) -> dict[str, Any]:
    """Where the busy time went: self time by package and the ``top`` functions by self
    time, as fractions of the time not spent waiting (in the event loop's selector, an
    ``[await]`` or a sleep), which is reported apart as ``idle_share``."""
    total = max(float(root.time), 1e-9)
    idle = 0.0
    packages: dict[str, float] = {}
    functions: dict[str, float] = {}

    def walk(frame: Any) -> None:
        nonlocal idle
        if _idle(frame):
            idle += float(frame.time)
            return
        if frame.is_synthetic:
            return
        own = float(frame.time)
        for child in frame.children:
            if child.is_synthetic and not _idle(child):
                continue  # [self] and the like: this frame's own time
            own -= float(child.time)
            walk(child)
        package = _package(frame.file_path)
        packages[package] = packages.get(package, 0.0) + max(own, 0.0)
        name = f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
        functions[name] = functions.get(name, 0.0) + max(own, 0.0)

    walk(root)
    busy = max(total - idle, 1e-9)
    by_package = sorted(packages.items(), key=lambda kv: -kv[1])
    by_function = sorted(functions.items(), key=lambda kv: -kv[1])[:top]
    return {
        "total_s": round(total, 3),
        "busy_s": round(busy, 3),
        "idle_share": round(idle / total, 4),
        "packages": [[name, round(t / busy, 4)] for name, t in by_package if t / busy >= 0.005],
        "functions": [[name, round(t / busy, 4)] for name, t in by_function],
    }


async def profile(workload: Callable[[], Awaitable[Any]], runs: int = 3) -> dict[str, Any]:
    """Run ``workload`` ``runs`` times under pyinstrument and summarise where the time went."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="enabled")
    profiler.start()
    try:
        for _ in range(runs):
            await workload()
    finally:
        profiler.stop()
    return summarise(profiler.last_session.root_frame())


def render(title: str, summary: dict[str, Any]) -> list[str]:
    """Markdown lines for one profile."""
    packages = ", ".join(f"{name} {share:.0%}" for name, share in summary["packages"][:8])
    lines = [
        f"**Profile: {title}** (pyinstrument, {summary['total_s']} s sampled, "
        f"{summary['idle_share']:.0%} of it waiting on the network or a sleep). Busy time by "
        f"package: {packages}. Top functions by self time (share of busy time; sampling "
        "inflates short Python frames):",
        "",
    ]
    lines += [f"- {share:.1%} `{name}`" for name, share in summary["functions"][:8]]
    return lines
