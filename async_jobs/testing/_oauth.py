"""An OAuth2 client-credentials token endpoint (Auth0's behaviour), a fake plugin of its own:
APIs whose clients exchange a client id and secret for expiring bearer tokens accept the
tokens it issued (see :meth:`FakeTokenEndpoint.accepts`)."""

from __future__ import annotations

import secrets

from aiohttp import web

from ._clock import FakeClock
from ._plugin import FakeApi

__all__ = ["DEFAULT_TOKEN_LIFETIME", "TOKEN_PATH", "FakeTokenEndpoint", "oauth_error"]

#: Where the token endpoint is served by default.
TOKEN_PATH = "/oauth/token"
DEFAULT_TOKEN_LIFETIME = 86400.0


def oauth_error(status: int, error: str, description: str) -> web.Response:
    """An OAuth2 token endpoint error (Auth0's shape): ``{error, error_description}``."""
    return web.json_response({"error": error, "error_description": description}, status=status)


class FakeTokenEndpoint(FakeApi):
    """``POST path``: exchanges the client credentials added with :meth:`add_client` for bearer
    tokens living ``token_lifetime`` seconds of the server's clock. The request's
    ``audience`` must be ``audience`` (by default the server's own URL with a trailing slash),
    matched exactly as Auth0 does. The endpoint itself needs no credentials; ``exchanges``
    counts the tokens issued, ``tokens`` maps each live one to its expiry."""

    name = "oauth"

    def __init__(
        self,
        clock: FakeClock | None = None,
        *,
        path: str = TOKEN_PATH,
        token_prefix: str = "tok-",
        scope: str = "",
    ) -> None:
        super().__init__(clock)
        self.path = path
        self.prefixes: tuple[str, ...] = (path,)
        self.token_prefix = token_prefix
        self.scope = scope
        self.clients: dict[str, str] = {}
        self.tokens: dict[str, float] = {}
        self.token_lifetime = DEFAULT_TOKEN_LIFETIME
        self.audience: str | None = None
        self.exchanges: int = 0

    def add_client(self, client_id: str, client_secret: str) -> None:
        """Accept these client credentials at the token endpoint."""
        self.clients[client_id] = client_secret

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far (the next request with one gets a 401)."""
        self.tokens.clear()

    def accepts(self, authorization: str | None) -> bool:
        """True if ``authorization`` carries a live token this endpoint issued."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        expires = self.tokens.get(authorization[len("Bearer ") :])
        return expires is not None and self.clock.now() < expires

    def public(self, path: str) -> bool:
        """The token endpoint needs no credentials."""
        return self.owns(path)

    def error(self, path: str, status: int, message: str, code: str | None = None) -> web.Response:
        """Auth0's error body: ``{error, error_description}``."""
        oauth_code = "access_denied" if status in (401, 403) else "server_error"
        return oauth_error(status, oauth_code, message)

    async def handle_token(self, request: web.Request) -> web.Response:
        """``POST {path}``: the client-credentials grant (form or JSON body), answered as
        Auth0 does."""
        try:
            if request.content_type == "application/json":
                raw = await request.json()
                form = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
            else:
                form = {str(k): str(v) for k, v in (await request.post()).items()}
        except ValueError:
            return oauth_error(400, "invalid_request", "Malformed request body")
        grant = form.get("grant_type")
        if grant != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", f"Unsupported grant type: {grant}")
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if not client_id or self.clients.get(client_id) != secret or not secret:
            return oauth_error(401, "access_denied", "Unauthorized")
        origin = str(request.url.origin())
        audience = form.get("audience", "")
        if audience != (self.audience or origin + "/"):
            return oauth_error(403, "access_denied", f"Service not found: {audience}")
        token = self.token_prefix + secrets.token_urlsafe(24)
        self.exchanges += 1
        self.tokens[token] = self.clock.now() + self.token_lifetime
        lifetime: float | int = self.token_lifetime
        if float(lifetime).is_integer():
            lifetime = int(lifetime)
        return web.json_response(
            {
                "access_token": token,
                "expires_in": lifetime,
                "scope": self.scope,
                "token_type": "Bearer",
            }
        )

    def add_routes(self, app: web.Application) -> None:
        """Register the token endpoint on ``app``."""
        app.router.add_post(self.path, self.handle_token)
