"""Pilot tests of the console against the real core runtime: Redis, gRPC and worker processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
from textual.widgets import Button, DataTable

from console.app import make_app
from console.screens.confirm import ConfirmScreen
from console.screens.dashboard import DashboardScreen
from console.screens.report import FileReportScreen, TracebackScreen
from core.runtime import Runtime

from conftest import copy_challenge

SIZE = (120, 40)


async def until(pilot, predicate, timeout: float = 30.0, message: str = "condition"):
    """conftest.wait_for for Pilot tests: yields to the app between polls (a sleep would freeze it). A timeout
    says where the operator stood: the screens, the focused widget and its cursor, the last toasts."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {message}\n{where(pilot.app)}")
        await pilot.pause(0.05)


def where(app) -> str:
    focused = app.focused
    lines = [f"screens: {[type(s).__name__ for s in app.screen_stack]}", f"focused: {focused!r}"]
    if isinstance(focused, DataTable):
        lines.append(f"cursor {focused.cursor_coordinate} of rows {[k.value for k in focused.rows]}")
    lines.append(f"toasts: {[n.message for n in app._notifications][-5:]}")
    return "\n".join(lines)


def table_cells(app, panel_id: str) -> dict[str, dict[str, str]]:
    """Each row of a panel's table as {column label: text}: tables drop columns when narrow."""
    table = dashboard(app).query_one(f"#{panel_id} DataTable", DataTable)
    labels = [str(column.label) for column in table.columns.values()]
    return {key.value: dict(zip(labels, map(str, table.get_row(key)))) for key in table.rows}


def dashboard(app) -> DashboardScreen:
    return next(s for s in app.screen_stack if isinstance(s, DashboardScreen))


def table_rows(app, panel_id: str) -> dict[str, list[str]]:
    table = dashboard(app).query_one(f"#{panel_id} DataTable", DataTable)
    return {key.value: [str(cell) for cell in table.get_row(key)] for key in table.rows}


async def test_dropped_file_reaches_its_final_values(runtime_factory):
    runtime = runtime_factory()
    app = make_app(runtime, start_runtime=False, refresh=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.snapshot is not None, message="the first snapshot")
        copy_challenge(runtime.settings.watch, ["1.json", "6.json"])

        def final():
            files = {r["file"]: r for r in table_cells(app, "panel-4").values()}
            return (files.get("1.json", {}).get("state") == "merged"
                    and files.get("6.json", {}).get("state") == "partial" and app.snapshot.users == 1977 and files)

        files = await until(pilot, final, message="both files final and 1,977 users")
        assert (files["1.json"]["users"], files["1.json"]["rejected"]) == ("1,000", "0")
        assert files["6.json"]["users"] == "977"
        assert "100%" in files["1.json"]["progress"]
        # The status line is drawn at its own refresh, which may come after the table's.
        await until(pilot, lambda: "1,977 users" in str(dashboard(app).query_one("#statusline").render()),
                    message="the status line at 1,977 users")
        shot = os.environ.get("SWORDSEC_SCREENSHOT")
        if shot:
            app.save_screenshot(Path(shot).name, str(Path(shot).parent))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, FileReportScreen), message="a file report")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen), message="back on the dashboard")


async def test_enter_on_a_file_in_line_says_it_has_no_report_yet(runtime_factory):
    runtime = runtime_factory()
    app = make_app(runtime, start_runtime=False, refresh=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.snapshot is not None, message="the first snapshot")
        runtime.watcher.paused.set()  # what p does: files dropped now wait in line
        copy_challenge(runtime.settings.watch, ["1.json"])
        table = dashboard(app).query_one("#panel-4 DataTable", DataTable)
        await until(pilot, lambda: [k.value for k in table.rows] == ["wait:1.json"], message="1.json in line")
        await pilot.press("4")
        await until(pilot, lambda: app.focused is table, message="the Files table focused")
        await pilot.press("enter")
        said = await until(pilot, lambda: [n.message for n in app._notifications if "1.json" in n.message],
                           message="a word about the file in line")
        assert said == ["1.json is in line to be read: its report begins when its reading does"]
        assert isinstance(app.screen, DashboardScreen)
        runtime.watcher.paused.clear()


async def test_failed_job_is_requeued_and_deleted_from_the_ui(runtime_factory):
    runtime = runtime_factory(watch=False)
    app = make_app(runtime, start_runtime=False, refresh=0.2)
    async with app.run_test(size=SIZE) as pilot:
        runtime.queue.enqueue("core.queue.jobs.merge_batch", {"nonsense": True}, job_id="broken-1")
        await until(pilot, lambda: "broken-1" in table_rows(app, "panel-6"), message="the failed job listed")
        first_failure = app.snapshot.failed[0].ended_at
        await pilot.press("6", "enter")
        await until(pilot, lambda: isinstance(app.screen, TracebackScreen), message="the traceback")
        assert "KeyError" in app.screen.body.plain
        await pilot.press("escape", "r")
        # The batch is still malformed, so the requeued job runs and fails again, later.
        await until(pilot, lambda: app.snapshot.failed and app.snapshot.failed[0].ended_at != first_failure
                    and any("requeued" in e.text for e in app.snapshot.events), message="the job run again")
        await pilot.press("A")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), message="a confirmation")
        await pilot.click("#confirm")
        await until(pilot, lambda: any("1 failed job(s) requeued" in e.text for e in app.snapshot.events),
                    message="requeue all")
        await until(pilot, lambda: "broken-1" in table_rows(app, "panel-6"), message="the job failing again")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), message="a confirmation")
        await pilot.click("#confirm")
        await until(pilot, lambda: table_rows(app, "panel-6") == {} and not app.snapshot.failed,
                    message="the job deleted")


async def test_scale_workers_up_and_down(runtime_factory):
    runtime = runtime_factory(watch=False)
    app = make_app(runtime, start_runtime=False, refresh=0.2)

    def alive():
        return sum(1 for r in table_rows(app, "panel-3").values() if r[2] in ("idle", "busy"))

    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: alive() == 2, message="two workers")
        await pilot.press("plus")
        await until(pilot, lambda: alive() == 3 and app.snapshot.desired_workers == 3, message="three workers")
        await pilot.press("minus", "minus")
        await until(pilot, lambda: alive() == 1 and app.snapshot.desired_workers == 1, message="one worker")
        await pilot.press("3", "s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), message="a confirmation")
        await pilot.click("#confirm")
        await until(pilot, lambda: alive() == 0 and app.snapshot.desired_workers == 0, message="no worker")
        assert any("no worker" in p.what for p in app.snapshot.problems) or app.snapshot.backlog == 0


async def test_confirm_dialog_defaults_to_cancel(runtime_factory):
    runtime = runtime_factory(watch=False)
    app = make_app(runtime, start_runtime=False, refresh=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(table_rows(app, "panel-3")) == 2, message="two workers")
        await pilot.press("3", "s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), message="a confirmation")
        focused = app.focused
        assert isinstance(focused, Button) and focused.id == "cancel"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen), message="the dialog closed")
        await pilot.pause(0.5)
        assert runtime.supervisor.desired == 2 and runtime.supervisor.alive_count() == 2


async def test_filter_the_users_table(runtime_factory):
    runtime = runtime_factory()
    copy_challenge(runtime.settings.watch, ["1.json"])
    app = make_app(runtime, start_runtime=False, refresh=0.2)
    async with app.run_test(size=SIZE) as pilot:
        users = dashboard(app).query_one("#panel-5 DataTable", DataTable)
        await until(pilot, lambda: app.snapshot and app.snapshot.users == 1000 and users.row_count == 100,
                    message="the first page of 1,000 users")
        await pilot.press("5", "right_square_bracket")
        await until(pilot, lambda: "101–200 of 1,000" in str(dashboard(app).query_one("#panel-5").border_subtitle),
                    message="the second page")
        await pilot.press("slash", *"iashment1@ning", "enter")
        await until(pilot, lambda: users.row_count == 1, message="one match")
        assert [str(c) for c in users.get_row_at(0)][3] == "iashment1@ning.com"
        assert "1 match" in str(dashboard(app).query_one("#panel-5").border_subtitle)
        await pilot.press("slash", "escape")
        await until(pilot, lambda: users.row_count == 100, message="the filter cleared")


async def test_help_palette_and_pauses(runtime_factory):
    runtime = runtime_factory()
    app = make_app(runtime, start_runtime=False, refresh=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.snapshot is not None, message="the first snapshot")
        await pilot.press("question_mark")
        await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen", message="help")
        await pilot.press("escape", "space")
        assert app.refresh_paused and "PAUSED" in str(dashboard(app).query_one("#statusline").render())
        await pilot.press("space", "p")
        await until(pilot, lambda: runtime.watcher.paused.is_set(), message="watcher paused")
        await until(pilot, lambda: app.snapshot.watcher.paused and "watcher PAUSED" in
                    str(dashboard(app).query_one("#statusline").render()), message="shown paused")
        await pilot.press("p")
        await until(pilot, lambda: not runtime.watcher.paused.is_set(), message="watcher resumed")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Requeue all failed jobs", "Add a worker", "Filter merged users", "Pause / resume the watcher",
                      "Replay the selected file", "Stop the selected worker", "Delete the selected failed job"):
            assert title in titles


async def test_app_owns_its_runtime_and_leaves_no_child(make_settings, connection):
    before = set(psutil.Process().children(recursive=True))  # the session's shared Redis is not ours
    runtime = Runtime(make_settings(redis_url=None))
    app = make_app(runtime, refresh=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.snapshot is not None and app.snapshot.alive_workers == 2,
                    message="the app's own runtime up")
        children = set(psutil.Process().children(recursive=True)) - before
        assert any("redis-server" in " ".join(c.cmdline()) for c in children)
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, timeout=60, message="the app to exit")
    assert app.return_code == 0
    leftover = [c for c in psutil.Process().children(recursive=True) if c.is_running() and c.status() != "zombie"]
    assert not [c for c in leftover if c in children], leftover
    assert len(children) >= 3  # redis-server and two workers were started, and are gone


async def test_the_help_screen_is_built_once_and_opens_again():
    """`?` lays the help out once (it cost ~100 ms of CPU each time, seconds under a busy ingest:
    bench/console_load.py) and shows the same screen, with its keys, at every press."""
    import io

    from rich.console import Console

    from console.screens.help import HelpScreen

    from fake import FakeRuntime

    app = make_app(FakeRuntime(), start_runtime=False, refresh=30.0)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), message="help")
        first = app.screen
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen), message="back to the dashboard")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), message="help again")
        assert app.screen is first
        shown = Console(width=120, record=True, file=io.StringIO())
        shown.print(app.screen.body)  # what the help's Static draws
        assert "Everywhere" in shown.export_text()


async def test_an_export_that_failed_before_any_was_written_is_drawn_not_raised():
    """Redis killed under a fresh console: the exporter's error reaches the snapshot before any export was
    recorded, so the export holds only the error. The Users panel says it is not written yet."""
    import dataclasses

    from console.widgets.users import UsersPanel

    from fake import SNAPSHOT, FakeRuntime

    snapshot = dataclasses.replace(SNAPSHOT, export={"error": "cannot write /srv/swordsec/data: no space left"})
    app = make_app(FakeRuntime(snapshot), start_runtime=False, refresh=30.0)
    async with app.run_test(size=SIZE) as pilot:
        panel = await until(pilot, lambda: app.snapshot is not None and dashboard(app).query_one(UsersPanel),
                            message="the first snapshot drawn")
        info = str(panel.query_one("#users-info").render())
        assert "not written yet" in info, info
        assert app.is_running
