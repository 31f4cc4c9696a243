"""What keeps the console live and cheap under load: the status line's pulse between snapshots, and panel text
redrawn without a layout pass of the whole screen when its height cannot change (console.widgets.panel)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from test_app import SIZE, dashboard, until
from textual.app import App
from textual.widgets import Static

from console.app import make_app
from console.widgets.panel import show_content
from core.ops.status import pulse

from conftest import copy_challenge


async def test_the_status_line_counts_merged_users_between_snapshots(runtime_factory):
    """With snapshots an hour apart, only the pulse can bring the users of a dropped file to the status line."""
    runtime = runtime_factory()
    app = make_app(runtime, start_runtime=False, refresh=3600)
    async with app.run_test(size=SIZE) as pilot:
        first = await until(pilot, lambda: app.snapshot, message="the first snapshot")
        assert first.users == 0
        copy_challenge(runtime.settings.watch, ["1.json"])
        status = lambda: str(dashboard(app).query_one("#statusline").render())  # noqa: E731
        await until(pilot, lambda: "1,000 users" in status() and "backlog 0" in status(),
                    message="1,000 users and an empty backlog on the status line")
        assert app.snapshot is first, "no snapshot came: the pulse drew it"
        assert (app.pulse.users, app.pulse.backlog) == (1000, 0)


def test_a_pulse_counts_what_a_snapshot_counts(runtime_factory):
    runtime = runtime_factory(watch=False)
    copy_challenge(runtime.settings.watch, ["2.json"])
    summary = runtime.run_once()
    beat, snap = pulse(runtime.store, runtime.queue), runtime.snapshot()
    assert (beat.users, beat.backlog) == (snap.users, snap.backlog) == (summary.users, 0)


class Board(App):
    CSS = "#fixed { height: 1; } #auto { height: auto; }"

    def compose(self):
        yield Static("", id="fixed")
        yield Static("", id="auto")


async def test_panel_text_is_redrawn_without_a_layout_pass_when_its_height_cannot_change(monkeypatch):
    layouts: list[tuple[str, bool]] = []
    update = Static.update

    def spy(self, content="", *, layout=True):  # records what each update asked for, then does it
        layouts.append((self.id, layout))
        update(self, content, layout=layout)

    monkeypatch.setattr(Static, "update", spy)
    async with Board().run_test(size=(40, 10)) as pilot:
        fixed, auto = pilot.app.query_one("#fixed", Static), pilot.app.query_one("#auto", Static)
        show_content(auto, "queued 1  started 2")
        await pilot.pause()
        show_content(auto, "queued 1  started 2")  # the same text: not drawn again
        show_content(auto, Text("queued 9  started 0"))  # same lines, each fits: no layout
        show_content(auto, "queued 9\nstarted 0")  # one line more: layout
        show_content(auto, "x" * 80 + "\nstarted 0")  # as many lines, but one wraps at 40 columns: layout
        show_content(fixed, "one")
        show_content(fixed, "one\ntwo")  # a fixed height never changes, whatever the text
        grid = Table.grid()
        grid.add_column(no_wrap=True)
        grid.add_row("Redis")
        show_content(auto, grid, height=grid.row_count)
        show_content(auto, grid, height=grid.row_count)  # a grid of as many rows: no layout
        await pilot.pause()
        assert layouts == [("auto", True), ("auto", False), ("auto", True), ("auto", True),
                           ("fixed", False), ("fixed", False), ("auto", True), ("auto", False)]
        assert "two" in str(fixed.render())


async def test_the_users_page_follows_a_busy_ingest_every_few_seconds_and_its_end_at_once(monkeypatch):
    import dataclasses

    from console.messages import StatusUpdated
    from console.widgets.users import BUSY_PAGE_EVERY, UsersPanel

    from fake import SNAPSHOT, FakeRuntime

    loads: list[int] = []
    monkeypatch.setattr(UsersPanel, "load_page", lambda self: loads.append(self.total))
    app = make_app(FakeRuntime(dataclasses.replace(SNAPSHOT, backlog=0)), start_runtime=False, refresh=3600)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: loads, message="the first page")
        loads.clear()
        start = SNAPSHOT.taken_at + 100
        for second in range(int(BUSY_PAGE_EVERY) * 2):  # a snapshot a second, new users in each, jobs queued
            app.post_message(StatusUpdated(dataclasses.replace(
                SNAPSHOT, taken_at=start + second, users=1000 * (second + 1), backlog=7)))
            await pilot.pause()
        assert loads == [1000, 1000 * (int(BUSY_PAGE_EVERY) + 1)], loads
        app.post_message(StatusUpdated(dataclasses.replace(SNAPSHOT, taken_at=start + 10.5, users=99_999, backlog=0)))
        await until(pilot, lambda: loads[-1] == 99_999, message="the last page once the backlog is empty")


async def test_the_app_settles_the_heap_once_the_runtime_has_started():
    from fake import FakeRuntime

    ready: list[bool] = []
    app = make_app(FakeRuntime(), refresh=3600, on_ready=lambda: ready.append(app.ready.is_set()))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: ready, message="on_ready")
        assert ready == [True]


def test_the_interpreter_collects_less_often_switches_less_often_and_freezes_the_started_heap():
    """In a process of its own: a frozen heap is the process's for good."""
    import subprocess
    import sys

    from core.interpreter import SWITCH_INTERVAL, YOUNG

    code = ("import gc, sys; from core import interpreter; interpreter.tune(); before = gc.get_freeze_count(); "
            "interpreter.settle(); print(gc.get_threshold()[0], sys.getswitchinterval(), "
            "before == 0 < gc.get_freeze_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(YOUNG), str(SWITCH_INTERVAL), "True"]
