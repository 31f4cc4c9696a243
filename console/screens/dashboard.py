"""The one dashboard screen: seven panels in a grid (a scrolling column in narrow terminals)."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Grid, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from console.format import number
from console.keys import DASHBOARD_KEYS, bindings
from console.widgets.events import EventsPanel
from console.widgets.failed import FailedPanel
from console.widgets.files import FilesPanel
from console.widgets.panel import Panel, show_content
from console.widgets.queue import QueuePanel
from console.widgets.services import ServicesPanel
from console.widgets.users import UsersPanel
from console.widgets.workers import WorkersPanel

PANELS = (ServicesPanel, QueuePanel, WorkersPanel, FilesPanel, UsersPanel, FailedPanel, EventsPanel)
NARROW = 110


class StatusLine(Static):
    """Top line: the product, whether the screen is live, and the headline numbers."""

    def draw(self, snap, paused: bool, interval: float, pulse=None) -> None:
        """pulse: a core.ops.snapshot.Pulse; its users and backlog stand in for the snapshot's when newer."""
        live = Text("⏸ refresh PAUSED (space)", "bold yellow") if paused else Text(f"● live · {interval:g} s", "green")
        text = Text.assemble(("swordsec-console ", "bold"), live)
        if snap is not None and (pipeline := snap.pipeline) is not None:  # first: a narrow screen cuts the end
            text.append(f" · attached to {pipeline.namespace} on {pipeline.host} (pid {pipeline.pid})"
                        if pipeline.alive else f" · attached to {pipeline.namespace}: NO PIPELINE RUNS IT",
                        "cyan" if pipeline.alive else "bold red")
        if snap is not None:
            watcher = ""
            if snap.watcher is not None:
                watcher = "watcher PAUSED" if snap.watcher.paused else "watching"
            users, backlog = snap.users, snap.backlog
            if pulse is not None and pulse.taken_at > snap.taken_at:
                users, backlog = pulse.users, pulse.backlog
            text.append(f" · {number(users)} users · {snap.alive_workers}/{snap.desired_workers} workers · "
                        f"backlog {number(backlog)} · {watcher}")
        else:
            text.append(" · starting…")
        show_content(self, text)


class DashboardScreen(Screen):
    BINDINGS = bindings(DASHBOARD_KEYS)

    def compose(self):
        yield StatusLine(id="statusline")
        with VerticalScroll(id="board"):
            with Grid(id="panels"):
                for index, panel in enumerate(PANELS):
                    yield panel(id=f"panel-{index + 1}")
        yield Footer()

    @property
    def panels(self) -> list[Panel]:
        return list(self.query(Panel))

    def on_mount(self) -> None:
        self.query_one("#panel-4", Panel).focus_panel()
        self.query_one(StatusLine).draw(None, False, self.app.interval)

    def on_resize(self, event) -> None:
        self.set_class(event.size.width < NARROW, "-narrow")

    def show(self, snap) -> None:
        for panel in self.panels:
            panel.show(snap)

    def draw_status(self, snap, paused: bool, interval: float, pulse=None) -> None:
        for line in self.query(StatusLine):  # none yet while the screen is still composing
            line.draw(snap, paused, interval, pulse)

    def action_focus_panel(self, index: int) -> None:
        panel = self.panels[index]
        panel.display = True
        panel.focus_panel()
        # After the refresh: a panel just shown again has no place in the layout before it.
        self.call_after_refresh(panel.scroll_visible, animate=False, top=True)

    def focused_panel(self) -> Panel | None:
        node = self.focused
        while node is not None and not isinstance(node, Panel):
            node = node.parent
        return node

    def action_hide_panel(self) -> None:
        panel = self.focused_panel()
        if panel is not None and sum(1 for p in self.panels if p.display) > 1:
            panel.display = False
            self.focus_next()

    def action_show_all(self) -> None:
        for panel in self.panels:
            panel.display = True
