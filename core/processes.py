"""Whether a process of this machine is still running, by pid: shared by the embedded Redis's stale-server stop
(core/storage/broker.py), the sweep of dead consoles' socket folders (core/tempdirs.py) and of their split writes'
files (core/storage/splitwrite.py)."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may never be reaped where PID 1 does not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
