"""The frame every dashboard panel shares: a titled box that can be focused, maximised and hidden."""

from __future__ import annotations

import weakref

from rich.cells import cell_len
from rich.text import Text
from textual.containers import Vertical
from textual.css.scalar import Unit
from textual.widgets import DataTable, Input, Static

from console.keys import Key, bindings


class Panel(Vertical):
    """A dashboard panel. Subclasses draw a core.ops.status snapshot in `show()` and own their keys: a subclass
    declares `KEYS` (console.keys) and derives `BINDINGS = bindings(KEYS)`; the help and the palette read KEYS."""

    ALLOW_MAXIMIZE = True
    TITLE = ""
    HELP = ""  # what the panel shows, for the help; its keys say the rest
    # Every panel's key; the palette runs it on the focused panel through the app's action of the same name.
    KEYS: tuple[Key, ...] = (Key("m", "toggle_maximize", "Max", "maximise / restore the focused panel",
                                 palette="Maximise / restore the focused panel"),)
    BINDINGS = bindings(KEYS)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = self.TITLE

    @classmethod
    def own_keys(cls) -> tuple[Key, ...]:
        """The keys this panel class declares itself (not the ones every panel shares)."""
        return vars(cls).get("KEYS", ()) if cls is not Panel else ()

    def show(self, snap) -> None:
        """Draw a snapshot; called on the UI thread for every fresh one."""

    def focus_panel(self) -> None:
        """Focus the panel's main widget (number keys, the palette)."""
        target = next(iter(self.query(DataTable)), None) or self
        target.focus()

    def action_toggle_maximize(self) -> None:
        screen = self.screen
        if screen.maximized is not None:
            screen.minimize()
        else:
            screen.maximize(self, container=False)

    def command(self, function, *args, confirm: str | None = None, action: str = "Do it") -> None:
        self.app.run_command(function, *args, confirm=confirm, action=action)


def row_key(table: DataTable) -> str | None:
    """The key of the row under the cursor, or None for an empty table."""
    if table.row_count == 0:
        return None
    try:
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    except Exception:  # the cursor sits past rows removed by the last refresh
        return None


def sync_rows(table: DataTable, rows: list[tuple[str, tuple]]) -> None:
    """Make the table show `rows` (key, cells) in that order, keeping the cursor on the same key.

    Rebuilding only when keys or order change, and otherwise updating changed cells, keeps a
    refresh per second cheap and stops the cursor from jumping while the operator reads.
    """
    keys = [key for key, _ in rows]
    current = [k.value for k in table.rows]
    if keys != current:
        selected = row_key(table)
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if selected in keys:
            table.move_cursor(row=keys.index(selected), animate=False)
        return
    columns = list(table.columns)
    for key, cells in rows:
        old = table.get_row(key)
        for column, (before, after) in zip(columns, zip(old, cells)):
            if str(before) != str(after):
                table.update_cell(key, column, after)


# What show_content last gave each widget, and the height it said that takes; weak: a removed widget leaves.
_SHOWN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def show_content(static: Static, content, height: int | None = None) -> None:
    """Static.update without the costs that buy nothing: no redraw when the text shown is the same, and no layout
    pass when the widget's height cannot change. A layout pass reflows the whole screen (tens of ms on a loaded
    machine, measured with py-spy during a 1,000,000-user ingest), and every panel's text changes every second.

    height: the lines `content` takes whatever the width (the caller knows: a grid whose columns never wrap);
    for text it is its line count when every line fits the widget's width, else unknown (a layout pass).
    """
    if isinstance(content, str):
        content = Text(content)
    shown, shown_height = _SHOWN.get(static, (None, None))
    if isinstance(content, Text) and content == shown:
        return
    if height is None and isinstance(content, Text):
        lines = content.plain.split("\n")
        width = static.content_region.width
        if width > 0 and all(cell_len(line) <= width for line in lines):
            height = len(lines)
    fixed = (rule := static.styles.height) is not None and rule.unit == Unit.CELLS
    static.update(content, layout=not fixed and (height is None or height != shown_height))
    _SHOWN[static] = (content, height)


class PanelTable(DataTable):
    """A row-cursor table whose enter (open the row's details) is shown in the footer."""

    KEYS = (Key("enter", "select_cursor", "Open"),)  # the panel's own enter Key says what Open does
    BINDINGS = bindings(KEYS)

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)


class FilterInput(Input):
    """The `/` filter box of a table or log: enter applies, escape clears and closes."""

    KEYS = (Key("escape", "close", "Clear filter", "clear the filter and close it"),)
    BINDINGS = bindings(KEYS)

    def action_close(self) -> None:
        self.value = ""
        self.post_message(self.Submitted(self, ""))
        self.display = False
        if self.parent is not None:
            self.parent.focus_panel()
