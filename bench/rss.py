"""Sample the resident memory of a process tree from /proc, and keep the peak of each process."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Peak:
    pid: int
    role: str
    cmdline: str
    rss: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may hold spaces or parentheses: fields after the last ')' are fixed.
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(root: int) -> list[int]:
    children, found, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class TreeSampler:
    """Every `interval` seconds, the RSS of the root and all its descendants (forked work-horses too)."""

    def __init__(self, root: int, interval: float = 0.1):
        self.root = root
        self.interval = interval
        self.peaks: dict[int, Peak] = {}
        self.peak_total = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> "TreeSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        now, total = time.monotonic(), 0
        for pid in tree(self.root):
            rss = rss_bytes(pid)
            if not rss:  # gone, or a zombie not yet reaped
                continue
            total += rss
            peak = self.peaks.get(pid)
            if peak is None:
                peak = self.peaks[pid] = Peak(pid, self._role(pid), _cmdline(pid), first_seen=now)
            peak.rss = max(peak.rss, rss)
            peak.last_seen = now
        self.peak_total = max(self.peak_total, total)
        self.samples += 1

    def _role(self, pid: int) -> str:
        if pid == self.root:
            return "console"
        cmdline = _cmdline(pid)
        if "redis-server" in cmdline:
            return "redis-server"
        if "worker_process" in cmdline:
            parent = self.peaks.get(_ppid(pid))
            # A forked work-horse carries its worker's command line; its parent tells them apart.
            if parent is not None and parent.role.startswith("worker"):
                return "work-horse"
            return "worker"
        return cmdline.split(" ", 1)[0].rsplit("/", 1)[-1] or "?"


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        return int(stat[stat.rfind(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return -1
