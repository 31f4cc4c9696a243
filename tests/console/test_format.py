"""The panels' text helpers: fast unit tests of pure logic (console/format.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len

from console.format import ago, bar, duration, file_state, number, size
from console.widgets.queue import render_counts
from core.ops.status import REGISTRIES


@pytest.mark.parametrize("num, shown", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                                        (1024 ** 2, "1.0 MiB"), (5 * 1024 ** 3, "5.0 GiB"),
                                        (3 * 1024 ** 4, "3072.0 GiB")])
def test_sizes_are_binary_units_named_as_such(num, shown):
    assert size(num) == shown


@pytest.mark.parametrize("seconds, shown", [(None, "—"), (0.25, "250ms"), (5.04, "5.0s"), (61, "1m01s"),
                                            (3600 * 2 + 60 * 3, "2h03m")])
def test_durations(seconds, shown):
    assert duration(seconds) == shown


def test_age_is_relative_to_the_snapshot_clock():
    assert ago(None, 100.0) == "—" and ago(99.5, 100.0) == "just now" and ago(40.0, 100.0) == "1m00s ago"


@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 40))
def test_a_bar_never_overflows_its_width(fraction, width):
    text = bar(fraction, width).plain
    assert text.endswith("%")
    assert len(text) == (width + 5 if width else 4)


def test_file_states_an_operator_reads():
    assert file_state({"state": "streaming"}) == "reading"
    assert file_state({"state": "merged", "damage": "truncated"}) == "partial"
    assert file_state({"state": "merged", "damage": ""}) == "merged"


@given(st.dictionaries(st.sampled_from(REGISTRIES), st.integers(0, 10 ** 12)), st.integers(0, 200))
def test_queue_counts_wrap_between_registries_only(queue, width):
    lines = render_counts(queue, width).plain.split("\n")
    items = [item for line in lines for item in line.split("  ")]
    assert items == [f"{name} {number(queue.get(name, 0))}" for name in REGISTRIES]  # each name beside its count
    if width > 0:  # a line holds one registry at least; more only when they fit
        assert all(cell_len(line) <= width or "  " not in line for line in lines)
