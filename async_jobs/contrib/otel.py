"""OpenTelemetry traces and metrics from async_jobs' events.

Install the extra: ``pip install 'async-jobs[otel]'`` (``opentelemetry-api`` only: bring your
own SDK and exporters, as for any instrumented library)::

    from async_jobs.contrib.otel import instrument

    instrumentation = instrument()        # the global tracer and meter providers
    ...
    instrumentation.uninstrument()

    with instrument(tracer_provider=tp, meter_provider=mp):   # or for a block
        await aj.wait_until_terminal(zoo.async_operation(op_id), timeout=600)

It is one process-wide events listener (:func:`async_jobs.add_listener`), so it sees every
client, wait and Watcher of the process. Calling :func:`instrument` again while an
:class:`Instrumentation` is active raises :class:`RuntimeError` (two would double every span
and count); uninstrument the first one to instrument anew, with other providers.

Traces (tracer ``async_jobs``):

- one span per wait (``wait_until_terminal``, ``watch``, each job of a Watcher), named
  ``wait <kind>`` (``wait zoo.async_operation``), kind INTERNAL. It starts when the wait
  starts, as a child of the OpenTelemetry context current in the task that starts it (a wait
  inside a request handler's span nests under it; a Watcher's under the task calling
  ``add``), and ends when the wait ends. Attributes: ``async_jobs.job.key`` (``<kind>:<ids>``),
  ``async_jobs.job.kind``, ``async_jobs.wait.outcome`` (``succeeded``, ``failed``,
  ``canceled``, ``met``, ``timeout``, ``stalled``, ``error`` or ``interrupted``) and
  ``async_jobs.wait.polls`` (successful looks). Status ERROR for ``timeout``, ``stalled`` and
  ``error``; a job that failed or was canceled is a result of the wait, not an error of it, and
  ``interrupted`` (the caller cancelled) is not an error either. Each state change is a span
  event ``async_jobs.state_changed`` (``async_jobs.job.state.old`` / ``.new``).
- one span per HTTP attempt, named after the method (``GET``), kind CLIENT, with the
  OpenTelemetry HTTP client semantic conventions: ``http.request.method``, ``url.full``
  (credentials and secret query values already removed), ``server.address``,
  ``server.port``, ``http.response.status_code`` when a response came, ``error.type`` (the
  error's type name such as ``TransportError``, or the status code for an answer >= 400) and
  ``http.request.resend_count`` (the attempt's number minus one, from the second attempt
  on); plus ``async_jobs.request_id`` (the API's request id, when it sends one). Status
  ERROR when the attempt failed. A poll's attempts are children of their wait's span (each
  retry its own span); any other request is a child of the context current where it is sent.
  Its start and end are the attempt's own (end minus the measured duration).

Metrics (meter ``async_jobs``):

- ``async_jobs.requests`` (counter): HTTP attempts, by ``http.request.method`` and
  ``http.response.status_code`` or ``error.type``;
- ``async_jobs.retries`` (counter): attempts that will be sent again, by
  ``http.request.method`` and ``error.type`` (the cause);
- ``http.client.request.duration`` (histogram, seconds): each attempt, with the semantic
  conventions' attributes (method, server address and port, status code, error type);
- ``async_jobs.waits.in_flight`` (up-down counter): waits running, by ``async_jobs.job.kind``;
- ``async_jobs.waits`` (counter) and ``async_jobs.wait.duration`` (histogram, seconds):
  ended waits, by ``async_jobs.job.kind`` and ``async_jobs.wait.outcome``.

Not measured: the detection lag (how long after a job really finished a poll saw it). The
library only knows when it saw the terminal state, not when the server reached it; a wait
span ends at that look, so its end is late by up to one poll interval (the job's own
timestamps, e.g. ``completed_at``, tell the rest).

No token or secret reaches a span or a metric: events hold none (URLs as the library logs
them, errors as type names), and no header is ever recorded. The listener is synchronous and
cheap; it never raises (a failure is logged once on ``async_jobs.otel`` and counted in
:attr:`Instrumentation.failures`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as missing:  # pragma: no cover - the message is the point
    raise ImportError(
        "async_jobs.contrib.otel needs opentelemetry-api: pip install 'async-jobs[otel]'"
    ) from missing

from .. import events
from .._redact import get_logger
from .._version import __version__

__all__ = ["Instrumentation", "instrument"]

logger: logging.Logger = get_logger("async_jobs.otel")

#: The wait outcomes that end a wait span with status ERROR.
ERROR_OUTCOMES = frozenset({"timeout", "stalled", "error"})

#: The HTTP methods the semantic conventions name; any other is ``_OTHER``.
_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: The semantic conventions' advised buckets for ``http.client.request.duration`` (seconds).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_WAIT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

_active: Instrumentation | None = None
_active_lock = threading.Lock()


@functools.lru_cache(maxsize=256)
def _server(origin: str) -> tuple[str, int | None]:
    """``server.address`` and ``server.port`` of ``scheme://host[:port]``."""
    parts = urlsplit(origin)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname or "", port if port is not None else _DEFAULT_PORTS.get(parts.scheme)


def _origin(url: str) -> str:
    """``scheme://authority`` of ``url`` (cheap: no full parse per request)."""
    start = url.find("://")
    if start < 0:
        return ""
    end = len(url)
    for mark in "/?#":
        found = url.find(mark, start + 3)
        if 0 <= found < end:
            end = found
    return url[:end]


def _kind(key: str) -> str:
    """A job key's kind: the part before the first ``:``."""
    return key.partition(":")[0]


class _Wait:
    """An open wait span and what its children and its end need."""

    __slots__ = ("context", "key", "kind", "span", "wait_id")

    def __init__(self, span: trace.Span, key: str, kind: str, wait_id: int) -> None:
        self.span = span
        self.key = key
        self.kind = kind
        self.wait_id = wait_id
        self.context = trace.set_span_in_context(span)  # the parent of its requests' spans


class Instrumentation:
    """The active OpenTelemetry instrumentation made by :func:`instrument`: an events
    listener. :meth:`uninstrument` (or leaving its ``with`` block) removes it."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracer: trace.Tracer = trace.get_tracer(
            "async_jobs", __version__, tracer_provider=tracer_provider
        )
        meter = metrics.get_meter("async_jobs", __version__, meter_provider=meter_provider)
        self._requests = meter.create_counter(
            "async_jobs.requests", unit="{request}", description="HTTP attempts sent"
        )
        self._retries = meter.create_counter(
            "async_jobs.retries", unit="{retry}", description="HTTP attempts to be sent again"
        )
        self._duration = _histogram(
            meter,
            "http.client.request.duration",
            "Duration of HTTP client requests.",
            _DURATION_BUCKETS,
        )
        self._in_flight = meter.create_up_down_counter(
            "async_jobs.waits.in_flight", unit="{wait}", description="Waits running"
        )
        self._waits = meter.create_counter(
            "async_jobs.waits", unit="{wait}", description="Waits ended, by outcome"
        )
        self._wait_duration = _histogram(
            meter, "async_jobs.wait.duration", "Duration of ended waits.", _WAIT_BUCKETS
        )
        #: Listener calls that failed (each is swallowed: a listener never raises).
        self.failures: int = 0
        self._open: dict[int, _Wait] = {}
        self._lock = threading.Lock()
        self._handlers: dict[type[events.Event], Callable[[Any], None]] = {
            events.RequestDone: self._request_done,
            events.RetryScheduled: self._retry_scheduled,
            events.WaitStarted: self._wait_started,
            events.StateChanged: self._state_changed,
            events.WaitDone: self._wait_done,
        }
        self._remove: Callable[[], None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def _install(self) -> None:
        self._remove = events.add_listener(self)

    def uninstrument(self) -> None:
        """Stop: remove the listener and end the wait spans still open (without an outcome),
        so that no span is lost and ``async_jobs.waits.in_flight`` goes back down. Calling it
        twice is harmless."""
        global _active
        with _active_lock:
            remove, self._remove = self._remove, None
            if _active is self:
                _active = None
        if remove is None:
            return
        remove()
        with self._lock:
            still_open = list(self._open.values())
            self._open.clear()
        for wait in still_open:
            self._in_flight.add(-1, {"async_jobs.job.kind": wait.kind})
            wait.span.end()

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstrument()

    # -- the listener -----------------------------------------------------------------------

    def __call__(self, event: events.Event) -> None:
        """Turn one event into spans and measurements; never raises."""
        handler = self._handlers.get(type(event))
        if handler is None:
            return
        try:
            handler(event)
        except Exception:
            self.failures += 1
            if self.failures == 1:
                logger.exception("OpenTelemetry listener failed on %s", type(event).__name__)

    def _wait_started(self, event: events.WaitStarted) -> None:
        kind = _kind(event.key)
        attributes = {"async_jobs.job.key": event.key, "async_jobs.job.kind": kind}
        # context=None: the context current in the task starting the wait is the parent.
        span = self.tracer.start_span(f"wait {kind}", attributes=attributes)
        wait = _Wait(span, event.key, kind, event.wait_id)
        with self._lock:
            self._open[event.wait_id] = wait
        self._in_flight.add(1, {"async_jobs.job.kind": kind})

    def _pop_wait(self, wait_id: int) -> _Wait | None:
        """The open wait ``wait_id``, no longer open."""
        with self._lock:
            return self._open.pop(wait_id, None)

    def _state_changed(self, event: events.StateChanged) -> None:
        wait = self._open.get(event.wait_id)
        if wait is not None:
            attributes = {"async_jobs.job.state.new": event.new}
            if event.old is not None:
                attributes["async_jobs.job.state.old"] = event.old
            wait.span.add_event("async_jobs.state_changed", attributes)

    def _wait_done(self, event: events.WaitDone) -> None:
        wait = self._pop_wait(event.wait_id)
        kind = wait.kind if wait is not None else _kind(event.key)
        outcome = event.outcome
        measured = {"async_jobs.job.kind": kind, "async_jobs.wait.outcome": outcome}
        self._waits.add(1, measured)
        self._wait_duration.record(event.duration, measured)
        if wait is None:  # started before instrument(): no span, nothing in flight
            return
        self._in_flight.add(-1, {"async_jobs.job.kind": kind})
        span = wait.span
        span.set_attribute("async_jobs.wait.outcome", outcome)
        span.set_attribute("async_jobs.wait.polls", event.polls)
        if outcome in ERROR_OUTCOMES:
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end()

    def _request_done(self, event: events.RequestDone) -> None:
        end = time.time_ns()
        method = event.method if event.method in _KNOWN_METHODS else "_OTHER"
        address, port = _server(_origin(event.url))
        status = event.status
        error = event.error
        if error is None and status is not None and status >= 400:
            error = str(status)
        measured: dict[str, str | int] = {
            "http.request.method": method,
            "server.address": address,
        }
        if port is not None:
            measured["server.port"] = port
        if status is not None:
            measured["http.response.status_code"] = status
        if error is not None:
            measured["error.type"] = error
        self._duration.record(event.duration, measured)
        counted: dict[str, str | int] = {"http.request.method": method}
        if status is not None:
            counted["http.response.status_code"] = status
        if error is not None:
            counted["error.type"] = error
        self._requests.add(1, counted)

        attributes: dict[str, str | int] = dict(measured)
        attributes["url.full"] = event.url
        if method == "_OTHER":
            attributes["http.request.method_original"] = event.method
        if event.request_id:
            attributes["async_jobs.request_id"] = event.request_id
        if event.attempt > 1:
            attributes["http.request.resend_count"] = event.attempt - 1
        wait = self._open.get(event.wait_id) if event.wait_id is not None else None
        span = self.tracer.start_span(
            "HTTP" if method == "_OTHER" else method,
            context=wait.context if wait is not None else None,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=end - int(event.duration * 1e9),
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)

    def _retry_scheduled(self, event: events.RetryScheduled) -> None:
        method = event.method if event.method in _KNOWN_METHODS else "_OTHER"
        self._retries.add(1, {"http.request.method": method, "error.type": event.cause})


def _histogram(
    meter: metrics.Meter, name: str, description: str, buckets: tuple[float, ...]
) -> metrics.Histogram:
    """A histogram in seconds with advised bucket boundaries (opentelemetry-api >= 1.23;
    older APIs take none)."""
    try:
        return meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # pragma: no cover - opentelemetry-api < 1.23
        return meter.create_histogram(name, unit="s", description=description)


def instrument(
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Instrumentation:
    """Send async_jobs' spans and metrics to OpenTelemetry (the global providers unless
    given) until :meth:`Instrumentation.uninstrument`; usable as a context manager. Raises
    :class:`RuntimeError` if an instrumentation is already active."""
    global _active
    instrumentation = Instrumentation(tracer_provider, meter_provider)
    with _active_lock:
        if _active is not None:
            raise RuntimeError(
                "async_jobs is already instrumented: call uninstrument() on the active "
                "Instrumentation (or leave its with block) before instrumenting again"
            )
        _active = instrumentation
        instrumentation._install()
    return instrumentation
