"""FakeApi: the base class of a fake API plugin, hosted by a
:class:`~async_jobs.testing.FakeServer`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ._clock import FakeClock
from ._helpers import json_response

if TYPE_CHECKING:
    from ._server import FakeServer

__all__ = ["FakeApi"]


class FakeApi:
    """A fake of one HTTP API, served by a :class:`~async_jobs.testing.FakeServer` next to
    the others: the server brings the socket, the fault plan (``server.inject``), load
    shedding, request recording and the static token; the plugin brings its routes, its
    error body, any extra credentials and per-API response headers.

    Subclass it, set :attr:`name` and :attr:`prefixes`, override :meth:`add_routes` (and
    :meth:`error`, :meth:`accepts`, :meth:`public`, :meth:`finish` where the API differs from
    the defaults), then ``server.add_api(plugin)`` before the server starts (or pass
    ``apis=[plugin]``). Script jobs on :attr:`clock` (the server's clock once attached).
    """

    #: A short name, unique on a server (``server.api(name)`` finds the plugin).
    name: str = "api"
    #: The path prefixes this API answers (a prefix matches itself and what lies under it).
    prefixes: tuple[str, ...] = ()

    def __init__(self, clock: FakeClock | None = None) -> None:
        #: The clock timelines run on: the server's, once :meth:`attach` was called.
        self.clock: FakeClock = clock if clock is not None else FakeClock()
        #: The server this plugin was added to (None until then).
        self.server: FakeServer | None = None

    def attach(self, server: FakeServer) -> None:
        """Called when the plugin is added to ``server``: adopt its clock."""
        self.server = server
        self.clock = server.clock

    def owns(self, path: str) -> bool:
        """True if ``path`` belongs to this API (by default: it lies under a prefix)."""
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.prefixes)

    def add_routes(self, app: web.Application) -> None:
        """Register the API's handlers on ``app`` (called when the server starts)."""

    def error(self, path: str, status: int, message: str, code: str | None = None) -> web.Response:
        """The error response this API sends (by default ``{"message": ...}``), used for the
        server's own errors (a 401, an injected status fault) on this API's paths."""
        return json_response({"message": message}, status=status)

    def accepts(self, authorization: str | None) -> bool:
        """True if ``authorization`` (the raw header) is a credential of this API beyond the
        server's static token (by default none is)."""
        return False

    def public(self, path: str) -> bool:
        """True if ``path`` needs no credentials at all (by default none does)."""
        return False

    def finish(self, request: web.Request, response: web.StreamResponse) -> None:
        """Called on every answer a handler of this API gave, e.g. to add response headers."""
