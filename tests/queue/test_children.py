"""A child started through core.queue.children dies with us, even when we are killed with SIGKILL, on both paths:
util-linux's setpriv arming the parent-death signal, and our own Python child arming it as it starts; and even when
we are killed before either armed it (our Python children then see they were orphaned, and leave)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

import core.queue.children as children
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]

CHILD = "from core.queue.children import arm_from_environment; arm_from_environment(); import time; time.sleep(120)"

PARENT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    import core.queue.children as children
    if sys.argv[2] == "own":
        children._setpriv = lambda: None  # as on a machine without util-linux's setpriv
    child = children.spawn([sys.executable, "-c", sys.argv[3]], cwd=sys.argv[1])
    print(child.pid, flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("when", ["running", "at once"])
@pytest.mark.parametrize("path", ["setpriv", "own"])
def test_a_child_dies_with_a_parent_killed_by_sigkill(path, when):
    """`running`: the child is our Python program, armed. `at once`: the parent dies as soon as it knows the
    child's pid, most often before setpriv or the child armed anything (one run in ten once left it running)."""
    if path == "setpriv" and not __import__("shutil").which("setpriv"):
        pytest.skip("no setpriv on this machine")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(ROOT), path, CHILD], stdout=subprocess.PIPE,
                              text=True)
    child = None
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        if when == "running":
            # The exact command line: setpriv's own holds the child's too, before it has armed the signal.
            wait_for(lambda: child.is_running() and child.cmdline() == [sys.executable, "-c", CHILD], timeout=15,
                     message="the child to be running its program")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, timeout=15,
                 message="the child to die with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()
        if child is not None and child.is_running():  # a failed test leaves no sleeper behind
            with contextlib.suppress(psutil.Error):
                child.kill()


def test_no_python_runs_between_fork_and_exec():
    """A preexec_fn in a threaded process (gRPC, Redis) crashed children now and then: never pass one."""
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
    # On both paths the child is told who its parent is, to see whether it was orphaned before the arming.
    assert kwargs["env"][children.DEATH_SIGNAL_VARIABLE] == f"{int(signal.SIGTERM)}:{os.getpid()}"


@pytest.mark.parametrize("recorded", ["another process", "its parent"])
def test_a_child_told_another_parent_leaves_at_once(recorded):
    """The check that closes the instant before arming: a child whose recorded parent is not its parent (it was
    orphaned and adopted before it could arm) exits 1 at once; one whose parent is the recorded one runs on."""
    parent = os.getpid() if recorded == "its parent" else os.getppid()
    environment = {**os.environ, children.DEATH_SIGNAL_VARIABLE: f"{int(signal.SIGTERM)}:{parent}"}
    done = subprocess.run([sys.executable, "-c", "from core.queue.children import arm_from_environment; "
                           "arm_from_environment(); print('ran on')"],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    if recorded == "its parent":
        assert (done.returncode, done.stdout) == (0, "ran on\n"), done.stderr
    else:
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
