"""Queue: jobs per RQ registry, users merged per second as a sparkline, the backlog and its ETA."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Sparkline, Static

from console.format import duration, number
from console.widgets.panel import Panel, show_content
from core.ops.status import REGISTRIES

COLOURS = {"queued": "yellow", "started": "cyan", "finished": "green", "failed": "red"}


class QueuePanel(Panel):
    TITLE = "2 Queue"
    HELP = "Jobs in each RQ registry, merge rate (users/s) over the last minute, backlog and ETA."
    can_focus = True

    def compose(self):
        yield Static("", id="queue-counts")
        yield Sparkline([0.0], id="queue-spark")
        yield Static("", id="queue-rate")

    def focus_panel(self) -> None:
        self.focus()

    def show(self, snap) -> None:
        shown = self.query_one("#queue-counts", Static)
        show_content(shown, render_counts(snap.queue, shown.content_region.width))
        self.query_one("#queue-spark", Sparkline).data = list(snap.rate_history) or [0.0]
        show_content(self.query_one("#queue-rate", Static), render_rate(snap))


def render_counts(queue: dict, width: int) -> Text:
    """Each registry's name and count, wrapped between registries only (never "canceled" above its count)."""
    counts, used = Text(), 0
    for name in REGISTRIES:
        value = queue.get(name, 0)
        shown = number(value)
        item = f"{name} {shown}"
        if used and width > 0 and used + 2 + len(item) > width:
            counts.append("\n")
            used = 0
        elif used:
            counts.append("  ")
            used += 2
        counts.append(f"{name} ", "bold" if value else "dim")
        counts.append(shown, COLOURS.get(name, "") if value else "dim")
        used += len(item)
    return counts


def render_rate(snap) -> Text:
    if snap.backlog == 0:
        eta = "—"
    elif snap.eta is None:
        eta = "∞ (nothing is being merged)"
    else:
        eta = duration(snap.eta)
    trend = ""
    if snap.backlog_trend > 0:
        trend = f" ▲{snap.backlog_trend}"
    elif snap.backlog_trend < 0:
        trend = f" ▼{-snap.backlog_trend}"
    return Text.assemble(
        ("merged ", "bold"), (f"{number(snap.users)} users", "green"),
        f"  {snap.users_rate:,.0f} users/s  {snap.jobs_rate:.1f} jobs/s\n",
        ("backlog ", "bold"), f"{number(snap.backlog)} jobs{trend}  ", ("ETA ", "bold"), eta,
    )
