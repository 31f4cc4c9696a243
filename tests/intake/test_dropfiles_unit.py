"""Fast unit tests of the drop folder's pure rules: which names are ours, the stability rule, naming of
copies, the after-merge line and policy (core/intake/dropfiles.py, core/intake/aftermerge.py). No Redis, no server."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.intake.aftermerge import dispose, merged_line, move_to_free_name
from core.intake.dropfiles import UNSEEN, fingerprint, is_candidate, kind, numbered, stability


@pytest.mark.parametrize("name, ours", [("1.json", True), ("A.JSON", True), ("x.jsonl", True), ("x.ndjson", True),
                                        (".hidden.json", False), ("x.json.part", False), ("x.json.tmp", False),
                                        ("x.json~", False), ("x.csv", False), ("json", False)])
def test_which_names_are_ours(name, ours):
    assert is_candidate(Path(name)) is ours


@given(st.text(min_size=1, max_size=40).filter(lambda n: "/" not in n and "\x00" not in n))
def test_numbered_names_are_distinct_and_keep_the_suffix(name):
    names = [next(iter(numbered(name)))] + [n for n, _ in zip(numbered(name), range(5))][1:]
    assert names[0] == name and len(set(names)) == len(names)
    suffix = Path(name).suffix
    assert all(n.endswith(suffix) for n in names)


def test_a_file_being_written_waits_and_a_whole_one_goes_at_once(tmp_path):
    whole = tmp_path / "whole.json"
    whole.write_text('[{"id": 1}]')
    current, ready = stability(whole, UNSEEN, quiet_period=3600)
    assert ready and current == (whole.stat().st_size, whole.stat().st_mtime_ns)  # ends its array: read now

    growing = tmp_path / "growing.json"
    growing.write_text('[{"id": 1},')
    current, ready = stability(growing, UNSEEN, quiet_period=3600)
    assert not ready  # fresh and not a whole array
    with open(growing, "a") as handle:
        handle.write('{"id": 2}]')
    os.utime(growing, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    changed, ready = stability(growing, current, quiet_period=0)
    assert not ready and changed != current  # it changed since we looked: never read on that look
    assert stability(growing, changed, quiet_period=0)[1]  # unchanged since: read
    assert stability(tmp_path / "gone.json", UNSEEN, 0) == (None, False)


def test_entries_that_are_not_regular_files_are_handed_on_unopened(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    assert stability(fifo, UNSEEN, quiet_period=3600)[1]  # at once, to be refused (opening it would block)
    assert kind(fifo.lstat().st_mode) == "a FIFO (named pipe)"
    assert kind((tmp_path).stat().st_mode) == "a folder" and kind(Path(__file__).stat().st_mode) is None


def test_merged_line_says_partial_with_the_damage():
    report = {"id": "f" * 32, "accepted": 977, "new": 977, "size": 292353, "damage": "truncated: ...",
              "reasons": []}
    level, text, fields = merged_line("6.json", report, 0.34)
    assert level == "warning" and text.startswith("6.json: partial: 977 users accepted (977 new")
    assert text.endswith("; truncated: ...") and fields["state"] == "partial"
    level, text, _ = merged_line("1.json", {"id": "a" * 32, "accepted": 1000}, 0.2)
    assert level == "info" and "1.json: merged: 1000 users accepted" in text


def test_after_merge_moves_without_overwriting_and_only_the_merged_content(tmp_path):
    folder = tmp_path / "drop"
    (folder / "processed").mkdir(parents=True)
    (folder / "processed" / "1.json").write_text("earlier")
    path = folder / "1.json"
    path.write_text("[]")
    report = {"id": fingerprint(path)}
    assert dispose("move", folder, path, report)
    assert (folder / "processed" / "1.json").read_text() == "earlier"
    assert (folder / "processed" / "1.2.json").read_text() == "[]" and not path.exists()

    path.write_text("[1]")  # new content under the same name: not ours to touch
    assert not dispose("delete", folder, path, report) and path.exists()
    assert not dispose("keep", folder, path, {"id": fingerprint(path)})
    assert move_to_free_name(path, folder / "processed").name == "1.3.json"
