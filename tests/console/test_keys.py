"""Keys are declared once (console.keys): the footer's bindings, the `?` help and the command palette are
all read from the declarations, so a key added, changed or removed is changed everywhere at once."""

from __future__ import annotations

import re

import pytest

from console.app import SwordsecApp, make_app
from console.keys import APP_KEYS, DASHBOARD_KEYS, Key
from console.screens.dashboard import PANELS, DashboardScreen
from console.screens.help import render_help
from console.widgets.panel import FilterInput, Panel, PanelTable
from tests.console.fake import FakeRuntime

OWNERS = [(SwordsecApp, APP_KEYS), (DashboardScreen, DASHBOARD_KEYS), (Panel, Panel.KEYS),
          (PanelTable, PanelTable.KEYS), (FilterInput, FilterInput.KEYS)] + [(p, p.own_keys()) for p in PANELS]


def action_name(key: Key) -> str:
    return re.match(r"\w+", key.action).group(0)


@pytest.mark.parametrize("owner, keys", OWNERS, ids=lambda o: getattr(o, "__name__", ""))
def test_every_key_runs_an_action_of_its_owner_and_is_bound_as_declared(owner, keys):
    for key in keys:
        assert callable(getattr(owner, f"action_{action_name(key)}", None)), f"{owner.__name__}: {key}"
    declared = [(k.key, k.action, k.label, k.show) for k in keys if k.bind]
    bound = [(b.key, b.action, b.description, b.show) for b in vars(owner).get("BINDINGS", [])]
    assert bound == declared
    assert len({k.key for k in keys}) == len(keys), "a key declared twice on one node"


def test_the_readme_keys_are_all_declared():
    """README, "The console": ? ctrl+p 1-7 tab m h H / space p + - q (and enter for details)."""
    everywhere = {k.key for k in (*APP_KEYS, *DASHBOARD_KEYS, *Panel.KEYS)}
    assert {"question_mark", "ctrl+p", *"1234567", "tab", "m", "h", "H", "space", "p", "plus", "minus",
            "q"} <= everywhere
    in_panels = {k.key for p in PANELS for k in p.own_keys()}
    assert {"slash", "enter", "x"} <= in_panels


async def test_help_and_palette_come_from_the_declarations():
    app = make_app(FakeRuntime(), start_runtime=False, refresh=30)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        help_text = "\n".join(" ".join(str(cell) for cell in column.cells) for column in
                              render_help(screen.panels).columns)
        for key in (*APP_KEYS, *DASHBOARD_KEYS, *Panel.KEYS, *(k for p in PANELS for k in p.own_keys())):
            if key.help:
                assert key.help in help_text, key
        palette = {c.title: c for c in app.get_system_commands(screen)}
        declared = [k.palette for k in (*APP_KEYS, *DASHBOARD_KEYS, *Panel.KEYS) if k.palette]
        declared += [k.palette for p in PANELS for k in p.own_keys() if k.palette]
        assert len(declared) == len(set(declared)), "two keys share a palette title"
        assert set(declared) <= set(palette)
        # A panel entry acts on its own panel, wherever the focus is: found by the panel, not a class name.
        app.call_later(palette["Filter merged users"].callback)
        await pilot.pause()
        assert screen.query_one("#panel-5").query_one(FilterInput).display
        assert app.focused is screen.query_one("#panel-5").query_one(FilterInput)
        app.call_later(palette["Focus Failed jobs"].callback)
        await pilot.pause()
        assert screen.focused_panel() is screen.query_one("#panel-6")
