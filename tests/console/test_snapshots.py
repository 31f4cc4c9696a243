"""Snapshot tests of stable screens. The live dashboard's clocks, pids and rates never repeat, so these
are drawn from a fixed, hand-made core.ops.snapshot Snapshot (tests/console/fake.py) fed through the same
app, message path and widgets as the real thing; the Pilot tests cover the live runtime."""

from __future__ import annotations

import time

import pytest

from console.app import make_app

from fake import FakeRuntime


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    # The event log prints local times: pin the zone so the pictures are the same on any machine.
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def app():
    return make_app(FakeRuntime(), start_runtime=False, refresh=30.0)


async def painted(pilot):
    deadline = time.monotonic() + 10
    while pilot.app.snapshot is None or pilot.app.screen.query("UsersPanel DataTable").first().row_count == 0:
        assert time.monotonic() < deadline, "the fixed snapshot never reached the screen"
        await pilot.pause(0.05)
    await pilot.pause()


def test_dashboard(snap_compare):
    assert snap_compare(app(), terminal_size=(140, 44), run_before=painted)


def test_dashboard_80x24(snap_compare):
    assert snap_compare(app(), terminal_size=(80, 24), run_before=painted)


def test_file_report(snap_compare):
    async def open_report(pilot):
        await painted(pilot)
        await pilot.press("down", "down", "down", "enter")

    assert snap_compare(app(), terminal_size=(120, 40), run_before=open_report)


def test_help_screen(snap_compare):
    async def open_help(pilot):
        await painted(pilot)
        await pilot.press("question_mark")

    assert snap_compare(app(), terminal_size=(120, 50), run_before=open_help)


def test_files_maximised_at_80x24(snap_compare):
    """The Files panel must fit every column in 80 columns, and `m` must give it the whole screen."""
    async def maximise_files(pilot):
        await painted(pilot)
        await pilot.press("4", "m")

    assert snap_compare(app(), terminal_size=(80, 24), run_before=maximise_files)
