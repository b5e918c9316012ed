"""Shared benchmark plumbing: a fake server in a child process, process figures, and the
RESULTS.md section writer."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


@contextmanager
def fake_server(
    scenario: str, *options: str, module: str = "benchmarks._server_proc"
) -> Iterator[tuple[dict[str, Any], Any]]:
    """Start ``python -m module scenario options`` (a fake server announcing itself with one
    JSON line, then answering ``stats``) and yield (its announcement, a stats() function)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, scenario, *options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    assert proc.stdout is not None and proc.stdin is not None
    announcement = json.loads(proc.stdout.readline())

    def stats(command: str = "stats") -> dict[str, Any]:
        """Send ``command`` (default ``stats``) and return the child's one-line JSON answer."""
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        return dict(json.loads(proc.stdout.readline()))

    try:
        yield announcement, stats
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        Path(announcement["jobs"]).unlink(missing_ok=True)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_own_mib() -> float:
    """Peak resident set size of this process since it started its program, MiB: the kernel's
    ``VmHWM``. Unlike ``ru_maxrss``, which a child started by fork/exec may inherit from its
    parent's size at the fork, it counts this program's memory only."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def rss_bytes() -> int:
    """Current resident set size of this process, bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def run_child(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module args`` and return the JSON object it prints last."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=HERE.parent,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def machine() -> str:
    """One paragraph describing the machine and package versions (from :func:`machine_info`)."""
    info = machine_info()
    versions = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    return (
        f"{info['date']}; {info['cpu']}, {info['cores']} cores; Python {info['python']}; {versions}"
    )


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``name`` section of RESULTS.md (or of ``path``)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


# -- the suite's helpers (python -m benchmarks) ---------------------------------------------


class ServerProcess:
    """A ``benchmarks._server_proc`` child that stays up across the clients compared on it:
    ``info`` is its announcement; :meth:`command` sends one stdin line and returns the JSON
    line it answers (``stats``, ``populate N``)."""

    def __init__(self, scenario: str, *options: str) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._server_proc", scenario, *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE.parent,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout=10)
            raise RuntimeError(f"the {scenario} server did not start")
        self.info: dict[str, Any] = json.loads(line)
        self._files = [Path(self.info["jobs"])]

    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def token(self) -> str:
        return str(self.info["token"])

    def command(self, line: str) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        answer = dict(json.loads(self._proc.stdout.readline()))
        if "jobs" in answer:
            self._files.append(Path(answer["jobs"]))
        return answer

    def requests(self) -> int:
        """Requests the server has received so far."""
        return int(self.command("stats")["requests"])

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for path in self._files:
            path.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_child_json(module: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Run ``python -m module --child JSON`` (a fresh process) and return what it prints last."""
    return run_child(module, "--child", json.dumps(payload))


def stats(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    ordered = sorted(values)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return {"median": median, "min": ordered[0], "max": ordered[-1], "n": n}


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, thousands separated."""
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def cell(values: Sequence[float], digits: int = 3) -> str:
    """``median (min-max)`` of repeated measurements, or the one value of a single run."""
    s = stats(values)
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} ({fmt(s['min'], digits)}\u2013{fmt(s['max'], digits)})"


def machine_info() -> dict[str, Any]:
    """The machine and package versions, for the JSON file."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = {}
    for name in (
        "async-jobs",
        "aiohttp",
        "msgspec",
        "anyio",
        "kittycad",
        "httpx",
        "pydantic",
        "metafold",
        "requests",
        "pyinstrument",
        "opentelemetry-sdk",
    ):
        with suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    return {
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": packages,
    }
