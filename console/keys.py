"""Every key of the console, declared once. The footer (Textual bindings), the `?` help and the command
palette are all derived from these declarations, so they cannot drift apart.

A `Key` belongs to the node whose action it runs: the app (`APP_KEYS`), the dashboard screen
(`DASHBOARD_KEYS`), the base panel (`Panel.KEYS`: every panel has it, and the palette runs it on the
focused panel) or one panel class (`KEYS` on the class).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from textual.binding import Binding

# How `?` and the palette write a key whose Textual name is a word.
KEY_NAMES = {"question_mark": "?", "plus": "+", "minus": "-", "space": "space", "slash": "/",
             "right_square_bracket": "]", "left_square_bracket": "[", "escape": "escape", "enter": "enter"}


@dataclass(frozen=True)
class Key:
    key: str  # Textual key name
    action: str  # action on the node that declares the key
    label: str  # the footer's word
    help: str = ""  # the line in `?`; "" leaves the key out of the help (an alias)
    palette: str = ""  # the command palette's title; "" leaves it out of the palette
    show: bool = True  # in the footer
    priority: bool = False
    # False: documented here but bound by a widget of its own (Textual's ctrl+p and tab, a table's enter).
    bind: bool = True
    display: str = ""  # how the help writes the key when it stands for several ("1 … 7")

    @property
    def shown(self) -> str:
        return self.display or KEY_NAMES.get(self.key, self.key)

    def binding(self) -> Binding:
        return Binding(self.key, self.action, self.label, show=self.show, priority=self.priority)


def bindings(keys: Iterable[Key]) -> list[Binding]:
    """Textual BINDINGS for a class, from its keys."""
    return [key.binding() for key in keys if key.bind]


APP_KEYS = (
    Key("q", "quit", "Quit", "quit (asks first when work is in flight)", palette="Quit"),
    Key("ctrl+q", "quit", "Quit", show=False, priority=True),
    Key("question_mark", "help", "Help", "this help: every key, global and per panel", palette="Help"),
    Key("ctrl+p", "command_palette", "Palette", "command palette: every action, and themes", bind=False),
    Key("space", "toggle_refresh", "Live", "pause / resume live refresh (freeze the screen to read it)",
        palette="Pause / resume live refresh"),
    Key("p", "toggle_watcher", "Watcher", "pause / resume the watcher (reading dropped files)",
        palette="Pause / resume the watcher"),
    Key("plus", "scale(1)", "+Worker", "add a worker", palette="Add a worker"),
    Key("minus", "scale(-1)", "-Worker", "remove a worker", palette="Remove a worker"),
    Key("tab", "focus_next", "Next", "next panel", bind=False),
)

DASHBOARD_KEYS = (
    *(Key(str(n), f"focus_panel({n - 1})", f"Panel {n}", "focus a panel" if n == 1 else "", show=False,
          display="1 … 7") for n in range(1, 8)),
    Key("h", "hide_panel", "Hide", "hide the focused panel", show=False),
    Key("H", "show_all", "Show all", "show all panels (undo hide)", palette="Show all panels", show=False),
)


def help_rows(keys: Iterable[Key]) -> list[tuple[str, str]]:
    """(key, what it does) for the `?` screen, aliases left out."""
    return [(key.shown, key.help) for key in keys if key.help]
