"""A whole write of all_users.json from a full store: wall time, this process's CPU and Redis's CPU per user.

Run from the repository root with the project's venv:

    .venv/bin/python bench/export.py                                # 1,000,000 users, 3 rounds
    .venv/bin/python bench/export.py --users 200000 --baseline OLD  # OLD: another checkout with its own .venv
    .venv/bin/python bench/export.py --split                        # the console's writer, alone or with its helper

The store is filled once (generated users, merged directly by Store.merge_batch, no pipeline), then each
round writes the file with Store.export in a fresh process: this checkout's, and with --baseline the other
checkout's (its own code and venv, on the same keys), alternating. With --split each round is the console's own
writer (ViewFile, a first whole write) instead, in this checkout, alone and with the helper process that takes
part of the buckets (core/storage/splitwrite.py), alternating; the helper's CPU is counted with this process's.
Redis's CPU is read from /proc for its
process, so it must run on this machine: the machine's Redis when it answers, else an embedded one.
Figures are printed, never asserted; the machine's load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import machine

from core.storage.store import Store

import datagen
from benchredis import cleanup, open_redis

ROOT = Path(__file__).resolve().parent.parent

# One round, run by `python -c` in the checkout measured (its own Store), on the keys filled here.
ROUND = """
import json, os, sys, time, redis
sys.path.insert(0, os.getcwd())
from core.storage.store import Store
connection = redis.Redis.from_url(sys.argv[1])
stat = f"/proc/{connection.info('server')['process_id']}/stat"
def server_cpu():  # utime + stime of the redis-server process, in seconds
    fields = open(stat).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
mode, store = sys.argv[4], Store(connection, sys.argv[2])
before, cpu, wall = server_cpu(), time.process_time(), time.perf_counter()
if mode == "store":
    info = store.export(sys.argv[3])
else:
    import resource
    from pathlib import Path
    from core.storage.viewfile import ViewFile
    view = ViewFile(store, Path(sys.argv[3]), split_url=sys.argv[1] if mode == "split" else None)
    info = view.write()
    assert not view.split_failures, view.split_failures
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu -= children.ru_utime + children.ru_stime
print(json.dumps({"wall": time.perf_counter() - wall, "ours": time.process_time() - cpu,
                  "redis": server_cpu() - before, "count": info["count"]}))
"""


def fill(store, users: int) -> None:
    from core.records import normalise

    attempt = store.begin_attempt("bench", state="streaming")
    generated = datagen.users(users)
    for first in range(0, users, 1000):
        batch = [normalise(next(generated)) for _ in range(min(1000, users - first))]
        store.merge_batch("bench", attempt, f"{first}:{len(batch)}", store.reserve_seq(len(batch)), batch, "email")


def one_round(checkout: Path, url: str, namespace: str, folder: Path, mode: str) -> dict:
    python = checkout / ".venv" / "bin" / "python"
    folder.mkdir()
    done = subprocess.run([str(python), "-c", ROUND, url, namespace, str(folder / "all_users.json"), mode],
                          cwd=checkout, capture_output=True, text=True)
    shutil.rmtree(folder)  # a ViewFile's copies and layouts too: the next round writes whole again
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="users in the store (default 1000000)")
    parser.add_argument("--rounds", type=int, default=3, help="writes per checkout, alternating (default 3)")
    parser.add_argument("--baseline", type=Path, help="another checkout (with its own .venv) to run in turn")
    parser.add_argument("--split", action="store_true",
                        help="the console's writer in this checkout, alone against with its helper process")
    parser.add_argument("--redis-url", help="a Redis on this machine (default: the machine's, else embedded)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-export-") as scratch:
        bench = open_redis(args.redis_url, Path(scratch))
        namespace = f"benchexport-{uuid.uuid4().hex[:10]}"
        try:
            print(f"filling {args.users:,} users ...", flush=True)
            fill(Store(bench.connection, namespace), args.users)
            if args.split:
                sides = [("split", ROOT, "split"), ("alone", ROOT, "view")]
                writer = "the console's writer (ViewFile)"
            else:
                sides = [("ours", ROOT, "store")] + ([("baseline", args.baseline.resolve(), "store")]
                                                     if args.baseline else [])
                writer = "Store.export"
            results: dict[str, list[dict]] = {name: [] for name, _, _ in sides}
            for round_number in range(args.rounds):
                for name, checkout, mode in sides if round_number % 2 == 0 else sides[::-1]:
                    folder = Path(scratch) / f"round-{round_number}-{name}"
                    results[name].append(one_round(checkout, bench.url, namespace, folder, mode))
            for line in machine.describe(f"{bench.kind} {bench.version()}"):
                print(line)
            print(f"a whole all_users.json of {args.users:,} users, {writer} in a fresh process, {args.rounds} "
                  f"rounds alternating:")
            best = {}
            for name, checkout, _ in sides:
                rows = results[name]
                best[name] = min(row["wall"] for row in rows)
                each = ", ".join(f"{row['wall']:.2f} s" for row in rows)
                ours = min(row["ours"] for row in rows) / args.users * 1e6
                server = min(row["redis"] for row in rows) / args.users * 1e6
                print(f"  {name:8} ({checkout}): best {best[name]:.2f} s (all: {each}); CPU per user, best round: "
                      f"this process {ours:.2f} µs, Redis {server:.2f} µs; {rows[0]['count']:,} users written")
            if args.baseline and not args.split:
                print(f"  ours / baseline: {best['baseline'] / best['ours']:.2f}x (best wall time against best)")
            if args.split:
                print(f"  split / alone: {best['alone'] / best['split']:.2f}x (best wall time against best)")
        finally:
            cleanup(bench.connection, namespace, [])
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
