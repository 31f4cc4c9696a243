"""`serve`'s gate, against the real aiohttp server on a loopback port: the listen rule, the token and its
cookie, the WebSocket's Origin, and the Host of a token-less server. No browser here (test_serve_browser
drives Chromium); the session command is a small script that leaves a mark when it runs, so a refused
request is seen to start no process at all."""

from __future__ import annotations

import ssl
import subprocess
import sys

import aiohttp
import pytest

from console.web.guard import COOKIE, check_listen, cookie_value
from console.web.server import ConsoleServer, tls_context
from core.config import ConfigError
from tests.service.test_security import make_certificate

TOKEN = "s3cret-token"


@pytest.mark.parametrize("host,token,tls,insecure,refused", [
    ("127.0.0.1", None, False, False, None),
    ("::1", None, False, False, None),
    ("localhost", None, False, False, None),
    ("0.0.0.0", None, True, False, "without --token"),
    ("0.0.0.0", None, False, True, "without --token"),
    ("192.0.2.7", TOKEN, False, False, "without TLS"),
    ("0.0.0.0", TOKEN, True, False, None),
    ("0.0.0.0", TOKEN, False, True, None),
])
def test_listen_rule(host, token, tls, insecure, refused):
    if refused is None:
        check_listen(host, token=token, tls=tls, insecure=insecure)
        return
    with pytest.raises(ConfigError, match=refused):
        check_listen(host, token=token, tls=tls, insecure=insecure)


def test_serve_off_loopback_without_token_refuses_in_one_line():
    result = subprocess.run([sys.executable, "-m", "console.cli", "serve", "--listen", "0.0.0.0:0",
                             "--redis-url", "redis://127.0.0.1:1/0"], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "without --token" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_without_redis_fails_in_one_line():
    result = subprocess.run([sys.executable, "-m", "console.cli", "serve", "--listen", "127.0.0.1:0",
                             "--redis-url", "redis://127.0.0.1:1/0"], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr


@pytest.fixture
async def served(tmp_path):
    """A ConsoleServer on a free loopback port; its session command marks a file when a session starts."""
    mark = tmp_path / "started"
    argv = [sys.executable, "-c", f"open({str(mark)!r}, 'a').write('x')"]

    async def start(token: str | None, tls=None):
        server = ConsoleServer(argv, {}, token=token, title="test")
        runner = aiohttp.web.AppRunner(await server._make_app(), handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        runners.append(runner)
        return f"{'https' if tls else 'http'}://127.0.0.1:{runner.addresses[0][1]}", server

    runners: list = []
    yield start, mark
    for runner in runners:
        await runner.cleanup()


async def test_without_token_every_path_is_401_and_no_terminal_starts(served):
    start, mark = served
    base, server = await start(TOKEN)
    async with aiohttp.ClientSession() as client:
        for path in ("/", "/static/js/textual.js", "/ws?width=80&height=24", "/?token=wrong"):
            async with client.get(base + path, allow_redirects=False) as response:
                assert response.status == 401, path
                assert "textual" not in (await response.text()).lower()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(base + "/ws", headers={"Origin": base})
        assert refused.value.status == 401
        async with client.get(base + "/", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
    assert not mark.exists() and not server.sessions


async def test_token_on_the_url_becomes_a_strict_httponly_cookie(served):
    start, mark = served
    base, server = await start(TOKEN)
    # unsafe=True: aiohttp's jar otherwise keeps no cookie of an IP-address host (browsers do).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.get(base + f"/?token={TOKEN}&fontsize=14", allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/?fontsize=14"  # the token leaves the address bar
            cookie = response.headers["Set-Cookie"]
            assert TOKEN not in cookie and cookie_value(TOKEN) in cookie
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        async with client.get(base + "/?fontsize=14") as response:  # the jar now carries the cookie
            assert response.status == 200
            page = await response.text()
            assert f"ws://127.0.0.1:{base.rsplit(':', 1)[1]}/ws" in page
        async with aiohttp.ClientSession() as bare:
            async with bare.get(base + "/", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200


async def test_websocket_needs_the_cookie_and_this_servers_origin(served, tmp_path):
    start, mark = served
    base, server = await start(TOKEN)
    jar_cookie = {COOKIE: cookie_value(TOKEN)}
    async with aiohttp.ClientSession(cookies=jar_cookie) as client:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(base + "/ws", headers={"Origin": "http://evil.example"})
        assert refused.value.status == 403
        assert not mark.exists()
        websocket = await client.ws_connect(base + "/ws?width=80&height=24", headers={"Origin": base})
        await websocket.receive(timeout=30)  # the session's process ran (and, not being an app, ended)
        await websocket.close()
    assert mark.read_text() == "x"
    assert not server.sessions


async def test_without_token_only_loopback_names_are_served(served):
    start, mark = served
    base, server = await start(None)
    async with aiohttp.ClientSession() as client:
        async with client.get(base + "/") as response:
            assert response.status == 200
        # A DNS-rebinding page: a foreign name that resolves to 127.0.0.1.
        async with client.get(base + "/", headers={"Host": "evil.example:8000"}) as response:
            assert response.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(base + "/ws", headers={"Origin": "http://evil.example:8000"})
        assert refused.value.status == 403
    assert not mark.exists()


async def test_over_tls_the_cookie_is_secure_and_the_page_uses_wss(served, tmp_path):
    start, mark = served
    cert, key = make_certificate(tmp_path, ["127.0.0.1"])
    base, server = await start(TOKEN, tls_context(cert, key))
    trust = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     connector=aiohttp.TCPConnector(ssl=trust)) as client:
        async with client.get(base + f"/?token={TOKEN}", allow_redirects=False) as response:
            assert response.status == 303
            assert "Secure" in response.headers["Set-Cookie"]
        async with client.get(base + "/") as response:
            page = await response.text()
            port = base.rsplit(":", 1)[1]
            assert f"wss://127.0.0.1:{port}/ws" in page and f"https://127.0.0.1:{port}/static/" in page
    assert not mark.exists()


def test_serve_with_an_unreadable_certificate_refuses_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "console.cli", "serve", "--listen", "127.0.0.1:0",
                             "--redis-url", "redis://127.0.0.1:1/0", "--tls-cert", str(tmp_path / "none.pem"),
                             "--tls-key", str(tmp_path / "none.key")], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--tls-cert" in result.stderr, result.stderr
