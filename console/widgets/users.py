"""Merged users: what all_users.json holds, and a paged table of the store that stays fast at any size.

The table never holds more than one page: a page is fetched from Redis (store.users_page) in a
thread when the operator moves or when merges land. `/` filters on any field by scanning the store
in a thread; the matches (capped) are then paged locally.
"""

from __future__ import annotations

import orjson
from textual import work
from textual.coordinate import Coordinate
from textual.widgets import DataTable, Static

from console.format import ago, number, short_path
from console.keys import Key, bindings
from console.widgets.panel import FilterInput, Panel, show_content
from core.config import USER_FIELDS

PAGE = 100
# Fixed widths: columns sized to each page's content would jump while paging.
WIDTHS = {"id": 6, "first_name": 12, "last_name": 14, "email": 28, "gender": 7, "ip_address": 15,
          "user_name": 14, "agent": 24, "country": 14}
MAX_MATCHES = 10_000
# While merges keep landing the page changes at every refresh, faster than anyone reads it, and redrawing its 900
# cells is the costliest part of a refresh: it follows at most this often then, and at once when the backlog empties.
BUSY_PAGE_EVERY = 5.0


class UsersPanel(Panel):
    TITLE = "5 Merged users"
    HELP = "What all_users.json holds, a page at a time, read from the store."
    KEYS = (
        Key("right_square_bracket", "page(1)", "Next page", "next page", palette="Next page of users"),
        Key("left_square_bracket", "page(-1)", "Prev page", "previous page", palette="Previous page of users"),
        Key("g", "first", "First", "first page", show=False),
        Key("G", "last", "Last", "last page", show=False),
        Key("slash", "filter", "Filter", "filter on any field", palette="Filter merged users"),
    )
    BINDINGS = bindings(KEYS)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.start = 0
        self.total = 0
        self.query_text = ""
        self.matches: list[dict] | None = None
        self.shown_version: tuple | None = None
        self.loaded_at = 0.0  # snapshot time of the last page load

    def compose(self):
        yield Static("", id="users-info")
        yield FilterInput(placeholder="filter users (any field), enter to apply", id="users-filter")
        table = DataTable(id="users-table", cursor_type="row", zebra_stripes=True)
        for field in USER_FIELDS:
            table.add_column(field, width=WIDTHS.get(field, 12), key=field)
        yield table

    def on_mount(self) -> None:
        self.query_one(FilterInput).display = False

    def show(self, snap) -> None:
        self.total = snap.users
        export = snap.export
        # count and age first: a long path is what gets cut in a narrow panel
        # An export that failed before the first one was recorded carries only its error (for the doctor).
        written = (f"{number(export['count'])} users written {ago(export['written_at'], snap.taken_at)} to "
                   f"{short_path(export['path'])}") if "count" in export else \
            f"{short_path(snap.output_path)} not written yet"
        show_content(self.query_one("#users-info", Static), written)
        self._render_subtitle()  # the count now; the page itself follows when its fetch returns
        key = (snap.users, export.get("version"))
        due = snap.backlog == 0 or snap.taken_at - self.loaded_at >= BUSY_PAGE_EVERY
        if key != self.shown_version and self.matches is None and self._drawn_now and due:
            self.shown_version, self.loaded_at = key, snap.taken_at
            self.load_page()

    @property
    def _drawn_now(self) -> bool:
        return self.display and self.screen is self.app.screen

    def _render_subtitle(self) -> None:
        size = len(self.matches) if self.matches is not None else self.total
        end = min(self.start + PAGE, size)
        what = f"{number(size)} match “{self.query_text}”" if self.matches is not None else f"{number(size)} users"
        capped = " (first 10,000)" if self.matches is not None and size >= MAX_MATCHES else ""
        self.border_subtitle = f"{number(self.start + 1 if size else 0)}–{number(end)} of {what}{capped}"

    def _fill(self, users: list[dict]) -> None:
        table = self.query_one(DataTable)
        rows = [tuple(str(user.get(field, "")) for field in USER_FIELDS) for user in users]
        if len(rows) == table.row_count:
            # A page of the same length (a refresh while merges land): change only the cells that changed.
            # Columns have fixed widths, so nothing is measured again; a rebuild measured 900 cells a second.
            for index, cells in enumerate(rows):
                old = table.get_row_at(index)
                for column, (before, after) in enumerate(zip(old, cells)):
                    if before != after:
                        table.update_cell_at(Coordinate(index, column), after)
        else:
            row = table.cursor_row
            table.clear()
            for cells in rows:
                table.add_row(*cells)
            if rows:
                table.move_cursor(row=min(row, len(rows) - 1), animate=False)
        self._render_subtitle()

    # exit_on_error=False: a page that cannot be read (Redis restarting) is read again at the next refresh;
    # it must not end the console.
    @work(thread=True, exclusive=True, group="users-page", exit_on_error=False)
    def load_page(self) -> None:
        if self.matches is not None:
            users = self.matches[self.start:self.start + PAGE]
        else:
            users = self.app.runtime.store.users_page(self.start, PAGE)
        self.app.call_from_thread(self._fill, users)

    @work(thread=True, exclusive=True, group="users-page", exit_on_error=False)
    def run_filter(self, text: str) -> None:
        needle = text.lower()
        raw_needle = needle.encode()
        matches = []
        for raw in self.app.runtime.store.iter_users():
            # A cheap byte test first; decoding only candidates keeps a 100k-user scan well under a second.
            if raw_needle not in raw.lower():
                continue
            user = orjson.loads(raw)
            if any(needle in str(value).lower() for value in user.values()):
                matches.append(user)
                if len(matches) >= MAX_MATCHES:
                    break
        self.app.call_from_thread(self._filtered, text, matches)

    def _filtered(self, text: str, matches: list[dict]) -> None:
        self.query_text, self.matches, self.start = text, matches, 0
        self._fill(matches[:PAGE])

    def _row_total(self) -> int:
        return len(self.matches) if self.matches is not None else self.total

    def action_page(self, delta: int) -> None:
        start = self.start + delta * PAGE
        if 0 <= start < max(self._row_total(), 1):
            self.start = start
            self.load_page()

    def action_first(self) -> None:
        self.start = 0
        self.load_page()

    def action_last(self) -> None:
        self.start = max(0, (self._row_total() - 1) // PAGE * PAGE)
        self.load_page()

    def action_filter(self) -> None:
        box = self.query_one(FilterInput)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: FilterInput.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if text:
            self.query_one(DataTable).focus()
            self.run_filter(text)
        else:
            self.query_text, self.matches, self.start, self.shown_version = "", None, 0, None
            self.load_page()
