"""FakeApiServer: a real aiohttp.web server on 127.0.0.1 that speaks the supported APIs."""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from types import TracebackType
from typing import Any

from aiohttp import web

from ._clock import FakeClock
from ._conversions import FakeConversions
from ._faults import Fault, FaultKind, FaultPlan
from ._metafold import TOKEN_PATH, FakeMetafold, is_metafold_path
from ._zoo import FakeZoo, ZooOptions, zoo_error

__all__ = ["FakeApiServer", "RecordedRequest"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEFAULT_TOKEN = "test-token"


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server received it (query values decoded, as a server sees them)."""

    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    user_agent: str | None
    at: float = 0.0  #: time.monotonic() on arrival


class FakeApiServer:
    """A real HTTP server on loopback serving the Zoo API (and more), for tests and demos.

    ``async with FakeApiServer() as server:`` then point a client at ``server.url`` with
    ``token=server.token``. Jobs are scripted through ``server.zoo``; misbehaviour through
    :meth:`inject`; load shedding through :meth:`overload`; time through ``server.clock``.
    Every request is kept in ``server.requests``. The fake is at least as strict as the real
    APIs (UUID path ids on Zoo, ...); ``server.zoo.options`` (:class:`ZooOptions`) relaxes
    or varies the Zoo side, ``server.metafold``'s attributes the Metafold side.
    """

    def __init__(
        self,
        *,
        token: str | None = DEFAULT_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: FakeClock | None = None,
        seed: int | None = 0,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        self.token = token
        #: A server-side TLS context: serve https instead of plain http.
        self.ssl = ssl
        self.host = host
        self.port: int = port
        self.clock: FakeClock = clock or FakeClock()
        self.faults: FaultPlan = FaultPlan(seed)
        self.requests: list[RecordedRequest] = []
        #: Requests received, kept or not; set ``keep_requests = False`` for long benchmarks.
        self.request_count: int = 0
        self.keep_requests = True
        #: Requests being handled right now, and the most seen at once.
        self.in_flight: int = 0
        self.max_in_flight: int = 0
        zoo_options = ZooOptions()
        self.zoo: FakeZoo = FakeZoo(self.clock, zoo_options)
        self.metafold: FakeMetafold = FakeMetafold(self.clock)
        self.conversions: FakeConversions = FakeConversions(self.clock, zoo_options)
        #: Load shedding (see :meth:`overload`): a plan of its own, picked before ``faults``.
        self.shedding: FaultPlan = FaultPlan(seed)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:54321`` (``https`` with ``ssl=``)."""
        if self._runner is None:
            raise RuntimeError("the server is not running")
        scheme = "https" if self.ssl is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def inject(self, kind: FaultKind, **options: Any) -> Fault:
        """Arm a fault (see :class:`Fault` for kinds and options) and return it."""
        return self.faults.add(Fault(kind, **options))

    def overload(
        self,
        *,
        share: float = 1.0,
        times: int | None = None,
        retry_after: str = "1",
        route: str = "*",
    ) -> Fault:
        """Shed load from now on, apart from the fault plan (its own seeded random numbers;
        no fault of ``faults`` is hit or counted): answer ``503`` with ``Retry-After:
        retry_after`` to a ``share`` of the requests matching ``route``, at most ``times`` of
        them (None: until ``server.shedding.clear()``). Returns the status :class:`Fault`,
        whose ``hits`` counts the refused requests."""
        if not 0.0 <= share <= 1.0:
            raise ValueError("share must be within [0, 1]")
        if times is not None and times < 0:
            raise ValueError("times must be >= 0")
        self.shedding.clear()
        fault = Fault(
            "status",
            route=route,
            times=times,
            probability=share,
            status=503,
            retry_after=retry_after,
        )
        return self.shedding.add(fault)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._count_in_flight, self._middleware])
        self.zoo.add_routes(app)
        self.metafold.add_routes(app)
        self.conversions.add_routes(app)
        return app

    async def start(self) -> None:
        """Bind (to ``port``, or a free one the first time) and start serving."""
        if self._runner is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        runner = web.AppRunner(
            self._app(), access_log=None, handle_signals=False, shutdown_timeout=0.1
        )
        try:
            await runner.setup()
            await web.SockSite(runner, sock, ssl_context=self.ssl).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving (the port is kept, so :meth:`start` binds it again)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeApiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- request pipeline -------------------------------------------------------------------

    @web.middleware
    async def _count_in_flight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.request_count += 1
        if self.keep_requests:
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    dict(request.query),
                    request.headers.get("Authorization"),
                    request.headers.get("User-Agent"),
                    time.monotonic(),
                )
            )
        fault = self.shedding.pick(request.path) or self.faults.pick(request.path)
        if fault is not None:
            return await self._apply(fault, request, handler)
        return await self._serve(request, handler)

    async def _serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token is not None and not self._authorized(request):
            return self.error(request, 401, "invalid or missing API token", "unauthorized")
        response = await handler(request)
        if not is_metafold_path(request.path):  # Zoo names every response; Metafold does not
            response.headers.setdefault("X-Api-Call-Id", str(uuid.uuid4()))
        return response

    def error(
        self, request: web.Request, status: int, message: str, code: str | None = None
    ) -> web.Response:
        """The error response the API behind ``request.path`` would send."""
        if is_metafold_path(request.path):
            return self.metafold.error(request.path, status, message)
        return zoo_error(status, message, code)

    def _authorized(self, request: web.Request) -> bool:
        """The static token works everywhere; Metafold paths also take the tokens issued by
        the token endpoint, which itself needs none."""
        header = request.headers.get("Authorization")
        if header == f"Bearer {self.token}" or request.path == TOKEN_PATH:
            return True
        return is_metafold_path(request.path) and self.metafold.accepts(header)

    async def _apply(
        self, fault: Fault, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        kind = fault.kind
        if kind == "hold":
            await fault.wait_released()
            return await self._serve(request, handler)
        if kind == "latency":
            delay = fault.delay
            if fault.max_delay is not None:
                delay = self.faults.uniform(fault.delay, fault.max_delay)
            await asyncio.sleep(delay)
            return await self._serve(request, handler)
        if kind == "status":
            response = self.error(request, fault.status or 503, "injected fault", "fault")
            if fault.retry_after is not None:
                response.headers["Retry-After"] = fault.retry_after
            elif fault.retry_after_date is not None:
                when = datetime.now(timezone.utc) + timedelta(seconds=fault.retry_after_date)
                response.headers["Retry-After"] = format_datetime(when, usegmt=True)
            return response
        if kind == "body":
            return web.Response(
                status=fault.status or 200,
                body=fault.body or b"",
                headers={"Content-Type": "application/json", **(fault.headers or {})},
            )
        if kind == "malformed":
            return web.Response(body=b'{"id": "x", "status": ', content_type="application/json")
        if kind == "html":
            return web.Response(
                status=fault.status or 502,
                text="<html><head><title>502 Bad Gateway</title></head>"
                "<body><h1>Bad Gateway</h1></body></html>",
                content_type="text/html",
            )
        if kind == "redirect":
            status = fault.status or 307
            return web.Response(status=status, headers={"Location": fault.location or "/"})
        if kind == "drop":
            _close(request)
            raise asyncio.CancelledError  # aiohttp drops the handler; nothing is sent
        if kind == "truncated":
            real = await self._serve(request, handler)
            body = (
                real.body
                if isinstance(real, web.Response) and isinstance(real.body, bytes)
                else b"{}"
            )
            partial = web.StreamResponse(status=real.status)
            partial.content_type = "application/json"
            partial.content_length = len(body)
            await partial.prepare(request)
            await partial.write(body[: len(body) // 2])
            _close(request)
            return partial
        raise ValueError(f"unknown fault kind {kind!r}")


def _close(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()
