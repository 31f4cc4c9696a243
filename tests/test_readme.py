"""The README's command line section says what the parser does: same options, variables and defaults."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from console.cli import build_parser
from core.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
ROW = re.compile(r"^\| (?P<flags>[^|]*) \| (?P<vars>[^|]*) \| (?P<default>[^|]*) \|$")


def _table() -> list[tuple[list[str], list[str], str]]:
    text = README.read_text()
    section = text[text.index("## Command line"):]
    section = section[:section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        match = ROW.match(line.strip())
        if match and "`" in match["vars"]:
            rows.append((re.findall(r"`(--[a-z-]+)`", match["flags"]), re.findall(r"`([A-Z_]+)`", match["vars"]),
                         match["default"]))
    return rows


def _main_options() -> dict[str, object]:
    parser = build_parser()
    return {option: action for action in parser._actions for option in action.option_strings
            if option.startswith("--")}


def test_every_option_with_a_variable_is_in_the_table_with_that_variable():
    rows = _table()
    in_table = {flag: names for flags, names, _ in rows for flag in flags}
    options = _main_options()
    for name, variable in Settings.ENV.items():
        flag = "--" + name.replace("_", "-")
        assert flag in options, f"{variable} has no flag {flag}"
        assert variable in in_table.get(flag, []), f"README's option table lacks {flag} with {variable}"
    for flag in in_table:
        assert flag in options, f"README lists {flag}, which the parser does not have"


def test_defaults_in_the_table_are_the_settings_defaults():
    defaults = {f.name: f.default for f in fields(Settings)}
    for flags, _, default in _table():
        name = flags[0][2:].replace("-", "_") if flags else None
        if name in defaults and isinstance(defaults[name], (int, float)) and not isinstance(defaults[name], bool):
            shown = re.match(r"\s*`([0-9.]+)`", default)
            assert shown, f"README gives no number as the default of {flags[0]}: {default.strip()!r}"
            assert float(shown[1]) == float(defaults[name]), f"README says {flags[0]} defaults to {shown[1]}"


def test_the_usage_block_names_only_real_options_and_commands():
    text = README.read_text()
    block = text[text.index("## Command line"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for line in block.splitlines():
        words = line.split()
        command = words[1] if len(words) > 1 and words[1] in commands else None
        known = ({o for a in commands[command]._actions for o in a.option_strings} if command
                 else set(_main_options()))
        for option in re.findall(r"\[(--[a-z-]+)", line):
            assert option in known, f"README's usage shows {option} for {command or 'the console'}"
    assert {"send", "health", "worker", "replay"} <= set(commands)
