"""Services: Redis, gRPC, workers and the watcher at a glance, and the doctor saying what is wrong."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from console.format import number
from console.widgets.panel import Panel, show_content

OK, BAD, PAUSED = ("●", "green"), ("●", "red"), ("●", "yellow")


def _dot(good: bool, warn: bool = False) -> tuple[str, str]:
    return PAUSED if warn else (OK if good else BAD)


class ServicesPanel(Panel):
    TITLE = "1 Services"
    HELP = "Redis, gRPC, workers and the watcher; the doctor lists problems and what to do."
    can_focus = True

    def compose(self):
        yield Static("starting…", id="services-body")

    def focus_panel(self) -> None:
        self.focus()

    def show(self, snap) -> None:
        grid = render_services(snap)
        show_content(self.query_one("#services-body", Static), grid, height=grid.row_count)  # no column wraps


def render_services(snap) -> Table:
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(width=1)
    grid.add_column(width=8, style="bold")
    grid.add_column(ratio=1, overflow="ellipsis", no_wrap=True)
    r = snap.redis
    kind = "embedded" if r.embedded else "external"
    detail = f"{kind} {r.version} · {r.memory} · {r.url}" if r.connected else f"{kind} · UNREACHABLE · {r.url}"
    grid.add_row(Text(*_dot(r.connected)), "Redis", detail)
    if snap.grpc is not None:
        g = snap.grpc
        state = "serving" if g.serving else "NOT SERVING"
        grid.add_row(Text(*_dot(g.serving)), "gRPC", f"{g.address} · {state} · {g.open_streams} streams · "
                                                    f"{number(g.calls)} calls")
    alive, dead = snap.alive_workers, sum(1 for w in snap.workers if w.state == "dead")
    extra = f" · {dead} dead" if dead else ""
    grid.add_row(Text(*_dot(alive > 0 or snap.desired_workers == 0, alive < snap.desired_workers and alive > 0)),
                 "Workers", f"{alive} alive of {snap.desired_workers} desired{extra}")
    if snap.watcher is not None:
        w = snap.watcher
        state = "paused" if w.paused else ("watching" if w.active else "idle")
        if not w.folder_ok:
            state = w.folder_error.upper()
        reading = f" · reading {w.current}" if w.current else ""
        grid.add_row(Text(*_dot(w.folder_ok, w.paused)), "Watcher",
                     f"{w.folder} · {state} · {w.waiting} waiting{reading}")
    grid.add_row("", "", "")
    if not snap.problems:
        grid.add_row(Text("✔", "green"), "Doctor", Text("all good", "green"))
    for problem in snap.problems:
        style = "red" if problem.level == "error" else "yellow"
        grid.add_row(Text("✖" if problem.level == "error" else "!", style), "Doctor",
                     Text.assemble((problem.what, style), " → ", (problem.fix, "italic")))
    return grid
