"""`serve` in a real browser: Debian's Chromium driven by Playwright, a `--no-ui` pipeline process, and the
`swordsec-console serve` process between them. textual-serve draws the terminal with xterm.js on a canvas
(no DOM text), so the page's script is rewritten on its way to the browser to expose xterm's Terminal, and
the screen is read from its buffer (see /work/shared/notes/browser-testing.md). Every test also checks that
no session process outlives its tab or the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest

# The --no-ui pipeline on the machine's Redis that attach's own end-to-end test starts.
from tests.console.test_attach_tmux import pipeline  # noqa: F401
from tests.console.test_tmux import descendants, program
from tests.lifecycle_helpers import assert_nothing_left, wait_line

from conftest import CHALLENGE, ROOT, copy_challenge, wait_for

CHROMIUM = Path("/usr/lib/chromium/chromium")
TOKEN = "browser-" + uuid.uuid4().hex
# The public xterm.js Terminal is built around this line of textual-serve's bundled script.
TERMINAL_HOOK = "this._core=this.register(new r.Terminal(e))"
SCREEN = """() => { const b = window.__term.buffer.active; const lines = [];
                    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
                    return lines.join('\\n'); }"""

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no browser: {CHROMIUM} is missing "
                                                               f"(apt-get install chromium)")]


class Served:
    def __init__(self, process: subprocess.Popen, url: str, out: Path):
        self.process, self.url, self.out = process, url, out

    def sessions(self) -> list[psutil.Process]:
        return [p for p in descendants(self.process.pid)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def served(pipeline, tmp_path):  # noqa: F811 - the imported fixture, requested by name
    """`swordsec-console serve` on a free loopback port, with a token; stopped (SIGTERM) if a test did not."""
    _, url, namespace = pipeline
    out = tmp_path / "serve.out"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SWORDSEC_") and k != "REDIS_URL"}
    environment["SWORDSEC_SERVE_TOKEN"] = TOKEN
    with open(out, "wb") as handle:
        process = subprocess.Popen([*program(), "serve", "--listen", "127.0.0.1:0", "--redis-url", url,
                                    "--namespace", namespace], stdout=handle, stderr=subprocess.STDOUT,
                                   env=environment)
    try:
        line = wait_line(out, "serve: the console of", 60)
        address = line.split(" at ", 1)[1].split()[0]
        yield Served(process, address, out)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: the tests run as root in a container, where Chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


def open_console(browser, url: str):
    """A page on the console with xterm's Terminal exposed as window.__term, once the terminal draws."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})

    def expose_terminal(route):
        response = route.fetch()
        script = response.text()
        assert TERMINAL_HOOK in script, "textual-serve's script changed: update TERMINAL_HOOK"
        route.fulfill(response=response, body=script.replace(TERMINAL_HOOK, TERMINAL_HOOK + ",window.__term=this"))

    page.route("**/static/js/textual.js", expose_terminal)
    page.route("https://fonts.googleapis.com/**", lambda route: route.abort())  # offline here; not needed
    page.goto(f"{url}?token={TOKEN}")
    assert "token" not in page.url  # traded for the cookie, gone from the address bar
    page.wait_for_selector("body.-first-byte", timeout=60_000)
    return page


def wait_screen(page, text: str, timeout: float = 60) -> str:
    try:
        page.wait_for_function(f"() => ({SCREEN})().includes({json.dumps(text)})", timeout=timeout * 1000)
    except sync_api.TimeoutError:
        pytest.fail(f"{text!r} never showed in the browser; the screen:\n{page.evaluate(SCREEN)}")
    return page.evaluate(SCREEN)


def matching(needle: str) -> int:
    """Users of 1.json with `needle` in a field, as the console's `/` filter counts them."""
    users = json.loads((CHALLENGE / "1.json").read_text())
    return sum(any(needle in str(value).lower() for value in user.values()) for user in users)


def test_the_dashboard_its_help_and_a_filter_in_a_browser(served, browser, tmp_path):
    copy_challenge(tmp_path / "drop", ["1.json"])
    page = open_console(browser, served.url)
    wait_screen(page, "1,000 users")
    wait_screen(page, "1.json")
    assert len(served.sessions()) == 1  # one tab, one attached console
    shot = Path(os.environ.get("SWORDSEC_SERVE_SCREENSHOT", tmp_path / "serve.png"))
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000

    page.click(".textual-terminal")  # keys reach the app once the terminal has focus
    page.keyboard.type("?")
    wait_screen(page, "Everywhere")  # the help: every key, global and per panel
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => !({SCREEN})().includes('Everywhere')", timeout=30_000)
    # Each key waits for the last one's effect: a key typed before the focus moved goes to the old widget.
    page.keyboard.type("5")
    wait_screen(page, "] Next page")  # the footer of the focused users panel
    page.keyboard.type("/")
    wait_screen(page, "Clear filter")  # the footer shows the filter box's key once the box has the focus
    page.keyboard.type("china")
    wait_screen(page, "china")  # in the filter box: the keys reached it
    page.keyboard.press("Enter")
    expected = matching("china")
    assert expected > 10
    wait_screen(page, f"{expected:,} match “china”")

    page.close()
    # The tab is gone: so is its attached console, and the server goes on.
    wait_for(lambda: not served.sessions(), 15, message="the tab's attach process to end")
    assert served.process.poll() is None


def test_without_the_token_401_and_no_terminal(served, browser):
    page = browser.new_page()
    for path in ("", "?token=wrong"):
        response = page.goto(served.url + path)
        assert response.status == 401
        assert page.locator(".textual-terminal").count() == 0
        assert "missing or wrong token" in page.content()
    websocket = page.evaluate("""url => new Promise(done => { const ws = new WebSocket(url);
                                   ws.onopen = () => done('open'); ws.onerror = () => done('refused'); })""",
                              served.url.replace("http", "ws") + "ws")
    assert websocket == "refused"
    assert served.sessions() == []


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_no_session_outlives_the_server(served, browser, how):
    pages = [open_console(browser, served.url) for _ in range(2)]
    for page in pages:
        wait_screen(page, "workers")
    sessions = wait_for(lambda: len(served.sessions()) == 2 and served.sessions(), 30, message="two sessions")
    served.process.send_signal(getattr(signal, how))
    code = served.process.wait(30)
    # SIGTERM: a clean stop, each session asked to quit and reaped; SIGKILL: the kernel's parent-death signal.
    assert code == (0 if how == "SIGTERM" else -signal.SIGKILL)
    assert_nothing_left(sessions, "console.web.child")


def test_the_screenshot_in_docs_is_committed():
    assert (ROOT / "docs" / "serve.png").stat().st_size > 10_000
    assert "docs/serve.png" in (ROOT / "README.md").read_text()
