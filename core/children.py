"""Start child processes that cannot outlive this one, however it ends.

Every process the console starts (the embedded redis-server, worker processes) goes through `spawn`.
A clean stop is the runtime's job; this module covers the ends where the console cannot act (SIGKILL,
a crash of the interpreter): each child asks the kernel for a parent-death signal (Linux
prctl(PR_SET_PDEATHSIG)), so it gets SIGTERM, its own clean shutdown, the moment we die.

The kernel sends that signal when the *thread* that forked the child exits, not the process. Children
are started from all kinds of short-lived threads (the TUI's boot worker, restart timers), so every fork
happens on one long-lived thread of this module that lives as long as the process: only the death of
the process ends it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
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


def _die_with(parent: int, signum: int):
    """preexec_fn: runs in the child between fork and exec (only async-signal-safe calls here)."""

    def arm() -> None:
        if _libc is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal would ever come.
        if os.getppid() != parent:
            os._exit(1)

    return arm


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
    popen_kwargs["preexec_fn"] = _die_with(os.getpid(), death_signal)
    return _SPAWNER.submit(list(args), popen_kwargs)
