"""Event log: what happened, newest at the bottom; `/` filters it, `f` pauses and resumes autoscroll."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import RichLog

from console.keys import Key, bindings
from console.widgets.panel import FilterInput, Panel

LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "info": "", "debug": "dim"}
KEEP = 1000


class EventsPanel(Panel):
    TITLE = "7 Events"
    HELP = "What happened, newest at the bottom."
    KEYS = (
        Key("slash", "filter", "Filter", "filter the log", palette="Filter the event log"),
        Key("f", "follow", "Autoscroll", "pause / resume autoscroll", palette="Pause / resume event autoscroll"),
    )
    BINDINGS = bindings(KEYS)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.needle = ""
        self.follow = True
        self.last = None
        self.events: list = []

    def compose(self):
        yield FilterInput(placeholder="filter events, enter to apply", id="events-filter")
        yield RichLog(id="events-log", max_lines=KEEP, wrap=False, markup=False)

    def on_mount(self) -> None:
        self.query_one(FilterInput).display = False
        self._subtitle()

    def focus_panel(self) -> None:
        self.query_one(RichLog).focus()

    def show(self, snap) -> None:
        events = list(snap.events)
        new = events
        if self.last is not None:
            # Events are immutable objects in a bounded deque: the new ones are those after the last drawn.
            index = next((i for i in range(len(events) - 1, -1, -1) if events[i] is self.last), None)
            new = events[index + 1:] if index is not None else events
        if events:
            self.last = events[-1]
        self.events = (self.events + new)[-KEEP:]
        log = self.query_one(RichLog)
        for event in new:
            if self._matches(event):
                log.write(line(event), scroll_end=self.follow)

    def _matches(self, event) -> bool:
        return not self.needle or self.needle in event.text.lower() or self.needle == event.level

    def _redraw(self) -> None:
        log = self.query_one(RichLog)
        log.clear()
        for event in self.events:
            if self._matches(event):
                log.write(line(event), scroll_end=self.follow)
        self._subtitle()

    def _subtitle(self) -> None:
        parts = ["autoscroll on" if self.follow else "autoscroll PAUSED"]
        if self.needle:
            parts.append(f"filter “{self.needle}”")
        self.border_subtitle = " · ".join(parts)

    def action_follow(self) -> None:
        self.follow = not self.follow
        log = self.query_one(RichLog)
        log.auto_scroll = self.follow
        if self.follow:
            log.scroll_end(animate=False)
        self._subtitle()

    def action_filter(self) -> None:
        box = self.query_one(FilterInput)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: FilterInput.Submitted) -> None:
        event.stop()
        self.needle = event.value.strip().lower()
        self._redraw()
        self.focus_panel()


def line(event) -> Text:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.at))
    return Text.assemble((stamp + " ", "dim"), (f"{event.level:<7} ", LEVEL_STYLES.get(event.level, "")),
                         (event.text, LEVEL_STYLES.get(event.level, "")))
