"""bench/merge_cost.py follows merge.lua: every variant is merge.lua's own text with one part taken out, so an edit
of merge.lua that drops what a variant removes must make the bench say so, not measure the wrong script."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def merge_cost(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the bench imports its neighbours (machine, datagen) by name
    sys.modules.pop("merge_cost", None)
    import merge_cost

    yield merge_cost
    sys.modules.pop("merge_cost", None)


def test_each_variant_takes_its_part_out_of_the_shipped_script(merge_cost):
    variants = merge_cost.variants()
    shipped = variants["merge.lua as shipped"]
    for name, removed in [("HGET", merge_cost.HGET), ("HSET", merge_cost.HSET), ("SADD", merge_cost.SADD)]:
        text = next(source for label, source in variants.items() if f"without its {name}" in label)
        assert removed in shipped and removed not in text
        assert len(text) < len(shipped)
    everything = variants["  without all three: the script's own work"]
    assert not any(part in everything for part in (merge_cost.HGET, merge_cost.HSET, merge_cost.SADD))


def test_a_script_that_lost_a_part_stops_the_bench_with_its_reason(merge_cost, monkeypatch):
    monkeypatch.setattr(merge_cost, "HSET", "redis.call('HSET', nowhere)")
    with pytest.raises(SystemExit, match="merge.lua no longer holds"):
        merge_cost.variants()


def test_the_bench_runs_every_variant_on_a_redis_of_its_own(merge_cost, capsys):
    assert merge_cost.main(["--users", "1500", "--batch-size", "500", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = {name.strip(): float(re.search(rf"{re.escape(name.strip())}\s+([\d.]+)", out)[1])
            for name in merge_cost.variants()}
    assert len(rows) == 7 and all(figure > 0 for figure in rows.values())
    assert re.search(r"merges alone allow at most [\d,]+ users/s", out)
