"""`?`: every key, global and per panel, generated from the bindings so it cannot drift from them."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.binding import Binding

from console.screens.report import DetailScreen

GLOBAL = [
    ("q", "quit (asks first when work is in flight)"),
    ("?", "this help"),
    ("ctrl+p", "command palette: every action, and themes"),
    ("space", "pause / resume live refresh"),
    ("p", "pause / resume the watcher"),
    ("+ / -", "add / remove a worker"),
    ("1 … 7", "focus a panel"),
    ("tab", "next panel"),
    ("m", "maximise / restore the focused panel"),
    ("h / H", "hide the focused panel / show all panels"),
    ("/", "filter the focused table or log"),
    ("enter", "details: a file's report, a job's traceback"),
]


def key_name(binding: Binding) -> str:
    names = {"right_square_bracket": "]", "left_square_bracket": "[", "slash": "/", "enter": "enter"}
    return binding.key_display or names.get(binding.key, binding.key)


def render_help(panels) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    grid.add_row(Text("Everywhere", "bold underline"), "")
    for key, text in GLOBAL:
        grid.add_row(key, text)
    for panel in panels:
        grid.add_row("", "")
        grid.add_row(Text(panel.TITLE, "bold underline"), Text(panel.HELP, "italic"))
        if panel.ENTER:
            grid.add_row("enter", panel.ENTER.lower())
        for binding in panel.BINDINGS:
            if isinstance(binding, Binding) and binding.action != "toggle_maximize":
                grid.add_row(key_name(binding), binding.description or binding.action)
    return grid


class HelpScreen(DetailScreen):
    def __init__(self, panels) -> None:
        super().__init__("Help", render_help(panels))
