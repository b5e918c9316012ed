"""FakeServer: a real aiohttp.web server on 127.0.0.1 hosting fake API plugins."""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from ._clock import FakeClock
from ._faults import Fault, FaultKind, FaultPlan
from ._plugin import FakeApi

__all__ = ["DEFAULT_TOKEN", "FakeServer", "RecordedRequest"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEFAULT_TOKEN = "test-token"
P = TypeVar("P", bound=FakeApi)
S = TypeVar("S", bound="FakeServer")


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server received it (query values decoded, as a server sees them)."""

    method: str
    path: str
    query: dict[str, str]
    authorization: str | None
    user_agent: str | None
    at: float = 0.0  #: time.monotonic() on arrival


class FakeServer:
    """A real HTTP server on loopback hosting fake API plugins (:class:`FakeApi`), for tests
    and demos.

    ``async with FakeServer(apis=[MyFake()]) as server:`` then point a client at
    ``server.url`` with ``token=server.token``. Each plugin brings its routes, error body and
    extra credentials; the server brings what every API shares: misbehaviour through
    :meth:`inject`, load shedding through :meth:`overload`, time through ``server.clock`` (the
    plugins' clock), the static token (accepted on every path), and every request kept in
    ``server.requests``. A path no plugin owns is answered as ``fallback`` answers (default:
    a plain :class:`FakeApi`). Plugins are added with ``apis=`` or :meth:`add_api` while the
    server is not running: routes bind when it starts.
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
        apis: Iterable[FakeApi] = (),
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
        #: Load shedding (see :meth:`overload`): a plan of its own, picked before ``faults``.
        self.shedding: FaultPlan = FaultPlan(seed)
        self._runner: web.AppRunner | None = None
        #: The hosted plugins by name, in the order they were added (first owner wins).
        self.apis: dict[str, FakeApi] = {}
        #: The plugin answering for paths no plugin owns (errors, auth).
        self.fallback: FakeApi = FakeApi(self.clock)
        self._add_builtin_apis()
        for api in apis:
            self.add_api(api)

    def _add_builtin_apis(self) -> None:
        """Where a subclass hosts the APIs it always serves, before those of ``apis=``."""

    def add_api(self, api: P) -> P:
        """Host ``api`` (attached to this server's clock) and return it. Only while the server
        is not running: its routes are registered when the server starts."""
        if self._runner is not None:
            raise RuntimeError("add APIs before the server starts (or stop it first)")
        if api.name in self.apis:
            raise ValueError(f"an API named {api.name!r} is already hosted")
        api.attach(self)
        self.apis[api.name] = api
        return api

    def api(self, name: str) -> FakeApi:
        """The hosted plugin called ``name`` (KeyError if there is none)."""
        return self.apis[name]

    def api_for(self, path: str) -> FakeApi:
        """The plugin answering ``path``: the first that owns it, else ``fallback``."""
        for api in self.apis.values():
            if api.owns(path):
                return api
        return self.fallback

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
        for api in self.apis.values():
            api.add_routes(app)
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

    async def __aenter__(self: S) -> S:
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
        api = self.api_for(request.path)
        if self.token is not None and not self._authorized(api, request):
            return self.error(request, 401, "invalid or missing API token", "unauthorized")
        response = await handler(request)
        api.finish(request, response)
        return response

    def error(
        self, request: web.Request, status: int, message: str, code: str | None = None
    ) -> web.Response:
        """The error response the API behind ``request.path`` would send."""
        return self.api_for(request.path).error(request.path, status, message, code)

    def _authorized(self, api: FakeApi, request: web.Request) -> bool:
        """The static token works everywhere; the owning API may take more credentials, or
        none on its public paths."""
        header = request.headers.get("Authorization")
        if header == f"Bearer {self.token}" or api.public(request.path):
            return True
        return api.accepts(header)

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
            if fault.served:
                await self._serve(request, handler)  # acted on; the answer is lost
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
