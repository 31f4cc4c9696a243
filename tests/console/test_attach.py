"""`swordsec-console attach` under Pilot: the real app on an AttachedRuntime, watching a real pipeline (a Runtime
in this process: Redis, gRPC, watcher, worker processes) through its Redis only."""

from __future__ import annotations

import os
import socket

import psutil
from textual.widgets import Button, DataTable

from console.app import make_app
from console.screens.confirm import ConfirmScreen
from console.screens.dashboard import DashboardScreen
from console.screens.report import FileReportScreen
from core.ops.attached import AttachedRuntime
from core.ops.eventstream import stream_key
from tests.console.test_app import SIZE, dashboard, table_cells, table_rows, until

from conftest import copy_challenge


def attached_app(settings, **options):
    runtime = AttachedRuntime(settings).start()
    return runtime, make_app(runtime, refresh=0.2, start_runtime=False, **options)


def status_line(app) -> str:
    return str(dashboard(app).query_one("#statusline").render())


def notes(app) -> list[str]:
    return [n.message for n in app._notifications]  # the toasts the operator sees


async def test_attached_console_follows_a_pipeline_started_elsewhere(runtime_factory, make_settings):
    pipeline = runtime_factory()
    runtime, app = attached_app(make_settings())
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.snapshot is not None and app.snapshot.pipeline.alive,
                        message="the pipeline's owner seen")
            copy_challenge(pipeline.settings.watch, ["1.json", "6.json"])

            def final():
                files = {r["file"]: r for r in table_cells(app, "panel-4").values()}
                return (files.get("1.json", {}).get("state") == "merged"
                        and files.get("6.json", {}).get("state") == "partial" and app.snapshot.users == 1977 and files)

            files = await until(pilot, final, message="both files final and 1,977 users, seen from Redis")
            assert (files["1.json"]["users"], files["6.json"]["users"]) == ("1,000", "977")
            assert "100%" in files["1.json"]["progress"]
            # The status line is drawn at its own refresh, which may come after the table's.
            status = await until(pilot, lambda: "1,977 users" in (line := status_line(app)) and "2/2 workers" in line
                                 and line, message="the status line at 1,977 users")
            assert f"attached to {pipeline.settings.namespace} on {socket.gethostname().split('.')[0]} " \
                   f"(pid {os.getpid()})" in status
            # What only the owner sees, through its presence: the gRPC server, the watcher, the output file.
            assert app.snapshot.grpc.address == pipeline.server.address
            assert app.snapshot.watcher.folder == str(pipeline.settings.watch)
            assert app.snapshot.output_path == str(pipeline.settings.output_path)
            # The same lines as the pipeline's own log (what --no-ui prints), in the same order.
            merged = [e.text for e in pipeline.events.recent(500) if "1.json" in e.text or "6.json" in e.text]
            await until(pilot, lambda: [e.text for e in app.snapshot.events if e.text in merged] == merged,
                        message="the pipeline's lines in the attached console")
            await pilot.press("4")  # the Files panel, whatever had the focus
            files_table = dashboard(app).query_one("#panel-4 DataTable", DataTable)
            # An enter that lands before the focus has moved goes to the widget that had it: wait for the move.
            await until(pilot, lambda: app.focused is files_table, message="the Files table focused")
            # Nothing waits in the watcher any more (the owner's word of a second ago may still list 6.json as
            # waiting: a row that has no report), and the cursor is on a file's row.
            await until(pilot, lambda: len(files_table.rows) == 2 and dashboard(app).query_one("#panel-4").selected,
                        message="the two files' rows alone, one selected")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, FileReportScreen), message="a file report")
            await pilot.press("escape")
            # A key pressed before the report screen is gone goes to that screen: wait for the dashboard first.
            await until(pilot, lambda: isinstance(app.screen, DashboardScreen), message="the report closed")
            # Replay the damaged file: the owner moves it back from quarantine and answers.
            table = dashboard(app).query_one("#panel-4 DataTable", DataTable)
            damaged = next(key for key, cells in table_cells(app, "panel-4").items() if cells["file"] == "6.json")
            table.move_cursor(row=[key.value for key in table.rows].index(damaged))
            files = dashboard(app).query_one("#panel-4")
            await until(pilot, lambda: app.focused is table and (files.selected or {}).get("name") == "6.json",
                        message="6.json selected in the focused Files table")
            await pilot.press("x")
            answer = await until(pilot, lambda: [n for n in notes(app) if "6.json" in n or "cannot" in n],
                                 message="the owner's answer to the replay")
            assert "6.json replayed" in answer, answer
            assert any(e.text == "6.json replayed" for e in pipeline.events.recent(50))
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running, message="the attached console to quit")
        assert app.return_code == 0
        # Quitting an attached console leaves the pipeline as it was.
        assert not pipeline.stopped and pipeline.supervisor.alive_count() == 2 and pipeline.server.serving
    finally:
        runtime.stop()


async def test_attached_console_requeues_and_deletes_a_failed_job(runtime_factory, make_settings, connection):
    pipeline = runtime_factory(watch=False)
    runtime, app = attached_app(make_settings())
    try:
        async with app.run_test(size=SIZE) as pilot:
            pipeline.queue.enqueue("core.queue.jobs.merge_batch", {"nonsense": True}, job_id="broken-1")
            await until(pilot, lambda: "broken-1" in table_rows(app, "panel-6"), message="the failed job listed")
            first_failure = app.snapshot.failed[0].ended_at
            assert "KeyError" in app.snapshot.failed[0].exc_info
            await pilot.press("6", "r")
            await until(pilot, lambda: app.snapshot.failed and app.snapshot.failed[0].ended_at != first_failure,
                        message="the job requeued from the attached console, run and failed again")
            # Said in the pipeline's stream, so every console (and whoever reads it) sees who did it.
            assert any("job broken-1 requeued (console attached on" in e.text for e in app.snapshot.events)
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), message="a confirmation")
            assert isinstance(app.focused, Button) and app.focused.id == "cancel"  # Cancel is the default
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, DashboardScreen), message="the dialog closed")
            assert "broken-1" in table_rows(app, "panel-6") and len(pipeline.queue.failed_job_registry) == 1
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), message="a confirmation")
            await pilot.click("#confirm")
            await until(pilot, lambda: table_rows(app, "panel-6") == {} and not app.snapshot.failed,
                        message="the job deleted")
            assert len(pipeline.queue.failed_job_registry) == 0
    finally:
        runtime.stop()


async def test_attached_console_scales_the_pipelines_workers_and_pauses_its_watcher(runtime_factory, make_settings):
    pipeline = runtime_factory()
    runtime, app = attached_app(make_settings())
    host = socket.gethostname().split(".")[0]

    def alive():
        return {name: cells for name, cells in table_cells(app, "panel-3").items()
                if cells["state"] in ("idle", "busy")}

    try:
        async with app.run_test(size=SIZE) as pilot:
            before = set(await until(pilot, lambda: len(alive()) == 2 and alive(), message="two workers"))
            await pilot.press("plus")
            workers = await until(pilot, lambda: len(alive()) == 3 and app.snapshot.desired_workers == 3 and alive(),
                                  message="the third worker, seen from Redis")
            [(name, cells)] = [(n, c) for n, c in workers.items() if n not in before]
            # Started by the pipeline (this process), on its host: its name says both, and it is our child.
            assert name.startswith(f"swordsec-{host}-{os.getpid()}-")
            child = psutil.Process(int(cells["pid"]))
            assert child.ppid() == os.getpid() and pipeline.supervisor.desired == 3
            await until(pilot, lambda: "workers scaled to 3" in notes(app), message="the owner's answer shown")
            await pilot.press("p")
            await until(pilot, lambda: pipeline.watcher.paused.is_set(), message="the pipeline's watcher paused")
            await until(pilot, lambda: app.snapshot.watcher.paused and "watcher PAUSED" in status_line(app),
                        message="shown paused")
            await pilot.press("p")
            await until(pilot, lambda: not pipeline.watcher.paused.is_set(), message="the watcher resumed")
            await pilot.press("3", "R")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), message="a confirmation")
            await pilot.press("enter")  # Cancel: nothing is asked of the pipeline
            await until(pilot, lambda: isinstance(app.screen, DashboardScreen), message="the dialog closed")
            assert not any("restart" in e.text for e in pipeline.events.recent(100))
    finally:
        runtime.stop()


async def test_with_no_pipeline_the_console_says_nobody_can_carry_out_a_command(make_settings, connection):
    runtime, app = attached_app(make_settings())
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "NO PIPELINE RUNS IT" in status_line(app), message="the status line's warning")
            assert any("no pipeline runs namespace" in p.what for p in app.snapshot.problems)
            await pilot.press("plus")
            await until(pilot, lambda: any("cannot add a worker: no pipeline runs namespace" in n for n in notes(app)),
                        message="the refusal shown")
        assert not list(connection.scan_iter(match=f"{runtime.namespace}:*"))  # attaching wrote nothing
        assert not connection.exists(stream_key(runtime.namespace))
    finally:
        runtime.stop()
