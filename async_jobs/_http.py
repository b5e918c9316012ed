"""The HTTP transport: the only module that imports aiohttp.

API clients build a path and query and hand over a msgspec decoder; this module sends the
request (auth header, user agent, timeout, redirects, retries with backoff) and turns whatever
comes back into a decoded value or a typed error from :mod:`async_jobs._errors`. The pieces that
decide (error mapping, excerpts, URL building) are plain functions tested without a network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, TypeAlias, TypeVar
from urllib.parse import quote

import aiohttp
import anyio
import msgspec
from yarl import URL

from . import _clock, events
from ._errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    DecodeError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from ._outage import Outage
from ._policy import Outcome, PollStep, RetryPolicy, parse_retry_after
from ._ratelimit import REQUEST_LIMITS, RateLimiter, RequestLimits, Slots
from ._redact import get_logger, redact, register_secret, unregister_secret
from ._version import __version__

__all__ = [
    "Auth",
    "ClientSession",
    "ErrorDecoder",
    "ErrorDetails",
    "api_path",
    "HttpTransport",
    "QueryValue",
    "Response",
    "StaticTokenAuth",
    "build_url",
    "error_for_response",
    "no_error_details",
]

T = TypeVar("T")
#: What a hostile or broken body can make msgspec raise: deep nesting inside a free-form
#: (``Any``) field exhausts the recursion limit instead of failing validation, and invalid
#: UTF-8 inside a string is a UnicodeDecodeError.
BODY_ERRORS: tuple[type[Exception], ...] = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    RecursionError,
    UnicodeDecodeError,
)
#: The session type callers may pass as ``session=`` (re-exported so no other module imports
#: aiohttp).
ClientSession = aiohttp.ClientSession
QueryValue = str | int | float | bool | None
logger = get_logger("async_jobs.http")

USER_AGENT = f"async-jobs/{__version__}"
#: The headers of every request (the Authorization header is added for the API's origin).
BASE_HEADERS: Mapping[str, str] = {"User-Agent": USER_AGENT, "Accept": "application/json"}
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BODY_SIZE = 32 * 1024 * 1024
RETRY_STATUSES = frozenset({429, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
EXCERPT_CHARS = 200
#: Parsed URLs of paths without a query kept for reuse (a job's URL is asked for at each poll):
#: about 1 KiB each with what aiohttp caches on them, so at most about 1 MiB.
PLAIN_URLS = 1024
#: A path segment quote() would leave unchanged (RFC 3986 unreserved characters only).
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")


class Auth(Protocol):
    """Supplies the Authorization header; may refresh a credential after a 401."""

    async def authorization(self) -> str | None:
        """The value of the Authorization header, or None to send none."""
        ...

    async def refresh(self) -> bool:
        """Renew the credential after a 401; True if a retry is worth it."""
        ...

    def secrets(self) -> Sequence[str]:
        """Strings that must never appear in a message or log line."""
        ...


class StaticTokenAuth:
    """A fixed bearer token (or none)."""

    __slots__ = ("_header", "_token")

    def __init__(self, token: str | None) -> None:
        self._token = token or None
        self._header = f"Bearer {self._token}" if self._token else None  # built once

    async def authorization(self) -> str | None:
        """``Bearer <token>`` or None when there is no token."""
        return self._header

    async def refresh(self) -> bool:
        """A static token cannot be renewed."""
        return False

    def secrets(self) -> Sequence[str]:
        """The token itself."""
        return (self._token,) if self._token else ()

    def __repr__(self) -> str:
        return f"StaticTokenAuth(token={'***' if self._token else None})"


class Response(NamedTuple):
    """A fully read HTTP response (a tuple: built once per request, on the hot path)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    method: str
    url: URL | str


def api_path(*segments: str) -> str:
    """An encoded path from raw segments: ``api_path("async", "operations", op_id)``. Each
    segment is percent-encoded whole, so an id can never add a path level."""
    return "/" + "/".join([encode_segment(segment) for segment in segments])


def encode_segment(segment: str) -> str:
    """One raw path segment percent-encoded whole (``/`` too); ValueError unless it is a
    non-empty string."""
    if not isinstance(segment, str) or not segment:
        raise ValueError(f"path segments must be non-empty strings, got {segment!r}")
    # quote() leaves unreserved characters as they are: skip it for segments of only those
    # (every literal and most ids), which is most of what it would cost per request.
    return segment if _UNRESERVED.fullmatch(segment) else quote(segment, safe="")


def build_url(base_url: str, path: str, params: Mapping[str, QueryValue] | None = None) -> URL:
    """``base_url`` + an already encoded ``path`` + ``params`` percent-encoded byte for byte
    (``+``, ``&``, ``=``, ``/`` included); None values are left out."""
    if not params:
        return _plain_url(base_url, path)
    text = base_url.rstrip("/") + path
    pairs = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        pairs.append(f"{quote(key, safe='')}={quote(str(value), safe='')}")
    if pairs:
        text += "?" + "&".join(pairs)
    return URL(text, encoded=True)


@lru_cache(maxsize=PLAIN_URLS)
def _plain_url(base_url: str, path: str) -> URL:
    # A job's URL is asked for at each poll: one parse per URL, and aiohttp then reuses the
    # parts yarl keeps on the object (yarl's own cache holds 128, fewer than jobs watched).
    return URL(base_url.rstrip("/") + path, encoded=True)


def excerpt(body: bytes, secrets: Sequence[str] = ()) -> str:
    """A short printable excerpt of a body, with secrets masked."""
    text = body[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    text = redact(text, secrets)
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS] + "…"
    return text


class ErrorDetails(NamedTuple):
    """What an API's error body says: its message, its error code and the request id (each
    None when the body does not say)."""

    message: str | None = None
    code: str | None = None
    request_id: str | None = None


#: Reads one API's error body (JSON or not) into :class:`ErrorDetails`; None (or raising
#: one of :data:`BODY_ERRORS`) when the body is not that API's error shape.
ErrorDecoder: TypeAlias = Callable[[bytes], "ErrorDetails | None"]


def no_error_details(body: bytes) -> ErrorDetails | None:
    """The error decoder of an API whose error bodies say nothing this library reads."""
    return None


_ERROR_CLASSES: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    429: RateLimitedError,
}


def _error_class(status: int) -> type[ApiError]:
    if status >= 500:
        return ServerError
    return _ERROR_CLASSES.get(status, ApiError)


def error_for_response(
    response: Response,
    secrets: Sequence[str] = (),
    *,
    decode_error: ErrorDecoder = no_error_details,
    request_id_header: str | None = None,
) -> ApiError:
    """The typed error for a non-2xx response: the API's own ``decode_error`` reads its
    body, ``request_id_header`` names the response header carrying a request id (the body's
    wins); without a message, a short excerpt of the body stands in."""
    try:
        details = decode_error(response.body) or ErrorDetails()
    except BODY_ERRORS:
        details = ErrorDetails()
    request_id = details.request_id
    if not request_id and request_id_header is not None:
        request_id = response.headers.get(request_id_header)
    message = details.message or excerpt(response.body, secrets) or "(empty body)"
    message = redact(message, secrets)
    kw: dict[str, Any] = {
        "code": details.code,
        "request_id": request_id,
        "method": response.method,
        "url": redact(str(response.url), secrets),
    }
    cls = _error_class(response.status)
    if cls is RateLimitedError:
        hint = parse_retry_after(response.headers.get("Retry-After"), datetime.now(timezone.utc))
        return RateLimitedError(response.status, message, retry_after=hint, **kw)
    return cls(response.status, message, **kw)


def _same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str, *, allow_insecure_http: bool = False) -> str:
    """Validate a base URL: http(s) only, and plain http only to loopback unless allowed."""
    url = URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    if url.scheme == "http" and not allow_insecure_http and not _is_loopback(url.host):
        raise ValueError(
            f"refusing to send credentials over plain http to {url.host}; use https or pass "
            "allow_insecure_http=True"
        )
    return base_url.rstrip("/")


def _public_url(url: URL, secrets: Sequence[str] = ()) -> str:
    """``url`` as events show it: without user or password, and no secret in it."""
    text = str(url.with_user(None)) if url.user or url.password else str(url)
    return redact(text, secrets)


#: Answers that count toward an outage of the host (it is down or overloaded); a 429 is the
#: server telling this client to slow down, not an outage.
OUTAGE_STATUSES = frozenset({502, 503, 504})
#: Failed attempts in a row (with no answer between) that make an outage.
OUTAGE_AFTER = 3


class _Transient(Exception):
    """A failure worth another attempt (internal). ``unsent``: the server surely did not act
    on the request (no connection was made, or it said so), so even a POST may go again."""

    def __init__(
        self, error: Exception, hint: float | None = None, *, unsent: bool = False
    ) -> None:
        self.error = error
        self.hint = hint
        self.unsent = unsent


def surely_not_acted_on(status: int, headers: Mapping[str, str]) -> bool:
    """True for an answer saying the server did not act on the request and asks to be asked
    again: 429, or 503 with ``Retry-After``. A bare 503, 502, 504 or other 5xx may come after
    the work was done (a proxy timing out on a slow backend)."""
    return status == 429 or (status == 503 and "Retry-After" in headers)


class HttpTransport:
    """Sends requests for one API client: one aiohttp session (the caller's, if given, which
    is then never closed here), bearer auth, retries, and typed errors."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        allow_insecure_http: bool = False,
        rate_limit: float | None = None,
        max_concurrency: int | None = None,
        listeners: Sequence[events.Listener] = (),
        decode_error: ErrorDecoder = no_error_details,
        request_id_header: str | None = None,
    ) -> None:
        self.base_url = check_base_url(base_url, allow_insecure_http=allow_insecure_http)
        self.listeners = tuple(listeners)
        #: How this API's error bodies read, and which header carries its request ids.
        self.decode_error: ErrorDecoder = decode_error
        self.request_id_header: str | None = request_id_header
        self._host = URL(self.base_url).host or self.base_url
        self._outage = Outage(self._host, logger, after=OUTAGE_AFTER)
        self.limiter = RateLimiter(rate_limit)
        self._concurrency: Slots | None = None
        self.set_limits(rate_limit=rate_limit, max_concurrency=max_concurrency)
        self._auth = auth
        for secret in auth.secrets():
            register_secret(secret)
        self._session = session
        self._owns_session = session is None
        self._timeout = timeout
        self._client_timeout = aiohttp.ClientTimeout(total=timeout)  # built once, not per request
        self.retry = retry or RetryPolicy()
        self._max_body_size = max_body_size
        self._closed = False

    def __repr__(self) -> str:
        return f"HttpTransport(base_url={self.base_url!r})"

    def set_limits(
        self, *, rate_limit: float | None = None, max_concurrency: int | None = None
    ) -> None:
        """Cap this client's requests per second and requests in flight (None: no cap; a 429
        still slows the client down by itself)."""
        if rate_limit is not None:
            self.limiter = RateLimiter(rate_limit)
        if max_concurrency is not None:
            if max_concurrency < 1:
                raise ValueError("max_concurrency must be >= 1")
            self._concurrency = Slots(max_concurrency)

    @property
    def secrets(self) -> Sequence[str]:
        """Strings masked in every message this transport produces."""
        return self._auth.secrets()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this client is closed")
        if self._session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
                auto_decompress=True,
            )
            # aiohttp re-sends an idempotent request once, unseen, when a pooled connection
            # turns out closed. This transport retries itself, with backoff and an event per
            # attempt, so every attempt is counted: turn the hidden one off where it exists.
            if hasattr(session, "_retry_connection"):
                session._retry_connection = False
            self._session = session
        return self._session

    async def aclose(self) -> None:
        """Close the session if this transport created it."""
        if not self._closed:
            for secret in self._auth.secrets():
                unregister_secret(secret)
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            with anyio.CancelScope(shield=True):
                await session.close()

    async def get(
        self,
        path: str,
        decoder: msgspec.json.Decoder[T],
        params: Mapping[str, QueryValue] | None = None,
    ) -> T:
        """GET ``path`` and decode the body, retrying transient failures."""
        response = await self.request("GET", path, params=params)
        return self.decode(response, decoder)

    def decode(self, response: Response, decoder: msgspec.json.Decoder[T]) -> T:
        """Decode a 2xx body, or raise DecodeError with the status and a short excerpt."""
        try:
            return decoder.decode(response.body)
        except BODY_ERRORS as exc:
            reason = redact(str(exc), self.secrets)
            raise DecodeError(
                f"unexpected response body for {response.method} {response.url}: {reason}",
                status=response.status,
                excerpt=excerpt(response.body, self.secrets),
            ) from None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, QueryValue] | None = None,
        data: Mapping[str, str] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
        authenticate: bool = True,
        absolute_url: str | None = None,
        decode_error: ErrorDecoder | None = None,
    ) -> Response:
        """Send a request and return the 2xx response, or raise the typed error.

        Idempotent requests (GET by default) are retried on connection errors, timeouts, a
        body cut in transit, 429, 502, 503 and 504, honouring ``Retry-After``. Any other
        request (a POST) is retried only when the server surely did not act on it: the
        connection was refused before anything was sent, or the answer was 429, or 503 with
        ``Retry-After``. An error body is read by ``decode_error`` (default: the API's own).
        """
        url = (
            URL(absolute_url, encoded=True)
            if absolute_url
            else build_url(self.base_url, path, params)
        )
        retryable = method == "GET" if idempotent is None else idempotent
        step: PollStep | None = None  # made at the first retry: most requests need none
        refreshed = False
        while True:
            try:
                # The credential comes first, outside the concurrency slot: getting it may
                # itself send a request through this transport (an OAuth2 token exchange).
                authorization = await self._auth.authorization() if authenticate else None
                attempt = step.misses + 1 if step is not None else 1
                caller = REQUEST_LIMITS.get()
                if caller is None:
                    response = await self._send_within(
                        method, url, data, json, authorization, attempt
                    )
                else:
                    response = await self._send_limited(
                        caller, method, url, data, json, authorization, attempt
                    )
                if response.status == 429:  # slows this client and the caller down
                    now = _clock.now()
                    self.limiter.throttled(now)
                    if caller is not None:
                        caller.rate.throttled(now)
                if response.status == 401 and authenticate and not refreshed:
                    refreshed = True
                    if await self._auth.refresh():
                        continue
                if 200 <= response.status < 300:
                    return response
                error = error_for_response(
                    response,
                    self.secrets,
                    decode_error=decode_error or self.decode_error,
                    request_id_header=self.request_id_header,
                )
                if response.status in RETRY_STATUSES:
                    hint = error.retry_after if isinstance(error, RateLimitedError) else None
                    if hint is None:
                        hint = parse_retry_after(
                            response.headers.get("Retry-After"), datetime.now(timezone.utc)
                        )
                    unsent = surely_not_acted_on(response.status, response.headers)
                    raise _Transient(error, hint, unsent=unsent)
                raise error
            except _Transient as transient:
                if not (retryable or transient.unsent):
                    raise transient.error from None
                if step is None:
                    step = PollStep(self.retry)
                decision = step.record(
                    Outcome.MISSED, _clock.now(), hint=transient.hint, rand=random.random()
                )
                if decision.stop is not None:
                    raise transient.error from None
                logger.debug(
                    "%s %s failed (%s); retry %d in %.2fs",
                    method,
                    url,
                    transient.error,
                    step.misses,
                    decision.delay,
                )
                current = events.CURRENT_WAIT.get()
                local = self._local(current)
                if events.enabled(local):
                    retry = events.RetryScheduled(
                        method=method,
                        url=_public_url(url, self.secrets),
                        attempt=step.misses,
                        delay=decision.delay,
                        cause=type(transient.error).__name__,
                        key=current.key if current is not None else None,
                        wait_id=current.wait_id if current is not None else None,
                    )
                    events.emit(retry, local)
                await _clock.sleep(decision.delay)

    async def _send_limited(
        self,
        caller: RequestLimits,
        method: str,
        url: URL,
        data: Any,
        json: Any,
        authorization: str | None,
        attempt: int,
    ) -> Response:
        """One attempt within the caller's limits (:data:`REQUEST_LIMITS`), then this
        client's: the caller's rate, the caller's slot, then :meth:`_send_within`."""
        await caller.rate.acquire()
        if caller.concurrency is None:
            return await self._send_within(method, url, data, json, authorization, attempt)
        async with caller.concurrency:
            return await self._send_within(method, url, data, json, authorization, attempt)

    async def _send_within(
        self,
        method: str,
        url: URL,
        data: Any,
        json: Any,
        authorization: str | None,
        attempt: int,
    ) -> Response:
        """One attempt within this client's own rate and concurrency limits."""
        if self.limiter.rate is not None:
            await self.limiter.acquire()
        if self._concurrency is None:
            return await self._send_observed(method, url, data, json, authorization, attempt)
        async with self._concurrency:
            return await self._send_observed(method, url, data, json, authorization, attempt)

    async def _send_observed(
        self,
        method: str,
        url: URL,
        data: Any,
        json: Any,
        authorization: str | None,
        attempt: int,
    ) -> Response:
        """:meth:`_send_once`, the host's :class:`Outage` told how it went, and its
        :class:`~async_jobs.events.RequestDone` when a listener is registered (otherwise the
        cost is a truth test)."""
        current = events.CURRENT_WAIT.get()
        local = self._local(current)
        observed = events.enabled(local)
        started = _clock.now() if observed else 0.0
        status: int | None = None
        error: BaseException | None = None
        request_id: str | None = None
        try:
            response = await self._send_once(method, url, data, json, authorization)
            status = response.status
            if self.request_id_header is not None:
                request_id = response.headers.get(self.request_id_header)
        except BaseException as exc:
            error = exc.error if isinstance(exc, _Transient) else exc
            if isinstance(exc, _Transient):
                self._outage.failed(error, _clock.now())
            if isinstance(error, DecodeError):
                status = error.status
            raise
        finally:
            if observed:
                done = events.RequestDone(
                    method=method,
                    url=_public_url(url, self.secrets),
                    status=status,
                    attempt=attempt,
                    duration=_clock.now() - started,
                    request_id=request_id,
                    error=type(error).__name__ if error is not None else None,
                    key=current.key if current is not None else None,
                    wait_id=current.wait_id if current is not None else None,
                )
                events.emit(done, local)
        if response.status in OUTAGE_STATUSES:
            self._outage.failed(f"HTTP {response.status}", _clock.now())
        elif self._outage.failures:
            self._outage.answered(_clock.now())
        return response

    def _local(self, current: events.CurrentWait | None) -> tuple[events.Listener, ...]:
        """This client's listeners and those of the wait a request is sent for."""
        if current is None or not current.listeners:
            return self.listeners
        return tuple(dict.fromkeys((*self.listeners, *current.listeners)))  # each once

    async def _send_once(
        self, method: str, url: URL, data: Any, json: Any, authorization: str | None
    ) -> Response:
        """One attempt, following redirects by hand so credentials never cross origins."""
        session = self._get_session()
        origin = url
        for _ in range(MAX_REDIRECTS + 1):
            if authorization and (url is origin or _same_origin(url, origin)):
                headers = {**BASE_HEADERS, "Authorization": authorization}
            else:
                headers = dict(BASE_HEADERS)
            try:
                async with session.request(
                    method,
                    url,
                    headers=headers,
                    data=data,
                    json=json,
                    allow_redirects=False,
                    timeout=self._client_timeout,
                ) as resp:
                    length = resp.content_length
                    if (
                        length is not None
                        and length <= self._max_body_size
                        and "Content-Encoding" not in resp.headers
                    ):
                        # Not compressed, and a length within the cap: the body cannot
                        # outgrow it (aiohttp reads exactly Content-Length bytes), so read it
                        # in one go. A body cut short is a ClientPayloadError either way.
                        body = await resp.read()
                    else:
                        body = await self._read_capped(resp, method, url)
                    response = Response(resp.status, resp.headers, body, method, url)
                logger.debug("%s %s -> %d (%d bytes)", method, url, response.status, len(body))
            except aiohttp.ClientConnectorError as exc:
                # No connection was made, so nothing was sent: safe to send again, even a POST.
                raise _Transient(
                    TransportError(f"{method} {url}: {type(exc).__name__}: {exc}"), unsent=True
                ) from None
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                raise _Transient(
                    TransportError(f"{method} {url}: {type(exc).__name__}: {exc}")
                ) from None
            except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
                raise _Transient(
                    TransportError(f"{method} {url}: no response within {self._timeout:g}s")
                ) from None
            except aiohttp.ClientError as exc:
                raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
            if response.status in REDIRECT_STATUSES and "Location" in response.headers:
                url = url.join(URL(response.headers["Location"]))
                if response.status == 303:
                    method, data, json = "GET", None, None
                if (data is not None or json is not None) and not _same_origin(url, origin):
                    # A body may hold credentials too (a token exchange's client secret).
                    raise TransportError(
                        f"{method} {origin}: refusing to send the request body on to "
                        f"another origin ({url.origin()})"
                    )
                continue
            return response
        raise TransportError(f"{method} {origin}: more than {MAX_REDIRECTS} redirects")

    async def _read_capped(self, resp: aiohttp.ClientResponse, method: str, url: URL) -> bytes:
        cap = self._max_body_size
        if resp.content_length is not None and resp.content_length > cap:
            raise DecodeError(
                f"{method} {url}: response of {resp.content_length} bytes exceeds the "
                f"{cap}-byte limit",
                status=resp.status,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > cap:
                raise DecodeError(
                    f"{method} {url}: response exceeds the {cap}-byte limit", status=resp.status
                )
            chunks.append(chunk)
        return b"".join(chunks)
