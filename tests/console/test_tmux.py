"""End to end in a real terminal: tmux runs the installed `swordsec-console`, a challenge file is dropped
in, the screen shows 1,000 merged users, `q` quits, the exit code is 0 and no child process is left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from conftest import copy_challenge

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def program() -> list[str]:
    installed = Path(sys.executable).with_name("swordsec-console")
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "console.cli"]


def tmux(*args: str, server: str | None = None) -> str:
    """Run tmux on the default server, or on a server of a test's own (`tmux -L server`, no config)."""
    own = ["-L", server, "-f", "/dev/null"] if server else []
    return subprocess.run(["tmux", *own, *args], capture_output=True, text=True, check=True).stdout


def wait_screen(session: str, predicate, timeout: float, message: str, server: str | None = None) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = tmux("capture-pane", "-p", "-t", session, server=server)
        if predicate(screen):
            return screen
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {message}; the screen was:\n{screen}")
        time.sleep(0.2)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_installed_console_in_tmux(tmp_path):
    session = "swordsec-" + uuid.uuid4().hex[:8]
    drop, data, status = tmp_path / "drop", tmp_path / "data", tmp_path / "exit-status"
    command = " ".join([*program(), "--watch", str(drop), "--data-dir", str(data), "--grpc-listen", "127.0.0.1:0",
                        "--workers", "2", "--quiet-period", "0.3"])
    # The shell writes the exit code to a file, then waits, so the pane can still be read afterwards.
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40",
         f"{command}; echo $? > {status}; sleep 60")
    try:
        shell_pid = int(tmux("display-message", "-p", "-t", session, "#{pane_pid}").strip())
        wait_screen(session, lambda s: "● live" in s and "2/2 workers" in s, 60, "the dashboard to go live")
        app_pid = next(p.pid for p in descendants(shell_pid) if "swordsec-console" in " ".join(p.cmdline())
                       or "console.cli" in " ".join(p.cmdline()))
        children = descendants(app_pid)
        assert any("redis-server" in " ".join(c.cmdline()) for c in children), children
        copy_challenge(drop, ["1.json"])
        wait_screen(session, lambda s: "1,000 users" in s, 60, "1,000 merged users")
        tmux("send-keys", "-t", session, "4")  # the Files panel, scrolled into view in a small terminal
        wait_screen(session, lambda s: "1.json" in s and "merged" in s and "1,000" in s, 30, "1.json merged")
        wait_screen(session, lambda s: "backlog 0" in s, 30, "an empty backlog")
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 60
        while not status.exists():
            if time.monotonic() > deadline:
                pytest.fail("the console did not exit:\n" + tmux("capture-pane", "-p", "-t", session))
            time.sleep(0.2)
        assert status.read_text().strip() == "0"
        left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"child processes left behind: {left}"
        assert (data / "all_users.json").exists()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


# -- issue 16: however the console in a terminal ends, nothing it started outlives it ----------------------------

from lifecycle_helpers import assert_nothing_left, living, wait_children  # noqa: E402


class Terminal:
    """The installed console in a tmux session, its dashboard live, its children taken."""

    def __init__(self, tmp_path: Path, env: dict | None = None, shell: bool = False):
        self.session = "swordsec-" + uuid.uuid4().hex[:8]
        self.tmp_path, self.status = tmp_path, tmp_path / "exit-status"
        self.namespace = "lc" + uuid.uuid4().hex[:10]
        exports = " ".join(f"{k}={v}" for k, v in {"SWORDSEC_NAMESPACE": self.namespace, **(env or {})}.items())
        command = " ".join(["env", exports, *program(), "--watch", str(tmp_path / "drop"), "--data-dir",
                            str(tmp_path / "data"), "--grpc-listen", "127.0.0.1:0", "--workers", "2"])
        if shell:  # an interactive shell that runs the console as its foreground job, as an operator would
            tmux("new-session", "-d", "-s", self.session, "-x", "120", "-y", "40", "bash --norc --noprofile")
            tmux("send-keys", "-t", self.session, f"{command}; echo $? > {self.status}", "Enter")
        else:
            tmux("new-session", "-d", "-s", self.session, "-x", "120", "-y", "40",
                 f"{command}; echo $? > {self.status}; sleep 60")
        self.shell_pid = int(tmux("display-message", "-p", "-t", self.session, "#{pane_pid}").strip())

    def live(self) -> "Terminal":
        wait_screen(self.session, lambda s: "● live" in s and "2/2 workers" in s, 60, "the dashboard to go live")
        self.app = next(p for p in descendants(self.shell_pid) if "swordsec-console" in " ".join(p.cmdline())
                        or "console.cli" in " ".join(p.cmdline()))
        self.children = wait_children(self.app.pid, redis=True, workers=2)
        return self

    def nothing_left(self) -> float:
        return assert_nothing_left([self.app, *self.children], str(self.tmp_path), self.namespace,
                                   exclude=frozenset({self.shell_pid}))

    def exit_code(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while not self.status.exists():
            if time.monotonic() > deadline:
                pytest.fail("the console did not exit:\n" + tmux("capture-pane", "-p", "-t", self.session))
            time.sleep(0.1)
        return self.status.read_text().strip()

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], capture_output=True)


@pytest.fixture
def terminal(tmp_path):
    opened: list[Terminal] = []

    def open_terminal(**options) -> Terminal:
        opened.append(Terminal(tmp_path, **options))
        return opened[-1]

    yield open_terminal
    for term in opened:
        term.close()


@pytest.mark.slow
def test_closing_the_terminal_leaves_nothing(terminal):
    """tmux kill-session: the terminal goes away (SIGHUP); Redis and the workers go with the console."""
    term = terminal().live()
    tmux("kill-session", "-t", term.session)
    print(f"terminal closed: nothing left after {term.nothing_left():.2f} s")
    assert "ready to exit, bye bye" in (term.tmp_path / "data" / "redis" / "redis.log").read_text()


@pytest.mark.slow
def test_the_parent_shell_killed_leaves_nothing(terminal):
    term = terminal(shell=True).live()
    os.kill(term.shell_pid, signal.SIGKILL)  # the pane's shell dies: tmux closes the pane, the tty hangs up
    print(f"parent shell killed: nothing left after {term.nothing_left():.2f} s")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_console_stops_it_cleanly(terminal, signum):
    term = terminal().live()
    term.app.send_signal(signum)
    assert term.exit_code() == "0"
    term.nothing_left()
    assert "ready to exit, bye bye" in (term.tmp_path / "data" / "redis" / "redis.log").read_text()


@pytest.mark.slow
def test_sigkill_of_the_console_takes_its_children_down(terminal):
    term = terminal().live()
    term.app.kill()
    assert term.exit_code() == str(128 + signal.SIGKILL)
    print(f"console SIGKILLed: nothing left {term.nothing_left():.2f} s after its shell saw it die")


@pytest.mark.slow
def test_an_unexpected_exception_in_the_console_leaves_nothing(terminal, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import console.screens.dashboard as d\n"
        "shown = d.DashboardScreen.show\n"
        "def show(self, snap):\n"
        "    if snap.alive_workers == 2:  # a few refreshes after the dashboard went live\n"
        "        self.app._shows = getattr(self.app, '_shows', 0) + 1\n"
        "        if self.app._shows > 4:\n"
        "            raise ZeroDivisionError('injected by the test')\n"
        "    return shown(self, snap)\n"
        "d.DashboardScreen.show = show\n")
    term = terminal(env={"PYTHONPATH": str(hook)}).live()
    assert term.exit_code() != "0"
    term.nothing_left()


@pytest.mark.slow
def test_an_embedded_redis_that_cannot_start_again_ends_the_console_with_exit_3(terminal):
    term = terminal().live()
    server = next(c for c in term.children if "redis-server" in " ".join(c.cmdline()))
    for manifest in (term.tmp_path / "data" / "redis").rglob("*.manifest"):
        manifest.write_text("garbage\n")  # its AOF cannot be read: starting it again can only fail
    server.kill()
    code = term.exit_code()
    assert code == "3", tmux("capture-pane", "-p", "-S", "-200", "-t", term.session)
    term.nothing_left()
    screen = tmux("capture-pane", "-p", "-t", term.session)
    assert "cannot be started again" in screen, screen


@pytest.mark.slow
def test_the_console_rides_out_its_redis_killed_and_restarted(terminal):
    """The embedded redis-server killed -9 under the dashboard: started again, the console stays up."""
    term = terminal().live()
    server = next(c for c in term.children if "redis-server" in " ".join(c.cmdline()))
    server.kill()
    copy_challenge(term.tmp_path / "drop", ["1.json"])  # the ingest goes on once Redis is back
    wait_screen(term.session, lambda s: "1,000 users" in s, 60, "1,000 merged users after the restart")
    assert not term.status.exists(), "the console must not have ended"
    assert living(term.app)
    tmux("send-keys", "-t", term.session, "q")
    assert term.exit_code() == "0"
    term.nothing_left()
