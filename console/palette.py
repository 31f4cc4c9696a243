"""The command palette's entries: every action the keyboard offers, by name."""

from __future__ import annotations

from textual.app import SystemCommand

from console.screens.dashboard import DashboardScreen


def commands(app):
    """Yield SystemCommand entries; the panel ones act on the row selected in that panel."""
    yield SystemCommand("Help", "Every key, global and per panel (?)", app.action_help)
    yield SystemCommand("Pause / resume live refresh", "Freeze the screen to read it (space)", app.action_toggle_refresh)
    yield SystemCommand("Pause / resume the watcher", "Stop or start reading dropped files (p)", app.action_toggle_watcher)
    yield SystemCommand("Add a worker", "Scale workers up by one (+)", lambda: app.action_scale(1))
    yield SystemCommand("Remove a worker", "Scale workers down by one (-)", lambda: app.action_scale(-1))
    yield SystemCommand("Quit", "Stop everything the console started (q)", app.action_quit)
    screen = app.screen if isinstance(app.screen, DashboardScreen) else None
    if screen is None:
        return
    panel = {type(p).__name__: p for p in screen.panels}
    for index, p in enumerate(screen.panels):
        yield SystemCommand(f"Focus {p.TITLE[2:]}", f"Go to panel {index + 1}",
                            lambda i=index: screen.action_focus_panel(i))
    yield SystemCommand("Maximise / restore the focused panel", "(m)", app.action_toggle_maximize)
    yield SystemCommand("Show all panels", "Undo hide (H)", screen.action_show_all)
    workers, files, users = panel["WorkersPanel"], panel["FilesPanel"], panel["UsersPanel"]
    failed, events = panel["FailedPanel"], panel["EventsPanel"]
    yield SystemCommand("Stop the selected worker", "Workers panel (s)", workers.action_stop)
    yield SystemCommand("Restart the selected worker", "Workers panel (R)", workers.action_restart)
    yield SystemCommand("Open the selected file's report", "Files panel (enter)", files.action_report)
    yield SystemCommand("Replay the selected file", "Rejected or partial files (x)", files.action_replay)
    yield SystemCommand("Filter merged users", "Any field (/)", users.action_filter)
    yield SystemCommand("Next page of users", "(])", lambda: users.action_page(1))
    yield SystemCommand("Previous page of users", "([)", lambda: users.action_page(-1))
    yield SystemCommand("Show the selected job's traceback", "Failed jobs (enter)", failed.action_traceback)
    yield SystemCommand("Requeue the selected failed job", "Failed jobs (r)", failed.action_requeue)
    yield SystemCommand("Requeue all failed jobs", "Failed jobs (A)", failed.action_requeue_all)
    yield SystemCommand("Delete the selected failed job", "Failed jobs (d)", failed.action_delete)
    yield SystemCommand("Filter the event log", "(/)", events.action_filter)
    yield SystemCommand("Pause / resume event autoscroll", "(f)", events.action_follow)
