"""OAuth2 client credentials: an :class:`~async_jobs._http.Auth` that exchanges a client id and
secret for a bearer token, caches it, and renews it before it expires and after a 401.

The exchange is an ordinary request through the client's own :class:`HttpTransport` (so it
gets the same session, timeout, retries and typed errors, and this module never imports
aiohttp). One exchange runs at a time, under an ``anyio.Lock``: a burst of requests at start-up
or after a 401 shares one new token. The client secret and every token issued are registered
with :mod:`async_jobs._redact`, so no message or log line shows them.
"""

from __future__ import annotations

import contextvars
import time
from collections import deque
from collections.abc import Callable, Sequence

import anyio
import msgspec

from ._errors import DecodeError
from ._http import BODY_ERRORS, ErrorDetails, HttpTransport, check_base_url
from ._redact import register_secret, unregister_secret

__all__ = ["DEFAULT_REFRESH_MARGIN", "ClientCredentialsAuth"]

#: Renew a token when it has less than this many seconds left (the official SDK uses 60).
DEFAULT_REFRESH_MARGIN = 60.0
#: How many past tokens stay masked in logs after they were replaced.
_KEPT_TOKENS = 8
#: The token this task last sent, so a 401 renews only the token that failed.
_sent_token: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "async_jobs_oauth_sent_token", default=None
)


class _TokenResponse(msgspec.Struct):
    access_token: str
    expires_in: float | None = None
    token_type: str | None = None


_token_decoder = msgspec.json.Decoder(_TokenResponse)


class _OAuthError(msgspec.Struct):
    """A token endpoint's error body (RFC 6749 5.2)."""

    error: str | None = None
    error_description: str | None = None


_oauth_error_decoder = msgspec.json.Decoder(_OAuthError)


def oauth_error_details(body: bytes) -> ErrorDetails:
    """A token endpoint's error: ``error`` is the code, ``error_description`` the message."""
    parsed = _oauth_error_decoder.decode(body)
    return ErrorDetails(parsed.error_description, parsed.error or None)


class ClientCredentialsAuth:
    """Bearer tokens from an OAuth2 client-credentials grant (``POST token_url`` with
    ``grant_type``, ``audience``, ``client_id`` and ``client_secret``).

    A token is reused until it has less than ``refresh_margin`` seconds left (at most half
    its lifetime, so a short-lived token is not renewed on every request), and renewed once
    after a 401. Call :meth:`bind` with the transport that sends the exchange before use.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        token_url: str,
        audience: str,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        allow_insecure_http: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret must both be non-empty")
        self.client_id = client_id
        self._client_secret = client_secret
        self.token_url = check_base_url(token_url, allow_insecure_http=allow_insecure_http)
        self.audience = audience
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._transport: HttpTransport | None = None
        self._lock: anyio.Lock | None = None
        self._token: str | None = None
        self._expires_at = 0.0
        self._margin = 0.0
        self._old_tokens: deque[str] = deque()
        #: How many exchanges this auth has made (for tests and diagnostics).
        self.exchanges = 0

    def __repr__(self) -> str:
        return (
            f"ClientCredentialsAuth(client_id={self.client_id!r}, client_secret='***', "
            f"token_url={self.token_url!r})"
        )

    def bind(self, transport: HttpTransport) -> None:
        """Send token exchanges through ``transport`` (the client's own)."""
        self._transport = transport

    def _fresh(self) -> bool:
        return self._token is not None and self._expires_at - self._clock() > self._margin

    async def authorization(self) -> str:
        """``Bearer <token>``, exchanging the credentials first if the token is missing or
        about to expire."""
        if not self._fresh():
            async with self._get_lock():
                if not self._fresh():
                    await self._exchange()
        token = self._token
        assert token is not None
        _sent_token.set(token)
        return f"Bearer {token}"

    async def refresh(self) -> bool:
        """After a 401: get a new token, unless another request already replaced the one
        that failed. Always worth one retry."""
        failed = _sent_token.get()
        async with self._get_lock():
            if self._token is None or self._token == failed:
                await self._exchange()
        return True

    def secrets(self) -> Sequence[str]:
        """The client secret and the tokens issued to this client."""
        return (self._client_secret, *self._old_tokens, *((self._token,) if self._token else ()))

    def _get_lock(self) -> anyio.Lock:
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    async def _exchange(self) -> None:
        transport = self._transport
        if transport is None:
            raise RuntimeError("ClientCredentialsAuth.bind() was not called")
        self.exchanges += 1
        started = self._clock()
        response = await transport.request(
            "POST",
            "",
            absolute_url=self.token_url,
            data={
                "grant_type": "client_credentials",
                "audience": self.audience,
                "client_id": self.client_id,
                "client_secret": self._client_secret,
            },
            authenticate=False,
            idempotent=True,
            decode_error=oauth_error_details,
        )
        try:
            issued = _token_decoder.decode(response.body)
        except BODY_ERRORS:
            # No excerpt: a half-valid body may well contain the new token.
            raise DecodeError(
                f"unexpected token response from {self.token_url}", status=response.status
            ) from None
        if not issued.access_token:
            raise DecodeError(f"empty access_token from {self.token_url}", status=response.status)
        self._install(issued.access_token, issued.expires_in, started)

    def _install(self, token: str, expires_in: float | None, started: float) -> None:
        register_secret(token)
        old, self._token = self._token, token
        if old is not None and old != token:
            self._old_tokens.append(old)
            if len(self._old_tokens) > _KEPT_TOKENS:
                unregister_secret(self._old_tokens.popleft())
        elif old is not None:
            unregister_secret(old)  # the same token again: keep one registration
        lifetime = float(expires_in) if expires_in is not None and expires_in > 0 else 3600.0
        self._expires_at = started + lifetime
        self._margin = min(self.refresh_margin, lifetime / 2)
