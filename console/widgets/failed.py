"""Failed jobs: the FailedJobRegistry of our queue; read a traceback, requeue one or all, delete."""

from __future__ import annotations

from textual.widgets import DataTable

from console.format import ago
from console.keys import Key, bindings
from console.widgets.panel import Panel, PanelTable, row_key, sync_rows


class FailedPanel(Panel):
    TITLE = "6 Failed jobs"
    HELP = "Jobs that failed for good (after their retries), from RQ's failed registry."
    KEYS = (
        Key("enter", "traceback", "Traceback", "show the job's traceback", palette="Show the selected job's traceback",
            bind=False),  # the table's enter (Open) selects the row, and the row opens the traceback
        Key("r", "requeue", "Requeue", "requeue the selected job", palette="Requeue the selected failed job"),
        Key("A", "requeue_all", "Requeue all", "requeue every failed job", palette="Requeue all failed jobs"),
        Key("d", "delete", "Delete", "delete the selected job", palette="Delete the selected failed job"),
    )
    BINDINGS = bindings(KEYS)

    def compose(self):
        table = PanelTable(id="failed-table")
        table.add_columns("job", "what", "failed at", "error")
        yield table

    def show(self, snap) -> None:
        self.jobs = {job.id: job for job in snap.failed}
        rows = []
        for job in snap.failed:
            when = ago(job.ended_at, snap.taken_at)
            last = job.exc_info.strip().splitlines()[-1] if job.exc_info.strip() else "—"
            rows.append((job.id, (job.id, job.description, when, last)))
        sync_rows(self.query_one(DataTable), rows)
        self.border_subtitle = f"{len(snap.failed)} failed" if snap.failed else "none"

    @property
    def selected(self):
        return getattr(self, "jobs", {}).get(row_key(self.query_one(DataTable)))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_traceback()

    def action_traceback(self) -> None:
        from console.screens.report import TracebackScreen

        if (job := self.selected) is not None:
            self.app.push_screen(TracebackScreen(job))

    def action_requeue(self) -> None:
        if (job := self.selected) is not None:
            self.command(self.app.runtime.control.requeue, job.id)

    def action_requeue_all(self) -> None:
        count = len(getattr(self, "jobs", {}))
        if count:
            self.command(self.app.runtime.control.requeue_all, action="Requeue all",
                         confirm=f"Requeue all {count} failed job(s)? Each runs again on the workers.")

    def action_delete(self) -> None:
        if (job := self.selected) is not None:
            self.command(self.app.runtime.control.delete_job, job.id, action="Delete job",
                         confirm=f"Delete job {job.id}? Its payload and traceback are gone for good.")
