"""A child started through core.queue.children dies with us, even when we are killed with SIGKILL, on both paths:
util-linux's setpriv arming the parent-death signal, and our own Python child arming it as it starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]

PARENT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    import core.queue.children as children
    if sys.argv[2] == "own":
        children._setpriv = lambda: None  # as on a machine without util-linux's setpriv
    code = "from core.queue.children import arm_from_environment; arm_from_environment(); import time; time.sleep(120)"
    child = children.spawn([sys.executable, "-c", code], cwd=sys.argv[1])
    print(child.pid, flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("path", ["setpriv", "own"])
def test_a_child_dies_with_a_parent_killed_by_sigkill(path):
    if path == "setpriv" and not __import__("shutil").which("setpriv"):
        pytest.skip("no setpriv on this machine")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(ROOT), path], stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        # Under load setpriv may not have exec'd Python yet: wait until the child is the program it was asked to be
        # (the signal is armed before that exec; the instant before it is the documented gap).
        wait_for(lambda: child.is_running() and "sleep(120)" in " ".join(child.cmdline()), timeout=15,
                 message="the child to be running its program")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, timeout=15,
                 message="the child to die with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()


def test_no_python_runs_between_fork_and_exec():
    """A preexec_fn in a threaded process (gRPC, Redis) crashed children now and then: never pass one."""
    import core.queue.children as children

    calls = []
    original = children._SPAWNER.submit
    children._SPAWNER.submit = lambda args, kwargs: calls.append((args, kwargs)) or original(args, kwargs)
    try:
        process = children.spawn([sys.executable, "-c", "pass"])
        process.wait(timeout=30)
    finally:
        children._SPAWNER.submit = original
    [(args, kwargs)] = calls
    assert "preexec_fn" not in kwargs
    assert args[0].endswith("setpriv") or kwargs["env"][children.DEATH_SIGNAL_VARIABLE].endswith(f":{os.getpid()}")
