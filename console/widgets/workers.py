"""Workers: every RQ worker of this queue, with the supervisor's view of the processes it started."""

from __future__ import annotations

from textual.widgets import DataTable

from console.format import ago, number, styled
from console.keys import Key, bindings
from console.widgets.panel import Panel, row_key, sync_rows


class WorkersPanel(Panel):
    TITLE = "3 Workers"
    HELP = "Every RQ worker on this queue, here or on another machine, and what it is doing."
    KEYS = (
        Key("a", "add", "Add", "add a worker"),
        Key("s", "stop", "Stop", "stop the selected worker after its current job", palette="Stop the selected worker"),
        Key("R", "restart", "Restart", "restart the selected worker", palette="Restart the selected worker"),
    )
    BINDINGS = bindings(KEYS)

    def compose(self):
        table = DataTable(id="workers-table", cursor_type="row", zebra_stripes=True)
        # the job id is last: it is the one column that may be cut in a narrow panel
        table.add_columns("name", "pid", "state", "done", "failed", "heartbeat", "job")
        yield table

    def show(self, snap) -> None:
        rows = []
        for w in snap.workers:
            rows.append((w.name, (w.name, str(w.pid or "—"), styled(w.state), number(w.successful), number(w.failed),
                                  ago(w.last_heartbeat, snap.taken_at), w.current_job or "—")))
        sync_rows(self.query_one(DataTable), rows)
        alive = snap.alive_workers
        self.border_subtitle = f"{alive} alive / {snap.desired_workers} desired"

    @property
    def selected(self) -> str | None:
        return row_key(self.query_one(DataTable))

    def action_add(self) -> None:
        self.command(self.app.runtime.control.add_worker)

    def action_stop(self) -> None:
        if name := self.selected:
            self.command(self.app.runtime.control.stop_worker, name, action="Stop worker",
                         confirm=f"Stop worker {name}? It finishes its current job, and the desired count drops by one.")

    def action_restart(self) -> None:
        if name := self.selected:
            self.command(self.app.runtime.control.restart_worker, name, action="Restart worker",
                         confirm=f"Restart worker {name}? It finishes its current job first.")
