"""Start child processes that cannot outlive this one, however it ends.

Every process the console starts (the embedded redis-server, worker processes) goes through `spawn`.
A clean stop is the runtime's job; this module covers the ends where the console cannot act (SIGKILL,
a crash of the interpreter): each child asks the kernel for a parent-death signal (Linux
prctl(PR_SET_PDEATHSIG)), so it gets SIGTERM, its own clean shutdown, the moment we die.

No Python runs in the child between fork and exec (a preexec_fn there, in a process full of gRPC and
Redis threads, crashed a child with a segmentation fault now and then): the signal is armed by
util-linux's `setpriv --pdeathsig SIG -- COMMAND` when the machine has it, and otherwise by our own Python
children themselves as they start (`arm_from_environment`, called by core.queue.worker_process); a redis-server
started without setpriv is then stopped by the next start instead (core.storage.broker).

Either way there is an instant between fork and the arming in which our death sends nothing. Our Python
children close it themselves: each is told our pid (on both paths) and, once armed, leaves at once if its
parent is no longer us. A test once killed its parent in that instant, one run in ten.

The kernel sends that signal when the *thread* that forked the child exits, not the process. Children
are started from all kinds of short-lived threads (the TUI's boot worker, restart timers), so every fork
happens on one long-lived thread of this module that lives as long as the process: only the death of
the process ends it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future

PR_SET_PDEATHSIG = 1

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # no libc to ask: children fall back to watching their parent themselves
        _libc = None


# Our own Python children read this to arm themselves when setpriv is missing: "<signal>:<parent pid>".
DEATH_SIGNAL_VARIABLE = "SWORDSEC_DEATH_SIGNAL"


@functools.cache
def _setpriv() -> str | None:
    """util-linux's setpriv, when it knows --pdeathsig (2.33 and later)."""
    found = shutil.which("setpriv")
    if found is None:
        return None
    try:
        usage = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return found if "--pdeathsig" in usage else None


def arm_from_environment() -> None:
    """In a child we started: ask for the parent-death signal (again, where setpriv armed it already), then leave
    at once if the parent already died (before the arming, whoever did it, its death sent nothing)."""
    value = os.environ.pop(DEATH_SIGNAL_VARIABLE, "")
    signum, _, parent = value.partition(":")
    if not (signum.isdigit() and parent.isdigit()):
        return
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if os.getppid() != int(parent):
        os._exit(1)


def dying_with_us(args: list[str], death_signal: int, environment: dict[str, str]) -> list[str]:
    """The command line that runs `args` with `death_signal` armed for our death, where setpriv can arm it; and
    in `environment`, what our own Python children need to arm it, or to see they were orphaned before it was."""
    environment[DEATH_SIGNAL_VARIABLE] = f"{int(death_signal)}:{os.getpid()}"
    setpriv = _setpriv()
    if setpriv is None:
        return list(args)
    return [setpriv, f"--pdeathsig={signal.Signals(death_signal).name}", "--", *args]


class _Spawner:
    """One thread that lives as long as the process and does every fork."""

    def __init__(self):
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _run(self) -> None:
        while True:
            future, args, kwargs = self._requests.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(subprocess.Popen(args, **kwargs))
            except BaseException as error:  # noqa: BLE001 - handed to the caller, who decides
                future.set_exception(error)

    def submit(self, args, kwargs) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # daemon: it must not keep a finished program alive; it dies with the process, as wanted.
                self._thread = threading.Thread(target=self._run, name="child-spawner", daemon=True)
                self._thread.start()
        if threading.current_thread() is self._thread:
            return subprocess.Popen(args, **kwargs)
        future: Future = Future()
        self._requests.put((future, args, kwargs))
        return future.result()


_SPAWNER = _Spawner()


def spawn(args: list[str], *, death_signal: int = signal.SIGTERM, **popen_kwargs) -> subprocess.Popen:
    """subprocess.Popen(args, **popen_kwargs) whose child gets `death_signal` when this process dies.

    The child also gets a process group of its own, so a ctrl+c or a terminal hang-up reaches only the
    console, which then stops its children in order (workers finish their job, Redis syncs its AOF).
    """
    if not popen_kwargs.get("start_new_session"):
        popen_kwargs.setdefault("process_group", 0)
    env = dict(popen_kwargs.get("env") or os.environ)
    args = dying_with_us(args, death_signal, env)
    popen_kwargs["env"] = env
    return _SPAWNER.submit(args, popen_kwargs)
