"""`?`: every key, global and per panel, read from the same declarations as the footer and the palette."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from console.keys import APP_KEYS, DASHBOARD_KEYS, help_rows
from console.screens.report import DetailScreen
from console.widgets.panel import FilterInput, Panel


def render_help(panels) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    grid.add_row(Text("Everywhere", "bold underline"), "")
    for key, text in help_rows((*APP_KEYS, *DASHBOARD_KEYS, *Panel.KEYS)):
        grid.add_row(key, text)
    for panel in panels:
        grid.add_row("", "")
        grid.add_row(Text(panel.TITLE, "bold underline"), Text(panel.HELP, "italic"))
        keys = panel.own_keys()
        if panel.query(FilterInput):  # the panel's filter box brings its own key
            keys += FilterInput.KEYS
        for key, text in help_rows(keys):
            grid.add_row(key, text)
    return grid


class HelpScreen(DetailScreen):
    def __init__(self, panels) -> None:
        super().__init__("Help", render_help(panels))
