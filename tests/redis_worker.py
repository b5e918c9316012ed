"""One durable worker process for the fleet tests (not a test module).

``python -m tests.redis_worker --redis-port P --api URL --consumer NAME [options]``; API tokens
come from ZOO_API_TOKEN / METAFOLD_ACCESS_TOKEN. The handler records, in the same Redis, how
often each job was handled (hash ``t:count``), its final state (``t:state``) and any context
that did not match its job (``t:bad_context``). A job whose context has ``"crash": true``
kills its worker (SIGKILL, after counting the call in ``t:crashes``), as a handler that
crashes its process would. Prints ``{"ready": consumer}`` once running;
on SIGTERM stops and prints its counters as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from typing import Any

import anyio
from redis.asyncio import Redis, RedisCluster

import async_jobs as aj
from async_jobs.contrib.redis import DurableWatches

POLL = aj.PollPolicy(initial=0.2, multiplier=1.5, maximum=0.5, jitter=0.2)
RETRY = aj.RetryPolicy(max_attempts=4, initial=0.01, maximum=0.05)
#: Handler retries outlast a Redis restart of a few seconds (the handler writes to Redis).
HANDLER_RETRY = aj.RetryPolicy(max_attempts=60, initial=0.05, multiplier=2.0, maximum=0.5)


async def main(args: argparse.Namespace) -> None:
    redis: Any
    if args.cluster:
        redis = RedisCluster(
            host="127.0.0.1", port=args.redis_port, socket_timeout=10, socket_connect_timeout=2
        )
    else:
        redis = Redis(
            host="127.0.0.1", port=args.redis_port, socket_timeout=10, socket_connect_timeout=2
        )
    dw = DurableWatches(redis, consumer=args.consumer, partitions=args.partitions)

    async def handler(job: Any, context: dict[str, Any]) -> None:
        if context.get("crash"):
            await redis.hincrby("t:crashes", job.id, 1)
            os.kill(os.getpid(), signal.SIGKILL)
        if args.delay:
            await anyio.sleep(args.delay)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hincrby("t:count", job.id, 1)
            pipe.hset("t:state", job.id, job.job_state.value)
            if context.get("id") != job.id:
                pipe.hincrby("t:bad_context", job.id, 1)
            await pipe.execute()

    async with (
        aj.ZooClient(base_url=args.api, retry=RETRY, timeout=5) as zoo,
        aj.MetafoldClient(base_url=args.api, retry=RETRY, timeout=5) as mf,
    ):
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with dw.run(
                zoo,
                mf,
                handler=handler,
                concurrency=args.concurrency,
                prefetch=args.prefetch,
                poll=POLL,
                claim_idle=args.claim_idle,
                keepalive=args.keepalive,
                max_deliveries=args.max_deliveries,
                retry=HANDLER_RETRY,
            ) as worker:
                print(json.dumps({"ready": worker.consumer}), flush=True)
                async for _ in signals:
                    break
    counters = {
        name: getattr(worker, name)
        for name in (
            "handled",
            "dead_lettered",
            "duplicates",
            "claimed",
            "lost",
            "in_flight",
            "partitions_taken",
            "partitions_given_up",
        )
    }
    print(json.dumps({"consumer": worker.consumer, **counters}), flush=True)
    await redis.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("async_jobs").setLevel(logging.INFO)
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--api", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--prefetch", type=int, default=1500)
    parser.add_argument("--claim-idle", type=float, default=2.0)
    parser.add_argument("--delay", type=float, default=0.002)
    parser.add_argument("--keepalive", type=float, default=None)
    parser.add_argument("--max-deliveries", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--cluster", action="store_true", help="--redis-port is a cluster node")
    anyio.run(main, parser.parse_args())
