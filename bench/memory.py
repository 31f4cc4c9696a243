"""Peak memory of every process while the headless product ingests one huge file.

Run from the repository root with the project's venv:

    .venv/bin/python bench/memory.py                      # 1,000,000 users in one JSON array (~300 MB)
    .venv/bin/python bench/memory.py --users 100000 --redis-url redis://127.0.0.1:6379

It writes the file into a temporary `drop/`, runs `swordsec-console --no-ui --once` on it as a
subprocess (embedded Redis unless --redis-url is given, so redis-server is part of the measured
tree), samples the RSS of every process in the tree from /proc every 100 ms (console, redis-server,
workers and their forked work-horses), and prints the peak of each, the time and users/s.
RSS counts pages a forked work-horse still shares with its worker, so their sum overstates the total.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine
from rss import TreeSampler

import datagen

LIMIT_MB = 300


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000, help="users in the file (default 1000000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of the embedded one")
    parser.add_argument("--interval", type=float, default=0.1, help="sampling period in seconds (default 0.1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    return parser.parse_args(argv)


def console_command(args: argparse.Namespace) -> list[str]:
    script = Path(sys.executable).with_name("swordsec-console")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "console.cli"]
    command += ["--no-ui", "--once", "--workers", str(args.workers), "--grpc-listen", "127.0.0.1:0"]
    if args.redis_url:
        command += ["--redis-url", args.redis_url]
    return command


def run(command: list[str], cwd: Path, interval: float) -> tuple[int, float, TreeSampler, str]:
    log = cwd / "console.log"
    with open(log, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(process.pid, interval).start()
        code = process.wait()
        seconds = time.perf_counter() - started
        sampler.stop()
    return code, seconds, sampler, log.read_text(errors="replace")


def report(users: int, size: int, code: int, seconds: float, sampler: TreeSampler, output: str, redis_line: str):
    for line in machine.describe(redis_line):
        print(line)
    print(f"file: {users:,} users, {size / 1e6:.0f} MB; console exit code {code}")
    summary = [line for line in output.splitlines() if "all_users.json holds" in line]
    print("summary: " + (summary[-1] if summary else "(none: see the log below)"))
    inner = re.search(r"; ([\d.]+) s$", summary[-1]) if summary else None
    print(f"time: {seconds:.1f} s wall including start and stop = {users / seconds:,.0f} users/s"
          + (f"; ingest {float(inner.group(1)):.1f} s = {users / float(inner.group(1)):,.0f} users/s" if inner else ""))
    print(f"peak RSS per process ({sampler.samples} samples every {sampler.interval * 1000:.0f} ms):")
    horses = [p for p in sampler.peaks.values() if p.role == "work-horse"]
    for peak in sorted((p for p in sampler.peaks.values() if p.role != "work-horse"), key=lambda p: p.first_seen):
        flag = "  OVER LIMIT" if peak.rss > LIMIT_MB * 2**20 else ""
        print(f"  {peak.role:<13} pid {peak.pid:<7} {peak.rss / 2**20:8.1f} MB{flag}")
    if horses:
        top = max(horses, key=lambda p: p.rss)
        flag = "  OVER LIMIT" if top.rss > LIMIT_MB * 2**20 else ""
        print(f"  work-horses   {len(horses)} seen, largest pid {top.pid} {top.rss / 2**20:8.1f} MB{flag}")
    worst = max(sampler.peaks.values(), key=lambda p: p.rss)
    print(f"largest process: {worst.role} {worst.rss / 2**20:.1f} MB (limit {LIMIT_MB} MB); "
          f"peak sum over the tree {sampler.peak_total / 2**20:.1f} MB")
    # The baseline is the input itself: a store that grows with the data is fine, one that outgrows it is not.
    servers = [p.rss for p in sampler.peaks.values() if p.role == "redis-server"]
    if servers:
        print(f"redis-server peak RSS / input file size = {max(servers) / size:.2f}x "
              f"({max(servers) / users:,.0f} bytes per user)")
    if code != 0:
        print("console output (last lines):\n  " + "\n  ".join(output.splitlines()[-8:]))


def main(argv=None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="swordsec-memory-"))
    try:
        (scratch / "drop").mkdir()
        path = scratch / "drop" / "users.json"
        print(f"generating {args.users:,} users into {path} ...", flush=True)
        datagen.write_array(path, datagen.users(args.users))
        print("running: " + " ".join(console_command(args)), flush=True)
        code, seconds, sampler, output = run(console_command(args), scratch, args.interval)
        where = "external " + args.redis_url if args.redis_url else "embedded (in the measured tree)"
        report(args.users, path.stat().st_size, code, seconds, sampler, output, where)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
