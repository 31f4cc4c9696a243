"""The drop timeline (core/ops/trace.py) is written only when SWORDSEC_TRACE names a file, one line per step."""

from __future__ import annotations

import os
import subprocess
import sys
import time

CODE = "from core.ops.trace import mark; mark('merge', 'batch:1', {3, 4, 5}); mark('export')"


def run(env: dict) -> None:
    subprocess.run([sys.executable, "-c", CODE], env=env, check=True, timeout=60)


def test_a_trace_is_written_only_when_asked(tmp_path):
    trace = tmp_path / "trace.log"
    before = time.monotonic_ns()
    run({**os.environ, "SWORDSEC_TRACE": str(trace)})
    lines = [line.split(" ", 3) for line in trace.read_text().splitlines()]
    assert [(step, detail) for _, _, step, detail in lines] == [("merge", "batch:1 3"), ("export", "")]
    assert all(before <= int(at) <= time.monotonic_ns() for at, *_ in lines), "one clock for every process"
    env = {name: value for name, value in os.environ.items() if name != "SWORDSEC_TRACE"}
    run(env)
    assert len(trace.read_text().splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.log"]
