"""Latency of a small drop: a 1,000-user file renamed into the folder of a running instance, until
all_users.json holds its users.

Run from the repository root with the project's venv:

    .venv/bin/python bench/drop_latency.py                      # 20 drops of 1,000 users, 1 s apart
    .venv/bin/python bench/drop_latency.py --drops 50 --users 1000 --interval 0.5 --preload 100000

One `swordsec-console --no-ui` (its embedded Redis, its default workers) runs in a scratch folder; with
--preload it first ingests that many users, so the drops land on a store of that size. Each drop is written
outside the folder and renamed in (a whole file, read at once), after --warmup drops that are not counted (the
instance's workers may still be starting); the clock runs from the rename to the first moment all_users.json
holds every user dropped so far: the moment the bench first saw (by its size, mtime or inode, polled every
2 ms) the version of the file that turned out to hold them. Reading it is the bench's own time, left out: the
users are counted as the lines that open an object (all_users.json holds one user per line, and JSON text
from orjson never holds a raw newline), and the file is parsed whole once, at the end, to check it. Parsing
at every look put 15-45 ms of the bench's CPU into each figure at 20,000 users, and reading a 400 MB file at
1,000,000 users a second or two. Prints every latency, p50 and p99 (nearest rank: with 20 drops p99 is the slowest).
Figures are printed, never asserted.

--baseline OTHER/.venv/bin/swordsec-console runs another build the same way, alternating with ours for
--rounds rounds (this machine's load moves between minutes: only runs made in turn compare), and prints both
and their ratio. --trace has our instance write its timeline (core/ops/trace.py) and prints, per step of a drop's
path, the median and slowest time from the rename to that step.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine
import orjson

import datagen

POLL = 0.002


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drops", type=int, default=20, help="files dropped (default 20)")
    parser.add_argument("--users", type=int, default=1000, help="users per dropped file (default 1000)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between drops (default 1)")
    parser.add_argument("--preload", type=int, default=0, help="users ingested before the first drop (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="--workers of the instance (default: its own)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="drops made first and not counted: workers still starting, caches cold (default 1)")
    parser.add_argument("--baseline", default=None, metavar="PROGRAM",
                        help="another build's swordsec-console, run in turn with ours")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each build, alternating (default 1)")
    parser.add_argument("--trace", action="store_true", help="print where our drops' time goes (core/ops/trace.py)")
    return parser.parse_args(argv)


def exported(path: Path, last: tuple) -> tuple[tuple, int | None]:
    """(stat key, users in the file) when the file moved since `last`, else (last, None)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return last, None
    key = (info.st_size, info.st_mtime_ns, info.st_ino)
    if key == last:
        return last, None
    try:
        return key, path.read_bytes().count(b"\n{")
    except OSError:  # replaced while read: look again
        return last, None


def wait_count(path: Path, want: int, timeout: float) -> float:
    """Poll all_users.json until it holds `want` users; the monotonic time that version was first seen."""
    deadline = time.monotonic() + timeout
    last: tuple = ()
    while time.monotonic() < deadline:
        looked = time.monotonic()
        last, count = exported(path, last)
        if count is not None and count >= want:
            return looked
        time.sleep(POLL)
    raise TimeoutError(f"all_users.json did not reach {want} users in {timeout} s")


# The steps of one drop's path as core/ops/trace.py names them, in order, and which occurrence counts: the last
# before all_users.json showed the drop (the merge), else the first after the step before (an export after the
# merge; a later one, the other copy brought up to date, is not the drop's).
STEPS = (("event", "first"), ("stable", "first"), ("send", "first"), ("enqueued", "first"), ("merge", "first"),
         ("merged", "last"), ("version", "first"), ("export", "first"), ("export-changes", "first"),
         ("export-fsync", "first"), ("export-copy", "first"), ("export-link", "first"), ("exported", "first"))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def run(program: str, args, trace: bool) -> dict:
    """One instance of `program`, its drops; latencies (s), its logged merge times, its drops' timelines."""
    with tempfile.TemporaryDirectory(prefix="swordsec-latency-") as scratch:
        scratch = Path(scratch)
        drop, staging, data = scratch / "drop", scratch / "staging", scratch / "data"
        for folder in (drop, staging):
            folder.mkdir()
        if args.preload:
            datagen.write_array(drop / "preload.json", datagen.users(args.preload, start=10**9))
        command = [program, "--no-ui", "--watch", str(drop), "--data-dir", str(data), "--grpc-listen", "127.0.0.1:0"]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        env = dict(os.environ)
        env.pop("SWORDSEC_TRACE", None)
        if trace:
            env["SWORDSEC_TRACE"] = str(scratch / "trace.log")
        log = open(scratch / "console.log", "wb")
        process = subprocess.Popen(command, cwd=scratch, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
        output = data / "all_users.json"
        latencies: list[float] = []
        drops: list[tuple[str, int, int]] = []  # (name, renamed at, seen at), monotonic ns
        try:
            wait_count(output, args.preload, 600)
            for n in range(args.warmup + args.drops):
                name = f"drop{n:03d}.json"
                datagen.write_array(staging / name, datagen.users(args.users, start=n * args.users))
                began = time.monotonic()
                os.rename(staging / name, drop / name)
                seen = wait_count(output, args.preload + (n + 1) * args.users, 60)
                if n >= args.warmup:
                    latencies.append(seen - began)
                    drops.append((name, int(began * 1e9), int(seen * 1e9)))
                pause = args.interval - (time.monotonic() - began)
                if pause > 0:
                    time.sleep(pause)  # the pace of the drops, not a synchronisation
            users = len(orjson.loads(output.read_bytes()))
            if users != args.preload + (args.warmup + args.drops) * args.users:
                raise RuntimeError(f"all_users.json holds {users} users, not every user dropped")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
        merged = re.findall(rb"merged: .*? in ([0-9.]+) s", (scratch / "console.log").read_bytes())
        timelines = timeline(scratch / "trace.log", drops) if trace else []
    return {"latencies": latencies, "merged": [float(s) for s in merged[-len(latencies):]], "timelines": timelines}


def timeline(trace: Path, drops: list[tuple[str, int, int]]) -> list[dict[str, float]]:
    """Per drop, the seconds from its rename to each step (core/ops/trace.py lines between rename and seen)."""
    lines = []
    for line in trace.read_text().splitlines():
        at, _pid, step, *detail = line.split(" ", 3)
        lines.append((int(at), step, detail[0] if detail else ""))
    lines.sort()
    result = []
    for name, began, seen in drops:
        inside = [(at, step, detail) for at, step, detail in lines if began <= at <= seen]
        found: dict[str, float] = {}
        after = began
        for step, which in STEPS:
            hits = [at for at, kind, detail in inside  # a file's own steps name its path first
                    if kind == step and at >= after and (step not in ("event", "stable", "send") or
                                                         Path(detail.split(" ")[0]).name == name)]
            if hits:
                after = hits[0] if which == "first" else hits[-1]
                found[step] = (after - began) / 1e9
        found["visible"] = (seen - began) / 1e9
        result.append(found)
    return result


def summary(label: str, latencies: list[float]) -> str:
    return (f"{label}: {len(latencies)} drops: p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")


def print_timelines(timelines: list[dict[str, float]]) -> None:
    print("where the time goes (ms from the rename; median / slowest over the drops; the last merge, then the "
          "first export after it):")
    previous = 0.0
    for step in [s for s, _ in STEPS] + ["visible"]:
        values = [t[step] for t in timelines if step in t]
        if not values:
            print(f"  {step:>9}: not seen")
            continue
        median = percentile(values, 0.5)
        print(f"  {step:>9}: {median * 1000:7.1f} / {max(values) * 1000:7.1f}  (+{(median - previous) * 1000:.1f})")
        previous = median


def main(argv=None) -> int:
    args = parse_args(argv)
    ours = str(Path(sys.executable).parent / "swordsec-console")
    programs = [("ours", ours)] + ([("baseline", args.baseline)] if args.baseline else [])
    results: dict[str, list[dict]] = {label: [] for label, _ in programs}
    print(f"{args.drops} drops of {args.users:,} users, {args.interval} s apart, onto {args.preload:,} stored users; "
          f"{args.rounds} round(s)", flush=True)
    for round_ in range(args.rounds):
        order = programs if round_ % 2 == 0 else programs[::-1]
        for label, program in order:
            load = os.getloadavg()[0]
            result = run(program, args, trace=args.trace and label == "ours")
            result["load"] = load
            results[label].append(result)
            print(f"round {round_ + 1} {label} (load {load:.1f}): "
                  + ", ".join(f"{s * 1000:.0f}" for s in result["latencies"])
                  + f" ms; p50 {percentile(result['latencies'], 0.5) * 1000:.0f}", flush=True)
    for line in machine.describe("embedded (the instance's own)"):
        print(line)
    for label, program in programs:
        every = [s for result in results[label] for s in result["latencies"]]
        merged = [s for result in results[label] for s in result["merged"]]
        print(summary(f"{label} ({program})", every))
        if merged:
            print(f"  read to merged, as the instance logs it: p50 {percentile(merged, 0.5) * 1000:.0f} ms, "
                  f"max {max(merged) * 1000:.0f} ms")
    if args.baseline:
        mine = [s for r in results["ours"] for s in r["latencies"]]
        theirs = [s for r in results["baseline"] for s in r["latencies"]]
        print(f"baseline / ours: p50 {percentile(theirs, 0.5) / percentile(mine, 0.5):.2f}x, "
              f"p99 {percentile(theirs, 0.99) / percentile(mine, 0.99):.2f}x")
    if args.trace:
        print_timelines([t for result in results["ours"] for t in result["timelines"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
