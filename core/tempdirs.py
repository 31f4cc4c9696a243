"""Private folders in the temp folder, for unix sockets: the console's private gRPC socket (its own watcher talks
to it, no outside caller can) and, when the data folder's path is too long for one, the embedded Redis's socket.

A normal stop removes them; a console killed with SIGKILL cannot. A folder's name carries its kind and the pid of
the process that made it, so the next console to start removes the folders of processes that are gone, and only
those.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from core.processes import running

KINDS = ("grpc", "redis")


def prefix(kind: str) -> str:
    return f"swordsec-{kind}-"


def make_private_dir(kind: str) -> Path:
    """A new folder (mode 0700) for this process, after removing the ones of its kind that dead processes left."""
    sweep_stale(kind)
    return Path(tempfile.mkdtemp(prefix=f"{prefix(kind)}{os.getpid()}-"))


def sweep_stale(kind: str, folder: Path | None = None) -> list[Path]:
    """Remove the folders of this kind whose process is gone: named by this scheme, owned by this user, a real
    folder (never a link), and no process with that pid running (a zombie is not). A pid reused since only keeps a
    folder longer."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of private folder: {kind!r}")
    ours = re.compile(re.escape(prefix(kind)) + r"(\d+)-[A-Za-z0-9_]+")
    folder = Path(folder or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = ours.fullmatch(entry.name)
        if not match or int(match[1]) == os.getpid():
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if not running(int(match[1])):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed
