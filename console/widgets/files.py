"""Files: every file seen, newest first, with its state, counts, progress and duration."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from console.format import bar, duration, file_state, number, size, styled
from console.keys import Key, bindings
from console.widgets.panel import Panel, PanelTable, row_key, sync_rows

REPLAYABLE = ("rejected", "partial")
ACTIVE = ("streaming", "queued")
WAITING = "wait:"  # the row key of a file in line for a reader (it has no report yet)
# Below this panel width the size column and the bar give way, so every column stays on screen.
WIDE = 66  # content width: the wide table needs 65 cells and the scrollbar
COLUMNS = ("file", "size", "state", "users", "rejected", "progress", "time")
COMPACT_COLUMNS = ("file", "state", "users", "rejected", "progress", "time")


class FilesPanel(Panel):
    TITLE = "4 Files"
    HELP = "Every file seen: the ones being read, then the ones in line, then the finished ones."
    KEYS = (
        Key("enter", "report", "Report", "open the file's report", palette="Open the selected file's report",
            bind=False),  # the table's enter (Open) selects the row, and the row opens the report
        Key("x", "replay", "Replay", "replay a rejected or partial (quarantined) file",
            palette="Replay the selected file"),
    )
    BINDINGS = bindings(KEYS)

    compact: bool | None = None

    def compose(self):
        # Duplicates, exact sizes and the reasons are in the report (enter).
        yield PanelTable(id="files-table")

    def _fit_columns(self) -> bool:
        compact = self.size.width < WIDE
        if compact != self.compact:
            self.compact = compact
            table = self.query_one(DataTable)
            table.clear(columns=True)
            table.add_columns(*(COMPACT_COLUMNS if compact else COLUMNS))
        return compact

    def show(self, snap) -> None:
        self.reports = {r["id"]: r for r in snap.files}
        compact = self._fit_columns()
        # Files at work first, then the ones in line for a reader, then the finished ones, newest first.
        active = [(r["id"], file_row(r, compact)) for r in snap.files if r.get("state") in ACTIVE]
        done = [(r["id"], file_row(r, compact)) for r in snap.files if r.get("state") not in ACTIVE]
        blank_size = () if compact else ("",)
        waiting = [(WAITING + name, (name, *blank_size, styled("waiting"), "", "", Text("in line", "dim"), ""))
                   for name in (snap.watcher.waiting_names if snap.watcher is not None else ())]
        rows = active + waiting + done
        sync_rows(self.query_one(DataTable), rows)
        merged = sum(1 for r in snap.files if r.get("state") == "merged")
        self.border_subtitle = f"{merged}/{len(snap.files)} merged"

    @property
    def selected(self) -> dict | None:
        key = row_key(self.query_one(DataTable))
        return getattr(self, "reports", {}).get(key)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_report()

    def action_report(self) -> None:
        from console.screens.report import FileReportScreen

        if (report := self.selected) is not None:
            self.app.push_screen(FileReportScreen(report))
        elif (key := row_key(self.query_one(DataTable)) or "").startswith(WAITING):
            self.app.notify(f"{key.removeprefix(WAITING)} is in line to be read: its report begins when its reading does")

    def action_replay(self) -> None:
        report = self.selected
        if report is None:
            return
        if file_state(report) not in REPLAYABLE:
            self.app.notify(f"{report.get('name')} is {file_state(report)}; only rejected or partial files replay",
                            severity="warning")
            return
        self.command(self.app.runtime.control.replay, report.get("name", ""))


def file_row(report: dict, compact: bool = False) -> tuple:
    state = file_state(report)
    total, done = report.get("batches_total", 0), report.get("batches_done", 0)
    width = 0 if compact else 8
    if state == "reading" and report.get("size"):
        progress = bar(min(1.0, report.get("read_bytes", 0) / report["size"]), width)
    elif state == "reading":
        progress = Text(f"read {number(report.get('records', 0))}", "cyan")
    elif total:
        progress = bar(done / total, width)
    elif state in ("merged", "partial"):
        progress = bar(1.0, width)
    else:
        progress = Text("—", "dim")
    sized = () if compact else (size(report.get("size", 0), digits=0),)
    took = duration(report.get("seconds")) if "seconds" in report else "…"
    return (report.get("name", report["id"][:12]), *sized, styled(state), number(report.get("accepted", 0)),
            number(report.get("rejected", 0)), progress, took)
