"""Who may open the console in a browser: the listen rule, the token, its cookie, and the WebSocket's origin.

textual-serve has no authentication at all, and its page gives the keyboard of a console that can scale
workers and delete failed jobs. So: off loopback a token is required (and TLS, unless --insecure, as for
gRPC); every request without it gets 401 before textual-serve sees it, so no terminal starts. The token is
given once on the page URL (`/?token=...`), traded for an HttpOnly SameSite=Strict cookie and dropped from
the address bar; the page's WebSocket, opened without the query string, carries the cookie. The WebSocket's
Origin must be this server: another site's page could otherwise open it with the user's cookie.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from core.config import ConfigError, is_loopback

COOKIE = "swordsec_console"
TOKEN_PARAMETER = "token"
# Names a browser on this machine uses for a loopback listener. Any other Host header on a loopback
# listener without a token is a DNS-rebinding page (evil.example resolving to 127.0.0.1): refused.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def check_listen(host: str, *, token: str | None, tls: bool, insecure: bool) -> None:
    """The rule for listening: loopback is this machine's users only; the network needs a token, and TLS
    unless --insecure (the same TLS rule as gRPC's, where the token would otherwise travel in clear)."""
    if is_loopback(host):
        return
    if not token:
        raise ConfigError(f"refusing to serve the console on {host} without --token: anyone who reaches it could "
                          f"watch and control the pipeline; set --token (or SWORDSEC_SERVE_TOKEN) and TLS, "
                          f"or listen on 127.0.0.1")
    if not tls and not insecure:
        raise ConfigError(f"refusing to serve the console on {host} without TLS: the token and the screen would "
                          f"cross the network in clear; pass --tls-cert/--tls-key, or --insecure on a trusted network")


def cookie_value(token: str) -> str:
    """What the cookie holds: derived from the token, so a leaked cookie jar does not reveal the token."""
    return hmac.new(token.encode(), b"swordsec-console serve cookie", hashlib.sha256).hexdigest()


def _same(given: str | None, expected: str) -> bool:
    # Constant time: a byte-by-byte compare leaks the secret's prefix through timing.
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _unauthorized() -> web.Response:
    # The same words for a missing and a wrong token: the answer must not help guessing.
    return web.Response(status=401, text="401: missing or wrong token; open this page as /?token=SECRET\n",
                        headers={"WWW-Authenticate": 'Bearer realm="swordsec-console"', "Cache-Control": "no-store"})


def _host_name(host: str) -> str:
    """The name in a Host header, without its port: `[::1]:8000` -> `[::1]`, `localhost:8000` -> `localhost`."""
    host = host.lower()
    if host.startswith("["):
        return host[:host.find("]") + 1]
    return host.partition(":")[0]


def _own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}".lower()


def make_guard(token: str | None):
    """aiohttp middleware enforcing the rules above (token None: loopback only, no token)."""
    expected_cookie = cookie_value(token) if token else None

    @web.middleware
    async def guard(request: web.Request, handler):
        if token is None:
            if _host_name(request.host) not in LOOPBACK_NAMES:
                return web.Response(status=403, text="403: this console answers to localhost only\n")
        else:
            given = request.query.get(TOKEN_PARAMETER)
            if given is not None:
                if not _same(given, token):
                    return _unauthorized()
                # Trade the URL's token for the cookie, and send the browser to the same page without it,
                # so the token leaves the address bar and the history.
                query = {k: v for k, v in request.query.items() if k != TOKEN_PARAMETER}
                response = web.HTTPSeeOther(request.rel_url.with_query(query))
                response.set_cookie(COOKIE, expected_cookie, httponly=True, samesite="Strict", path="/",
                                    secure=request.secure)
                response.headers["Cache-Control"] = "no-store"
                raise response
            if not (_same(request.cookies.get(COOKIE), expected_cookie) or _same(_bearer(request), token)):
                return _unauthorized()
        origin = request.headers.get("Origin")
        # Browsers always send Origin on a WebSocket handshake; clients that are not browsers carry no
        # ambient cookie and already passed the token check.
        if origin is not None and request.path == "/ws" and origin.lower() != _own_origin(request):
            return web.Response(status=403, text="403: WebSocket from another origin\n")
        return await handler(request)

    return guard
