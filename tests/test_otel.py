"""async_jobs.contrib.otel: one span per wait, a child span per HTTP attempt (as many as the
fake server counted), metrics that add up to the same counts, nothing once uninstrumented,
and no token anywhere."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import async_jobs as aj
from async_jobs import events
from async_jobs.contrib.otel import Instrumentation, instrument
from async_jobs.testing import FakeApiServer

from .conftest import FAST_POLL, FAST_RETRY, TOKEN

pytestmark = pytest.mark.anyio

HOUR = 3600.0


class Otel:
    """An SDK tracer and meter provider recording in memory, and the instrumentation."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.instrumentation: Instrumentation = instrument(
            self.tracer_provider, self.meter_provider
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def waits(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name.startswith("wait ")]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        span_id = parent.get_span_context().span_id
        found = [s for s in self.spans() if s.parent is not None and s.parent.span_id == span_id]
        return sorted(found, key=lambda s: s.start_time or 0)

    def points(self, name: str) -> list[Any]:
        """Every data point of the metric ``name`` collected now."""
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def total(self, name: str) -> float:
        return sum(point.value for point in self.points(name))


@pytest.fixture
def otel() -> Iterator[Otel]:
    recorder = Otel()
    try:
        yield recorder
    finally:
        recorder.instrumentation.uninstrument()
        recorder.tracer_provider.shutdown()
        recorder.meter_provider.shutdown()


def _client(server: FakeApiServer) -> aj.ZooClient:
    return aj.ZooClient(
        token=TOKEN, base_url=server.url, retry=FAST_RETRY, poll=FAST_POLL, timeout=5
    )


def _seen_on(server: FakeApiServer, path: str) -> int:
    return len([r for r in server.requests if r.path == path])


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_retried_wait_is_one_span_with_a_child_per_attempt(
    server: FakeApiServer, otel: Otel
) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", HOUR), ("completed", None)])
    path = f"/async/operations/{op.id}"
    server.inject("status", status=503, times=2, route=path)
    done: list[events.RequestDone] = []
    remove = aj.add_listener(lambda e: done.append(e) if isinstance(e, events.RequestDone) else 0)
    try:
        async with _client(server) as zoo:
            await aj.wait_until_terminal(
                zoo.async_operation(op.id),
                timeout=10,
                on_update=lambda _: server.clock.advance(HOUR),
            )
    finally:
        remove()
    [wait] = otel.waits()
    assert wait.parent is None  # no span was current: a root
    assert wait.kind is SpanKind.INTERNAL
    assert wait.name == "wait zoo.async_operation"
    assert _attributes(wait) == {
        "async_jobs.job.key": f"zoo.async_operation:{op.id}",
        "async_jobs.job.kind": "zoo.async_operation",
        "async_jobs.wait.outcome": "succeeded",
        "async_jobs.wait.polls": 2,
    }
    assert wait.status.status_code is StatusCode.UNSET
    assert [e.name for e in wait.events] == ["async_jobs.state_changed"] * 2
    assert dict(wait.events[-1].attributes or {}) == {
        "async_jobs.job.state.old": "running",
        "async_jobs.job.state.new": "succeeded",
    }
    attempts = otel.children(wait)
    assert len(attempts) == _seen_on(server, path) == 4
    assert len(otel.spans()) == 5  # nothing else
    host, port = server.url.removeprefix("http://").split(":")
    for index, span in enumerate(attempts):
        attributes = _attributes(span)
        assert span.name == "GET"
        assert span.kind is SpanKind.CLIENT
        assert attributes["http.request.method"] == "GET"
        assert attributes["url.full"] == f"{server.url}{path}"
        assert attributes["server.address"] == host
        assert attributes["server.port"] == int(port)
        assert attributes["async_jobs.request_id"]  # Zoo's X-Api-Call-Id
        assert span.start_time is not None and span.end_time is not None
        assert wait.start_time is not None and wait.end_time is not None
        assert wait.start_time <= span.start_time <= span.end_time <= wait.end_time
        if index < 2:  # the two 503s, then the retry that got through
            assert attributes["http.response.status_code"] == 503
            assert attributes["error.type"] == "503"
            assert span.status.status_code is StatusCode.ERROR
        else:
            assert attributes["http.response.status_code"] == 200
            assert "error.type" not in attributes
            assert span.status.status_code is StatusCode.UNSET
    # Each attempt's span lasts exactly the duration its event measured.
    lasted = [(s.end_time or 0) - (s.start_time or 0) for s in attempts]
    assert lasted == [int(e.duration * 1e9) for e in done]
    resends = [_attributes(s).get("http.request.resend_count") for s in attempts]
    assert resends == [None, 1, 2, None]  # the second poll is a first attempt again
    # The histogram first: opentelemetry-sdk 1.20 reports a histogram only at the first
    # collection after its records.
    [duration_503, duration_200] = sorted(
        otel.points("http.client.request.duration"),
        key=lambda p: -p.attributes["http.response.status_code"],
    )
    assert duration_503.count == 2 and duration_200.count == 2
    assert dict(duration_200.attributes) == {
        "http.request.method": "GET",
        "server.address": host,
        "server.port": int(port),
        "http.response.status_code": 200,
    }
    assert otel.total("async_jobs.requests") == 4
    assert otel.total("async_jobs.retries") == 2
    assert otel.total("async_jobs.waits") == 1
    assert otel.total("async_jobs.waits.in_flight") == 0


async def test_a_failed_request_ends_the_wait_with_an_error(
    server: FakeApiServer, otel: Otel
) -> None:
    async with _client(server) as zoo:
        with pytest.raises(aj.NotFoundError):
            await aj.wait_until_terminal(zoo.async_operation(str(uuid.uuid4())), timeout=10)
    [wait] = otel.waits()
    assert _attributes(wait)["async_jobs.wait.outcome"] == "error"
    assert _attributes(wait)["async_jobs.wait.polls"] == 0
    assert wait.status.status_code is StatusCode.ERROR
    [attempt] = otel.children(wait)
    assert _attributes(attempt)["http.response.status_code"] == 404
    assert _attributes(attempt)["error.type"] == "404"
    assert attempt.status.status_code is StatusCode.ERROR
    [counted] = otel.points("async_jobs.requests")
    assert dict(counted.attributes) == {
        "http.request.method": "GET",
        "http.response.status_code": 404,
        "error.type": "404",
    }


async def test_a_timed_out_wait(server: FakeApiServer, otel: Otel) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    async with _client(server) as zoo:
        with pytest.raises(aj.WaitTimeout):
            await aj.wait_until_terminal(zoo.async_operation(op.id), timeout=0.05)
    [wait] = otel.waits()
    assert _attributes(wait)["async_jobs.wait.outcome"] == "timeout"
    assert wait.status.status_code is StatusCode.ERROR
    assert otel.total("async_jobs.waits.in_flight") == 0
    [ended] = otel.points("async_jobs.waits")
    assert dict(ended.attributes) == {
        "async_jobs.job.kind": "zoo.async_operation",
        "async_jobs.wait.outcome": "timeout",
    }


FAULTS: Sequence[dict[str, Any]] = (
    # More 503s than one poll's attempts (FAST_RETRY: 4): a missed poll, then a retried one.
    {"kind": "status", "status": 503, "times": 5},
    {"kind": "status", "status": 429, "retry_after": "0", "times": 2},
    {"kind": "drop", "times": 2},
    {"kind": "truncated", "times": 1},
    {"kind": "html", "times": 2},
)


async def test_a_fault_run_counts_every_attempt(server: FakeApiServer, otel: Otel) -> None:
    retries: list[events.RetryScheduled] = []
    remove = aj.add_listener(
        lambda e: retries.append(e) if isinstance(e, events.RetryScheduled) else None
    )
    paths: dict[str, str] = {}
    for fault in FAULTS:
        op = server.zoo.add_operation(timeline=[("in_progress", HOUR), ("completed", None)])
        paths[f"zoo.async_operation:{op.id}"] = path = f"/async/operations/{op.id}"
        server.inject(**fault, route=path)
    seen: set[str] = set()

    def advance(job: aj.AsyncOperation) -> None:
        seen.add(job.id)
        if len(seen) == len(FAULTS):  # every wait had its first look: move every job on
            server.clock.advance(HOUR)

    try:
        async with _client(server) as zoo, anyio.create_task_group() as tg:
            for key in paths:
                ref = zoo.async_operation(key.partition(":")[2])
                tg.start_soon(lambda ref=ref: aj.wait_until_terminal(ref, on_update=advance))
    finally:
        remove()
    assert sum(server.faults.injected.values()) == sum(f["times"] for f in FAULTS)
    waits = otel.waits()
    assert len(waits) == len(FAULTS)
    for wait in waits:
        attributes = _attributes(wait)
        assert attributes["async_jobs.wait.outcome"] == "succeeded"
        assert len(otel.children(wait)) == _seen_on(server, paths[attributes["async_jobs.job.key"]])
    attempts = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert len(attempts) == len(server.requests)
    assert otel.total("async_jobs.requests") == len(server.requests)
    assert otel.total("async_jobs.retries") == len(retries) > 0
    failed = {_attributes(s)["error.type"] for s in attempts if "error.type" in _attributes(s)}
    assert {"503", "429", "502", "TransportError"} <= failed
    assert all(s.status.status_code is StatusCode.ERROR for s in attempts if s.status.description)
    assert otel.total("async_jobs.waits") == len(FAULTS)
    assert otel.total("async_jobs.waits.in_flight") == 0


async def test_two_waits_on_one_job_are_two_spans(server: FakeApiServer, otel: Otel) -> None:
    """The later wait ends first: each span still ends with its own wait, every attempt under
    the wait that sent it."""
    op = server.zoo.add_operation(timeline=[("in_progress", HOUR), ("completed", None)])
    path = f"/async/operations/{op.id}"
    server.inject("status", status=503, times=1, route=path)
    first_seen, second_done = anyio.Event(), anyio.Event()

    async def hold_first(_: object) -> None:
        if not first_seen.is_set():
            first_seen.set()
            await second_done.wait()

    async with _client(server) as zoo, anyio.create_task_group() as tg:
        ref = zoo.async_operation(op.id)
        tg.start_soon(lambda: aj.wait_until_terminal(ref, timeout=10, on_update=hold_first))
        await first_seen.wait()
        await aj.wait_until_terminal(
            ref, timeout=10, on_update=lambda _: server.clock.advance(HOUR)
        )
        second_done.set()
    second, first = otel.waits()  # in the order they ended
    assert first.start_time is not None and second.start_time is not None
    assert first.start_time < second.start_time
    # Each: running, then completed; the first one's first look took a 503 and its retry.
    assert _attributes(first)["async_jobs.wait.polls"] == 2
    assert _attributes(second)["async_jobs.wait.polls"] == 2
    assert [_attributes(s)["http.response.status_code"] for s in otel.children(first)] == [
        503,
        200,
        200,
    ]
    assert len(otel.children(second)) == 2
    assert len(otel.children(first)) + len(otel.children(second)) == _seen_on(server, path)
    assert len(otel.spans()) == 2 + _seen_on(server, path)


async def test_a_wait_nests_under_the_users_span(server: FakeApiServer, otel: Otel) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    tracer = otel.tracer_provider.get_tracer("app")
    async with _client(server) as zoo:
        with tracer.start_as_current_span("POST /orders") as handler:
            await zoo.get_async_operation(op.id)  # a request outside any wait
            await aj.wait_until_terminal(zoo.async_operation(op.id), timeout=10)
    [wait] = otel.waits()
    [user] = [s for s in otel.spans() if s.name == "POST /orders"]
    assert user.get_span_context().span_id == handler.get_span_context().span_id
    assert [s.name for s in otel.children(user)] == ["GET", "wait zoo.async_operation"]
    assert wait.context is not None and wait.context.trace_id == user.context.trace_id
    assert [s.name for s in otel.children(wait)] == ["GET"]


async def test_a_watchers_waits_are_spans_too(server: FakeApiServer, otel: Otel) -> None:
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(3)]
    paths = {f"zoo.async_operation:{op.id}": f"/async/operations/{op.id}" for op in ops}
    server.inject("status", status=503, times=2, route=f"/async/operations/{ops[0].id}")
    tracer = otel.tracer_provider.get_tracer("app")
    async with _client(server) as zoo:
        with tracer.start_as_current_span("service") as service:
            async with aj.Watcher(zoo, poll=FAST_POLL, coalesce=False) as watcher:
                watcher.add_many(zoo.async_operation(op.id) for op in ops)
                await watcher.wait_all(timeout=10)
    waits = otel.waits()
    assert len(waits) == len(ops)
    for wait in waits:
        assert wait.parent is not None
        assert wait.parent.span_id == service.get_span_context().span_id
        attributes = _attributes(wait)
        assert attributes["async_jobs.wait.outcome"] == "succeeded"
        assert len(otel.children(wait)) == _seen_on(server, paths[attributes["async_jobs.job.key"]])
    assert otel.total("async_jobs.requests") == len(server.requests) == len(ops) + 2
    assert otel.total("async_jobs.waits.in_flight") == 0


@pytest.mark.no_listeners
async def test_uninstrument_stops_every_signal(server: FakeApiServer, otel: Otel) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    path = f"/async/operations/{op.id}"
    async with _client(server) as zoo:
        await aj.wait_until_terminal(zoo.async_operation(op.id), timeout=10)
        spans, requests = len(otel.spans()), otel.total("async_jobs.requests")
        assert (spans, requests) == (2, 1)
        otel.instrumentation.uninstrument()
        otel.instrumentation.uninstrument()  # twice: harmless
        assert not events.enabled()  # the listener is gone: the transport builds no event
        server.inject("status", status=503, times=1, route=path)
        await aj.wait_until_terminal(zoo.async_operation(op.id), timeout=10)
    assert len(otel.spans()) == spans
    assert otel.total("async_jobs.requests") == requests
    assert otel.total("async_jobs.retries") == 0
    assert otel.total("async_jobs.waits") == 1


async def test_uninstrument_ends_open_waits(server: FakeApiServer, otel: Otel) -> None:
    op = server.zoo.add_operation(timeline=[("in_progress", None)])
    async with _client(server) as zoo:
        seen = anyio.Event()
        with anyio.move_on_after(10):
            async with anyio.create_task_group() as tg:
                ref = zoo.async_operation(op.id)
                tg.start_soon(lambda: aj.wait_until_terminal(ref, on_update=lambda _: seen.set()))
                await seen.wait()
                assert otel.total("async_jobs.waits.in_flight") == 1
                otel.instrumentation.uninstrument()
                tg.cancel_scope.cancel()
    [wait] = otel.waits()
    assert "async_jobs.wait.outcome" not in _attributes(wait)  # ended by uninstrument
    assert otel.total("async_jobs.waits.in_flight") == 0


def test_instrumenting_twice_raises_until_uninstrumented() -> None:
    with instrument() as first, pytest.raises(RuntimeError, match="already instrumented"):
        instrument()
    with instrument() as second:
        assert second is not first


class _BrokenTracer(trace.NoOpTracer):
    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        raise RuntimeError("exporter exploded")


class _BrokenProvider(trace.NoOpTracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _BrokenTracer()


async def test_a_failing_tracer_never_breaks_a_wait(
    server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    op = server.zoo.add_operation(timeline=[("completed", None)])
    with instrument(tracer_provider=_BrokenProvider()) as broken:
        async with _client(server) as zoo:
            for _ in range(2):
                job = await aj.wait_until_terminal(zoo.async_operation(op.id), timeout=10)
                assert job.status == "completed"
    assert broken.failures == 4  # each wait: its start and its one request
    logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in logged] == ["async_jobs.otel"]  # once, and not by events.emit


async def test_no_token_in_any_span_or_metric(server: FakeApiServer, otel: Otel) -> None:
    ops = [server.zoo.add_operation(timeline=[("completed", None)]) for _ in range(2)]
    server.inject("status", status=401, times=1)
    server.inject("drop", times=1)
    async with _client(server) as zoo:
        with pytest.raises(aj.AuthenticationError):
            await aj.wait_until_terminal(zoo.async_operation(ops[0].id), timeout=10)
        await aj.wait_until_terminal(zoo.async_operation(ops[1].id), timeout=10)
        with pytest.raises(aj.BadRequestError):  # a URL holding the token shows it masked
            await zoo.get_async_operation(f"{TOKEN}-in-a-path")
    spans = otel.spans()
    assert len(spans) >= 5
    assert any(_attributes(s).get("url.full", "").endswith("/***-in-a-path") for s in spans)
    texts = [span.to_json() for span in spans]
    data = otel.reader.get_metrics_data()
    assert data is not None
    texts.append(data.to_json())
    assert not [text for text in texts if TOKEN in text]
