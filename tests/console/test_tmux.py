"""End to end in a real terminal: tmux runs the installed `swordsec-console`, a challenge file is dropped
in, the screen shows 1,000 merged users, `q` quits, the exit code is 0 and no child process is left."""

from __future__ import annotations

import shutil
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


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def wait_screen(session: str, predicate, timeout: float, message: str) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = tmux("capture-pane", "-p", "-t", session)
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
