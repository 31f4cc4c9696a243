"""Latency of a small drop: a 1,000-user file renamed into the folder of a running instance, until
all_users.json holds its users.

Run from the repository root with the project's venv:

    .venv/bin/python bench/drop_latency.py                      # 20 drops of 1,000 users, 1 s apart
    .venv/bin/python bench/drop_latency.py --drops 50 --users 1000 --interval 0.5 --preload 100000

One `swordsec-console --no-ui` (its embedded Redis, its default workers) runs in a scratch folder; with
--preload it first ingests that many users, so the drops land on a store of that size. Each drop is written
outside the folder and renamed in (a whole file, read at once), after --warmup drops that are not counted (the
instance's workers may still be starting); the clock runs from the rename to the first moment all_users.json
holds every user dropped so far (the file is read whenever its size or mtime moves,
polled every 2 ms). Prints every latency, p50 and p99 (nearest rank: with 20 drops p99 is the slowest).
Figures are printed, never asserted.
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
        return key, len(orjson.loads(path.read_bytes()))
    except (OSError, orjson.JSONDecodeError):  # replaced while read: look again
        return last, None


def wait_count(path: Path, want: int, timeout: float) -> float:
    """Poll all_users.json until it holds `want` users; the monotonic time it was first seen."""
    deadline = time.monotonic() + timeout
    last: tuple = ()
    while time.monotonic() < deadline:
        last, count = exported(path, last)
        if count is not None and count >= want:
            return time.monotonic()
        time.sleep(POLL)
    raise TimeoutError(f"all_users.json did not reach {want} users in {timeout} s")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swordsec-latency-") as scratch:
        scratch = Path(scratch)
        drop, staging, data = scratch / "drop", scratch / "staging", scratch / "data"
        for folder in (drop, staging):
            folder.mkdir()
        if args.preload:
            datagen.write_array(drop / "preload.json", datagen.users(args.preload, start=10**9))
        command = [str(Path(sys.executable).parent / "swordsec-console"), "--no-ui", "--watch", str(drop), "--data-dir", str(data),
                   "--grpc-listen", "127.0.0.1:0"]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        log = open(scratch / "console.log", "wb")
        process = subprocess.Popen(command, cwd=scratch, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        output = data / "all_users.json"
        latencies: list[float] = []
        try:
            wait_count(output, args.preload, 600)
            print(f"instance ready with {args.preload:,} users; dropping {args.drops} files of {args.users:,} ...",
                  flush=True)
            for n in range(args.warmup + args.drops):
                name = f"drop{n:03d}.json"
                datagen.write_array(staging / name, datagen.users(args.users, start=n * args.users))
                began = time.monotonic()
                os.rename(staging / name, drop / name)
                seen = wait_count(output, args.preload + (n + 1) * args.users, 60)
                if n >= args.warmup:
                    latencies.append(seen - began)
                pause = args.interval - (time.monotonic() - began)
                if pause > 0:
                    time.sleep(pause)  # the pace of the drops, not a synchronisation
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
        merged = re.findall(rb"merged: .*? in ([0-9.]+) s", (scratch / "console.log").read_bytes())
    for line in machine.describe("embedded (the instance's own)"):
        print(line)
    print("latencies (ms): " + ", ".join(f"{s * 1000:.0f}" for s in latencies))
    print("of which read to merged, as the instance logs it (ms): "
          + ", ".join(f"{float(s) * 1000:.0f}" for s in merged[-len(latencies):]))
    print(f"{len(latencies)} drops of {args.users:,} users onto {args.preload:,} stored: "
          f"p50 {percentile(latencies, 0.5) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
