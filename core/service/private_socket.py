"""The folder of the console's private gRPC socket (its own watcher talks to it, no outside caller can).

A normal stop removes it; a console killed with SIGKILL cannot. The folder's name carries the pid of the process
that made it, so the next console to start removes the folders of processes that are gone, and only those.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

PREFIX = "swordsec-grpc-"
_OURS = re.compile(re.escape(PREFIX) + r"(\d+)-[A-Za-z0-9_]+")


def make_private_dir() -> Path:
    """A new folder (mode 0700) for this process's socket, after removing the ones dead processes left."""
    sweep_stale()
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def sweep_stale(folder: Path | None = None) -> list[Path]:
    """Remove our socket folders whose process is gone: named by this scheme, owned by this user, a real folder
    (never a link), and no process with that pid alive. A pid reused since only keeps a folder a while longer."""
    folder = Path(folder or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _OURS.fullmatch(entry.name)
        if not match or int(match[1]) == os.getpid():
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if not _alive(int(match[1])):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed
