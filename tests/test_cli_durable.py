"""``async-jobs durable status`` against a real redis-server, in process."""

from __future__ import annotations

import io
import json
from typing import Any

import anyio
import pytest

from async_jobs.testing import FakeApiServer, RedisServer

from ._redis import WATCHES, clients, durable, until

pytestmark = pytest.mark.anyio


async def _cli(*argv: str) -> int:
    from async_jobs import cli

    code: int = await anyio.to_thread.run_sync(cli.main, list(argv))
    return code


async def _status_json(capsys: pytest.CaptureFixture[str], url: str) -> dict[str, Any]:
    """``durable status --json``: its one line (``dataclasses.asdict`` of the status)."""
    assert await _cli("durable", "status", "--redis-url", url, "--json") == 0
    (status,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert isinstance(status, dict)
    return status


def _busy(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The partitions that hold or have anything: the one of the test's watches (the CLI
    may list more: those of a stream made with more partitions, all empty)."""
    return [
        partition
        for partition in status["partitions"]
        if partition["pending"] or partition["owner"] or partition["in_flight"]
    ]


async def test_durable_status_reports_what_redis_holds(
    server: FakeApiServer,
    redis_server: RedisServer,
    redis_client: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ops = [server.zoo.add_operation(timeline=[("queued", None)]) for _ in range(5)]
    zoo, _ = clients(server)

    async def handler(job: Any, context: dict[str, Any]) -> None:
        """Never called: the jobs stay queued."""

    url = f"redis://127.0.0.1:{redis_server.port}/0"
    async with zoo:
        dw = durable(redis_client, consumer="worker-1")
        await dw.submit_many(zoo.async_operation(op.id) for op in ops)
        before = await _status_json(capsys, url)
        assert _busy(before) == [
            {
                "index": 0,
                "stream": WATCHES,
                "owner": None,
                "pending": 5,
                "undelivered": 5,
                "in_flight": {},
            }
        ]
        assert before == {
            "event": "durable_status",
            "pending": 5,
            "undelivered": 5,
            "in_flight": {},
            "consumers": 0,
            "dead_lettered": 0,
            "results": 0,
            "partitions": before["partitions"],
            "workers": {},
        }
        async with dw.run(zoo, handler=handler, claim_idle=5) as worker:

            async def holds_all() -> bool:
                return bool(worker.in_flight == 5)

            await until(holds_all, 10)
            during = await _status_json(capsys, url)
            assert _busy(during) == [
                {
                    "index": 0,
                    "stream": WATCHES,
                    "owner": "worker-1",
                    "pending": 5,
                    "undelivered": 0,
                    "in_flight": {"worker-1": 5},
                }
            ]
            assert (during["pending"], during["undelivered"]) == (5, 0)
            assert (during["in_flight"], during["consumers"]) == ({"worker-1": 5}, 1)
            assert list(during["workers"]) == ["worker-1"]  # name -> seconds since heartbeat
            # What a terminal shows: the handler with a plain-text output.
            from rich.console import Console

            from async_jobs import cli
            from async_jobs._cli_output import RichOutput

            console = Console(record=True, width=120, file=io.StringIO())
            args = cli.build_parser().parse_args(["durable", "status", "--redis-url", url])
            assert await cli.durable_status(args, RichOutput(console=console)) == 0
    lines = console.export_text().splitlines()
    assert lines[0] == "5 pending (0 not read by any worker), 0 dead-lettered, 0 results"
    assert lines[1] == "1 partitions (0 without an owner), 1 live workers, 1 consumers"
    assert lines[2].startswith("  worker-1: 1 partitions, 5 in flight, seen ")
    assert lines[3:] == ["  partition 0: 5 pending, 0 not read, owner worker-1"]


async def test_durable_status_without_a_redis_is_one_error_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from async_jobs.testing._redis_server import free_port

    url = f"redis://:secret-password@127.0.0.1:{free_port()}/0"  # nothing listens there
    assert await _cli("durable", "status", "--redis-url", url) == 4
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: cannot read the durable watches:")
    assert len(err.splitlines()) == 1 and "secret-password" not in err
