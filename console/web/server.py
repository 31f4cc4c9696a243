"""textual-serve's server with the guard in front, request-relative URLs, and sessions that end with it."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from textual_serve.server import Server, to_int

from console.web.guard import make_guard
from console.web.sessions import Session

log = logging.getLogger("swordsec.serve")

# Each session is a Python process of its own (~60 MB): a cap keeps a burst of tabs from exhausting memory.
MAX_SESSIONS = 32


class ConsoleServer(Server):
    """Serve `argv` (one process per WebSocket) behind `make_guard(token)`."""

    def __init__(self, argv: list[str], environment: dict[str, str], *, token: str | None, title: str):
        super().__init__(" ".join(argv), title=title)
        self.argv = argv
        self.environment = environment
        self.token = token
        self.sessions: set[Session] = set()

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(make_guard(self.token))
        return app

    async def on_startup(self, app: web.Application) -> None:
        """textual-serve prints a banner here; our one line is printed once the port is bound."""

    async def on_shutdown(self, app: web.Application) -> None:
        await asyncio.gather(*(session.stop() for session in list(self.sessions)), return_exceptions=True)

    @aiohttp_jinja2.template("app_index.html")
    async def handle_index(self, request: web.Request) -> dict[str, Any]:
        # URLs from the request, not from the listen address: a server on 0.0.0.0 is reached by a name.
        base = f"{request.scheme}://{request.host}"
        websocket = ("wss" if request.scheme == "https" else "ws") + f"://{request.host}/ws"
        return {"font_size": to_int(request.query.get("fontsize", "16"), 16), "app_websocket_url": websocket,
                "config": {"static": {"url": f"{base}/static/"}}, "application": {"name": self.title}}

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        if len(self.sessions) >= MAX_SESSIONS:
            raise web.HTTPServiceUnavailable(text=f"503: {MAX_SESSIONS} browser sessions are open already\n")
        websocket = web.WebSocketResponse(heartbeat=15)
        width = to_int(request.query.get("width", "80"), 80)
        height = to_int(request.query.get("height", "24"), 24)
        await websocket.prepare(request)
        session = Session(self.argv, self.environment, write_bytes=websocket.send_bytes,
                          write_str=websocket.send_str, close=websocket.close,
                          download_manager=self.download_manager)
        self.sessions.add(session)
        try:
            await session.start(width, height)
            log.info("browser session opened from %s (pid %s)", request.remote, session.pid)
            # Whichever ends first ends the session: the tab (its WebSocket closed), or the app (it quit, or
            # failed to start: textual-serve alone would leave that tab open on a dead session).
            messages = asyncio.ensure_future(self._process_messages(websocket, session))
            await asyncio.wait({messages, session.finished}, return_when=asyncio.FIRST_COMPLETED)
            messages.cancel()
        except (asyncio.CancelledError, ConnectionResetError):
            pass
        except Exception:  # one broken session must not take the server down
            log.exception("browser session failed")
        finally:
            await session.stop()
            self.sessions.discard(session)
            await websocket.close()
            log.info("browser session closed (pid %s)", session.pid)
        return websocket


def tls_context(cert, key) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


async def serve_until_signalled(server: ConsoleServer, host: str, port: int, tls: ssl.SSLContext | None,
                                announce) -> None:
    """Listen, call announce(url) once bound, and stop every session on SIGINT, SIGTERM or SIGHUP."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(await server._make_app(), handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        announce(f"{'https' if tls else 'http'}://{shown}:{bound_port}/")
        await stop.wait()
    finally:
        await runner.cleanup()  # on_shutdown: every session is stopped and reaped
