"""FakeApiServer: the fake server with the built-in API plugins (Zoo, Metafold and its token
endpoint) already hosted, under typed attributes."""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Iterable

from ._clock import FakeClock
from ._conversions import FakeConversions
from ._metafold import FakeMetafold
from ._plugin import FakeApi
from ._server import DEFAULT_TOKEN, FakeServer
from ._zoo import FakeZoo

__all__ = ["FakeApiServer"]


class FakeApiServer(FakeServer):
    """A real HTTP server on loopback serving the Zoo and Metafold APIs (and any plugins given
    with ``apis=``), for tests and demos.

    ``async with FakeApiServer() as server:`` then point a client at ``server.url`` with
    ``token=server.token``. Jobs are scripted through ``server.zoo``, ``server.conversions``
    and ``server.metafold``; misbehaviour through :meth:`inject`; load shedding through
    :meth:`overload`; time through ``server.clock``. Every request is kept in
    ``server.requests``. The fake is at least as strict as the real APIs (UUID path ids on
    Zoo, ...); ``server.zoo.options`` (:class:`ZooOptions`) relaxes or varies the Zoo side,
    ``server.metafold``'s attributes the Metafold side. Paths no plugin owns are answered as
    Zoo answers.
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
        super().__init__(token=token, host=host, port=port, clock=clock, seed=seed, ssl=ssl)
        #: The Zoo API: async operations (and, as ``conversions``, dataset conversions).
        self.zoo: FakeZoo = self.add_api(FakeZoo())
        #: The Zoo API's org dataset conversions (the same plugin as ``zoo``).
        self.conversions: FakeConversions = self.zoo.conversions
        #: The Metafold API (its token endpoint, ``metafold.oauth``, is hosted beside it).
        self.metafold: FakeMetafold = self.add_api(FakeMetafold())
        self.fallback = self.zoo
        for api in apis:
            self.add_api(api)
