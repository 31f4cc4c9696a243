"""Small text helpers shared by the panels: sizes, ages, durations, bars, display states."""

from __future__ import annotations

import os

from rich.text import Text

STATE_STYLES = {
    "waiting": "dim", "reading": "cyan", "queued": "yellow", "merged": "green", "partial": "dark_orange",
    "rejected": "red", "idle": "green", "busy": "cyan", "starting": "yellow", "dead": "bold red",
    "stale": "red", "refused": "red",
}


def size(num: float, digits: int = 1) -> str:
    """Bytes in binary units (KiB = 1,024 bytes), as `ls -h` and `du -h` count them."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num < 1024 or unit == "GiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.{digits}f} {unit}"
        num /= 1024
    return f"{num:.{digits}f} GiB"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def ago(then: float | None, now: float) -> str:
    """Age relative to the snapshot's own clock, so a screen drawn from a fixed snapshot is fixed too."""
    if then is None:
        return "—"
    if now - then < 1:
        return "just now"
    return duration(now - then) + " ago"


def short_path(path: str) -> str:
    """A path relative to the current folder when it is under it, else as it is."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def bar(fraction: float, width: int = 8) -> Text:
    fraction = min(1.0, max(0.0, fraction))
    full = int(round(fraction * width))
    if not width:  # no room for a bar: the figure alone, coloured as the bar would be
        return Text(f"{fraction * 100:3.0f}%", "green" if fraction >= 1 else "cyan")
    return Text.assemble(("█" * full, "green"), ("░" * (width - full), "grey37"), f" {fraction * 100:3.0f}%")


def styled(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def file_state(report: dict) -> str:
    """The state an operator reads: a merged file that lost records to damage is "partial"."""
    state = report.get("state", "")
    if state == "streaming":
        return "reading"
    if state == "merged" and report.get("damage"):
        return "partial"
    return state


def number(value: int | float) -> str:
    return f"{value:,.0f}"
