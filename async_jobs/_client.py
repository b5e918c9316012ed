"""What every API client shares: its options (:class:`ClientOptions`), configuration from
the environment, the transport it owns, refs built from its API's :class:`JobKind`
descriptors, and the async context manager protocol. :class:`ApiClient` is public: a client of
your own job API is a subclass with a :class:`JobApi`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict, TypeVar

import msgspec

from . import events
from ._api import JobApi, JobKind
from ._http import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_TIMEOUT,
    Auth,
    ClientSession,
    HttpTransport,
    QueryValue,
)
from ._policy import DEFAULT_POLL, PollSchedule, RetryPolicy, check_schedule
from ._poll import ActiveListing, Job, JobRef

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ApiClient", "ClientOptions", "ClientSettings", "from_env"]

C = TypeVar("C", bound="ApiClient")
J = TypeVar("J", bound=Job)
T = TypeVar("T")


def from_env(value: str | None, *names: str) -> str | None:
    """``value`` if given, else the first non-empty environment variable of ``names``."""
    if value:
        return value
    for name in names:
        found = os.environ.get(name)
        if found:
            return found
    return None


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """How a client sends its requests and schedules its waits, as one value (every client
    takes ``options=`` and the same names as keyword arguments, which win over it)."""

    #: Seconds for one request attempt, connection to last byte.
    timeout: float = DEFAULT_TIMEOUT
    #: Retries of idempotent requests (None: the default :class:`RetryPolicy`).
    retry: RetryPolicy | None = None
    #: The default schedule of waits on this client's jobs: a PollPolicy or a
    #: ``{JobState: PollPolicy}`` mapping (None: the default PollPolicy).
    poll: PollSchedule | None = None
    #: The largest response body read, in bytes (a larger one is a DecodeError).
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    #: Allow plain http to a host that is not loopback (credentials travel in clear).
    allow_insecure_http: bool = False
    #: Requests per second, shared by every call and wait (None: no cap).
    rate_limit: float | None = None
    #: Requests in flight at once (None: no cap).
    max_concurrency: int | None = None
    #: Event listeners of this client's requests and of the waits on its jobs.
    listeners: Sequence[events.Listener] = ()

    def replace(self, **changes: Any) -> ClientOptions:
        """A copy with ``changes`` (TypeError for a name that is not an option)."""
        return dataclasses.replace(self, **changes)


class ClientSettings(TypedDict, total=False):
    """The fields of :class:`ClientOptions`, as keyword arguments of a client."""

    timeout: float
    retry: RetryPolicy | None
    poll: PollSchedule | None
    max_body_size: int
    allow_insecure_http: bool
    rate_limit: float | None
    max_concurrency: int | None
    listeners: Sequence[events.Listener]


class ApiClient:
    """The base of every API client: one transport (sessions, auth, retries, limits, typed
    errors read with the API's own error decoder) and refs built from the API's
    :class:`JobKind` descriptors (:meth:`ref`), remade from resume tokens by :meth:`job_ref`.

    A client of your own API subclasses it with ``api = JobApi(...)``; see the README's
    "Your own job API".
    """

    #: The API this client speaks: its job kinds, error bodies and request-id header.
    api: ClassVar[JobApi] = JobApi("api")
    #: What a user is told when this client was made without a credential, naming the
    #: environment variables it reads (the CLI adds how else to give one).
    credentials_hint: ClassVar[str] = "no API credentials"

    def __init__(
        self,
        *,
        base_url: str,
        auth: Auth,
        session: ClientSession | None = None,
        options: ClientOptions | None = None,
        **settings: Unpack[ClientSettings],
    ) -> None:
        self.options: ClientOptions = (options or ClientOptions()).replace(**settings)
        #: This client's own event listeners (besides the process-wide ones): its requests'
        #: events, and the events of waits on its jobs.
        self.listeners: tuple[events.Listener, ...] = tuple(self.options.listeners)
        self._http = HttpTransport(
            base_url,
            auth=auth,
            session=session,
            timeout=self.options.timeout,
            retry=self.options.retry,
            max_body_size=self.options.max_body_size,
            allow_insecure_http=self.options.allow_insecure_http,
            rate_limit=self.options.rate_limit,
            max_concurrency=self.options.max_concurrency,
            listeners=self.listeners,
            decode_error=self.api.decode_error,
            request_id_header=self.api.request_id_header,
        )
        self.poll: PollSchedule = check_schedule(self.options.poll) or DEFAULT_POLL
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

    async def get_json(
        self,
        path: str,
        decoder: msgspec.json.Decoder[T],
        params: Mapping[str, QueryValue] | None = None,
    ) -> T:
        """``GET path`` (encoded, e.g. by :func:`~async_jobs.api_path`) with ``params`` through
        this client's transport (auth, retries, limits, typed errors), decoded by
        ``decoder``: how a client of your own API sends what its kinds do not cover (a
        listing, say)."""
        return await self._http.get(path, decoder, params)

    async def fetch(self, kind: JobKind[J], *ids: str) -> J:
        """``GET`` the job of ``kind`` with ``ids`` once, decoded as ``kind.model``."""
        return await self._http.get(kind.url_path(*ids), kind.decoder)

    def ref(self, kind: JobKind[J], *ids: str) -> JobRef[J]:
        """A :class:`~async_jobs.JobRef` on the job of ``kind`` with ``ids`` (checked now, not
        at the first poll), for :func:`~async_jobs.wait_until_terminal`,
        :func:`~async_jobs.watch` and a :class:`~async_jobs.Watcher`, which lists it with its
        group when ``kind`` has a listing."""
        path = kind.url_path(*ids)
        listing = None
        if kind.group is not None and kind.list_active is not None:
            group_ids = ids[:-1]
            listing = self._listing(
                (kind.group, *group_ids), partial(kind.list_active, self, *group_ids)
            )
        return JobRef(
            kind.name,
            tuple(ids),
            partial(self._http.get, path, kind.decoder),
            poll=self.poll,
            listeners=self.listeners,
            listing=listing,
            cancel=partial(kind.cancel, self, *ids) if kind.cancel is not None else None,
        )

    def job_ref(self, kind: str, ids: Sequence[str]) -> JobRef[Any] | None:
        """The ref of ``kind`` with ``ids`` if this client serves that kind, else None (how
        :meth:`JobRef.from_token` and :meth:`Watcher.restore` find a job's client)."""
        found = self.api.kind(kind)
        return self.ref(found, *ids) if found is not None else None

    @property
    def has_credentials(self) -> bool:
        """True if the client has a credential to send (a token, or client credentials to
        exchange for one), from its arguments or the environment."""
        return bool(self._http.secrets)

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
