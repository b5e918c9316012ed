"""The public surface: flat, sorted, documented, typed."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from pathlib import Path

import async_jobs as aj


def test_all_is_sorted_and_unique() -> None:
    assert aj.__all__ == sorted(aj.__all__)
    assert len(set(aj.__all__)) == len(aj.__all__)


def test_every_public_name_exists_and_is_documented() -> None:
    for name in aj.__all__:
        obj = getattr(aj, name)
        if typing.get_origin(obj) is not None:
            continue  # a type alias such as ErrorDecoder (on 3.10 isclass() says True for it)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_public_methods_are_documented() -> None:
    for cls in (
        aj.ZooClient,
        aj.JobRef,
        aj.PollPolicy,
        aj.RetryPolicy,
        aj.AsyncOperation,
        aj.DatasetStats,
    ):
        for name, member in vars(cls).items():
            if name.startswith("_") or not (
                inspect.isfunction(member) or isinstance(member, property)
            ):
                continue
            assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"


def test_issue_import_line() -> None:
    code = (
        "import async_jobs as aj; "
        "print(aj.ZooClient, aj.wait_until_terminal, aj.watch, aj.JobState, aj.WaitTimeout)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ZooClient" in result.stdout


def test_py_typed_is_shipped() -> None:
    assert (Path(aj.__file__).parent / "py.typed").exists()


def test_only_http_module_imports_aiohttp() -> None:
    package = Path(aj.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "_http.py" or "testing" in path.parts:
            continue
        text = path.read_text()
        if "import aiohttp" in text or "from aiohttp" in text:
            offenders.append(path.relative_to(package).as_posix())
    assert offenders == []


def test_error_tree() -> None:
    for cls in (aj.ApiError, aj.TransportError, aj.DecodeError, aj.WaitTimeout, aj.JobFailed):
        assert issubclass(cls, aj.AsyncJobsError)
    for cls in (
        aj.BadRequestError,
        aj.AuthenticationError,
        aj.NotFoundError,
        aj.RateLimitedError,
        aj.ServerError,
    ):
        assert issubclass(cls, aj.ApiError)
    assert issubclass(aj.WaitTimeout, TimeoutError)
