"""Detail screens: a file's report (counts, damage, rejection reasons) and a failed job's traceback."""

from __future__ import annotations

import time

from rich.table import Table
from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from console.format import duration, file_state, number, size, styled


class DetailScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,enter", "dismiss", "Close")]

    def __init__(self, title: str, body) -> None:
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self):
        with VerticalScroll(id="detail") as box:
            box.border_title = self.title_text
            box.border_subtitle = "escape closes"
            yield Static(self.body, id="detail-body")

    def action_dismiss(self) -> None:
        self.dismiss(None)


class FileReportScreen(DetailScreen):
    def __init__(self, report: dict) -> None:
        super().__init__(f"Report: {report.get('name', report['id'])}", render_report(report))


class TracebackScreen(DetailScreen):
    def __init__(self, job) -> None:
        body = Text.assemble((f"{job.description}\n\n", "bold"), job.exc_info or "(no traceback was stored)")
        super().__init__(f"Failed job {job.id}", body)


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp)) if stamp else "—"


def render_report(report: dict) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    state = file_state(report)
    rows = [
        ("state", styled(state)),
        ("path", report.get("path", "—")),
        ("size", size(report.get("size", 0))),
        ("fingerprint", report["id"]),
        ("records read", number(report.get("records", 0))),
        ("accepted", number(report.get("accepted", 0))),
        ("rejected", number(report.get("rejected", 0))),
        ("new / updated / duplicate", f"{number(report.get('new', 0))} / {number(report.get('updated', 0))} / "
                                      f"{number(report.get('duplicate', 0))}"),
        ("batches merged", f"{report.get('batches_done', 0)} of {report.get('batches_total', 0) or '?'}"),
        ("started", _when(report.get("started_at"))),
        ("read in", duration(report.get("seconds"))),
    ]
    for name, value in rows:
        grid.add_row(name, value)
    damage = report.get("damage")
    grid.add_row("damage", Text(damage, "dark_orange") if damage else Text("none", "green"))
    if damage:
        grid.add_row("", Text("The complete records before the break were kept; the file was copied to "
                              "quarantine/. Fix it there and replay it (x in Files).", "italic"))
    reasons = report.get("reasons") or []
    grid.add_row("rejections", Text("none", "green") if not reasons else f"{len(reasons)} shown"
                 + (f" of {report.get('rejected')}" if report.get("rejected", 0) > len(reasons) else ""))
    for reason in reasons:
        grid.add_row("", Text(reason, "red"))
    return grid
