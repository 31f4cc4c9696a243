"""The command palette's entries: every declared key that has a palette title (console.keys), run on the
node that declares it, so the palette does what the key does."""

from __future__ import annotations

from functools import partial

from textual.app import SystemCommand

from console.keys import APP_KEYS, DASHBOARD_KEYS, Key
from console.screens.dashboard import DashboardScreen
from console.widgets.panel import Panel


def _entry(app, key: Key, node=None, where: str = "") -> SystemCommand:
    return SystemCommand(key.palette, f"{where}{key.help} ({key.shown})", partial(app.run_action, key.action, node))


def commands(app):
    """Yield SystemCommand entries; the panel ones act on the row selected in that panel."""
    yield from (_entry(app, key) for key in APP_KEYS if key.palette)
    screen = app.screen
    if not isinstance(screen, DashboardScreen):
        return
    for index, panel in enumerate(screen.panels):
        yield SystemCommand(f"Focus {panel.TITLE[2:]}", f"Go to panel {index + 1} ({index + 1})",
                            partial(app.run_action, f"focus_panel({index})", screen))
    yield from (_entry(app, key, screen) for key in DASHBOARD_KEYS if key.palette)
    # The keys every panel shares act on the focused panel: the app's action of the same name finds it.
    yield from (_entry(app, key) for key in Panel.KEYS if key.palette)
    for panel in screen.panels:
        yield from (_entry(app, key, panel, f"{panel.TITLE[2:]}: ") for key in panel.own_keys() if key.palette)
