"""What every API client shares: configuration from arguments or the environment, the
transport it owns, and the async context manager protocol."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from . import events
from ._http import Auth, ClientSession, HttpTransport
from ._policy import PollPolicy, RetryPolicy
from ._poll import ActiveListing, JobRef

__all__ = ["BaseClient", "from_env"]

C = TypeVar("C", bound="BaseClient")


def from_env(value: str | None, *names: str) -> str | None:
    """``value`` if given, else the first non-empty environment variable of ``names``."""
    if value:
        return value
    for name in names:
        found = os.environ.get(name)
        if found:
            return found
    return None


class BaseClient:
    """Shared behaviour of :class:`ZooClient` and :class:`MetafoldClient`."""

    def __init__(
        self,
        *,
        base_url: str,
        auth: Auth,
        session: ClientSession | None,
        timeout: float,
        retry: RetryPolicy | None,
        poll: PollPolicy | None,
        max_body_size: int,
        allow_insecure_http: bool,
        rate_limit: float | None = None,
        max_concurrency: int | None = None,
        listeners: Sequence[events.Listener] = (),
    ) -> None:
        #: This client's own event listeners (besides the process-wide ones): its requests'
        #: events, and the events of waits on its jobs.
        self.listeners: tuple[events.Listener, ...] = tuple(listeners)
        self._http = HttpTransport(
            base_url,
            auth=auth,
            session=session,
            timeout=timeout,
            retry=retry,
            max_body_size=max_body_size,
            allow_insecure_http=allow_insecure_http,
            rate_limit=rate_limit,
            max_concurrency=max_concurrency,
            listeners=self.listeners,
        )
        self.poll: PollPolicy = poll or PollPolicy()
        self._listings: dict[Hashable, ActiveListing[Any]] = {}

    def _listing(
        self, key: tuple[str, ...], list_active: Callable[[], AsyncIterator[Any]]
    ) -> ActiveListing[Any]:
        """One shared listing per group of this client (a Watcher coalesces through it)."""
        full_key: Hashable = (id(self), *key)
        listing = self._listings.get(full_key)
        if listing is None:
            name = ":".join(key)
            listing = self._listings[full_key] = ActiveListing(full_key, list_active, name=name)
        return listing

    def _ref_factories(self) -> Mapping[str, Callable[..., JobRef[Any]]]:
        """JobRef kind -> the method that makes such a ref from its ids."""
        return {}

    def job_ref(self, kind: str, ids: Sequence[str]) -> JobRef[Any] | None:
        """The ref of ``kind`` with ``ids`` if this client serves that kind, else None (how
        :meth:`JobRef.from_token` and :meth:`Watcher.restore` find a job's client)."""
        factory = self._ref_factories().get(kind)
        return factory(*ids) if factory is not None else None

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._http.base_url

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every request this client sends."""
        return self._http.retry

    def set_limits(
        self, *, rate_limit: float | None = None, max_concurrency: int | None = None
    ) -> None:
        """Cap this client's requests per second and requests in flight, shared by every call
        and every wait that uses it (None leaves a limit as it is)."""
        self._http.set_limits(rate_limit=rate_limit, max_concurrency=max_concurrency)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    async def aclose(self) -> None:
        """Close the HTTP session if the client created it (a caller's session stays open)."""
        await self._http.aclose()

    async def __aenter__(self: C) -> C:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
