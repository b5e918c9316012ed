"""FakeApiServer: the fake server with the built-in API plugins (Zoo, Metafold and its token
endpoint) already hosted, under typed attributes."""

from __future__ import annotations

from ._conversions import FakeConversions
from ._metafold import FakeMetafold
from ._plugin import FakeApi
from ._server import FakeServer
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
    Zoo answers. Takes the arguments of :class:`FakeServer`.
    """

    #: The Zoo API: async operations (and, as ``conversions``, dataset conversions).
    zoo: FakeZoo
    #: The Zoo API's org dataset conversions (part of the ``zoo`` plugin).
    conversions: FakeConversions
    #: The Metafold API (its token endpoint, ``metafold.oauth``, is hosted beside it).
    metafold: FakeMetafold

    def _add_builtin_apis(self) -> None:
        self.zoo = self.add_api(FakeZoo())
        self.conversions = self.zoo.conversions
        self.metafold = self.add_api(FakeMetafold())
        self.fallback: FakeApi = self.zoo
