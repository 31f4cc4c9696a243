"""An opt-in timeline of the pipeline, for bench/drop_latency.py --trace: where a drop's time goes.

SWORDSEC_TRACE=FILE makes every process of an instance (console, workers: they inherit the environment)
append one line per step to FILE: "<CLOCK_MONOTONIC ns> <pid> <step> <detail>". CLOCK_MONOTONIC is one
clock for every process of the machine, so the lines of all of them make one timeline. Each line is one
O_APPEND write, whole even with several processes writing. Unset (always, outside the bench), mark()
costs a call and a comparison: callers pass the detail's parts as they are, and only a trace formats them.
"""

from __future__ import annotations

import os
import time

_PATH = os.environ.get("SWORDSEC_TRACE") or None
_fd: int | None = None


def mark(step: str, *detail) -> None:
    """One line: the step and its detail, each part as str() gives it (a set of buckets: its size)."""
    if _PATH is None:
        return
    global _fd
    try:
        if _fd is None:
            _fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        parts = " ".join(str(len(part) if isinstance(part, set) else part) for part in detail)
        os.write(_fd, f"{time.monotonic_ns()} {os.getpid()} {step} {parts}\n".encode())
    except OSError:  # a bench aid: never the pipeline's failure
        pass
