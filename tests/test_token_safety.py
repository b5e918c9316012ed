"""The bearer token never appears in a message, a repr, or a log line."""

from __future__ import annotations

import logging

import pytest

import async_jobs as aj
from async_jobs.testing import FakeApiServer

from .conftest import FAST_RETRY, TOKEN

pytestmark = pytest.mark.anyio


def test_client_repr_hides_token() -> None:
    client = aj.ZooClient(token=TOKEN, base_url="http://127.0.0.1:1")
    for text in (repr(client), str(client), repr(client._http), repr(vars(client))):
        assert TOKEN not in text


async def test_errors_never_contain_token(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake = server.zoo.add_operation(timeline=[("in_progress", None)])
    route = "/async/operations/*"
    errors: list[BaseException] = []
    async with aj.ZooClient(token=TOKEN, base_url=server.url, retry=FAST_RETRY) as zoo:
        for kind, options in [
            ("status", {"status": 503, "times": None}),
            ("status", {"status": 400}),
            ("malformed", {}),
            ("html", {"status": 200}),
            ("drop", {"times": None}),
            ("truncated", {"times": None}),
        ]:
            server.faults.clear()
            server.inject(kind, route=route, **options)  # type: ignore[arg-type]
            with pytest.raises(aj.AsyncJobsError) as info:
                await zoo.get_async_operation(fake.id)
            errors.append(info.value)
        server.faults.clear()
        with pytest.raises(aj.WaitTimeout) as timeout:
            await aj.wait_until_terminal(zoo.async_operation(fake.id), timeout=0.05)
        errors.append(timeout.value)
    async with aj.ZooClient(token="not-" + TOKEN, base_url=server.url) as bad:
        with pytest.raises(aj.AuthenticationError) as auth:
            await bad.get_async_operation(fake.id)
        errors.append(auth.value)
    assert len(errors) == 8
    for error in errors:
        for text in (str(error), repr(error), repr(vars(error))):
            assert TOKEN not in text
    assert caplog.records  # DEBUG logging was on and produced records
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


async def test_server_echoing_the_token_is_masked(server: FakeApiServer) -> None:
    fake = server.zoo.add_operation(extra={"status": f"echo {TOKEN}"})
    async with aj.ZooClient(token=TOKEN, base_url=server.url) as zoo:
        op = await zoo.get_async_operation(fake.id)
        assert op.job_state is aj.JobState.UNKNOWN  # logged a warning with the raw status...
    server.inject("html", status=200, route="/async/operations/*")
    async with aj.ZooClient(token=TOKEN, base_url=server.url) as zoo:
        server.faults.clear()
        server.zoo.operations[fake.id].extra = {"id": 5, "echo": TOKEN}
        with pytest.raises(aj.DecodeError) as info:
            await zoo.get_async_operation(fake.id)
    assert TOKEN not in str(info.value)
