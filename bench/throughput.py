"""End-to-end users/second of `swordsec-console --no-ui --once` on one big file, against what merely parsing
that file costs (`orjson.loads`) and against the seed's shape, all in the same run.

Run from the repository root with the project's venv:

    .venv/bin/python bench/throughput.py                    # 1,000,000 users in one file; 2,000 seed users
    .venv/bin/python bench/throughput.py --users 300000 --rounds 3 --seed-users 500

(a) seed's shape: one unary `Users.SendUserInfo` per user to a server that enqueues one RQ job per
    user, 2 forking rq.Worker processes, then one job that writes all_users.json after the others
    (its own files of 1,000 users; its server and workers start outside its clock).
(b) ours: the program itself, `swordsec-console --no-ui --once` over a folder holding the one generated file,
    with its defaults (embedded Redis, one worker per CPU); the clock runs from its start to its exit, start-up
    and the final all_users.json included. --rounds keeps the best of several runs (each on a fresh data dir).
(c) orjson.loads of the same file's bytes (already in memory), best of 3: the speed of merely reading the input.
The ratio (b)/(c) is the issue's measure (goal: at least 15%); (b)/(a) the seed-shape ratio.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import machine
import orjson
import seed_server
from rq import Queue, Worker
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from protobufs import users_pb2, users_pb2_grpc

import datagen
import seed_jobs
from benchredis import BenchRedis, cleanup, open_redis

BENCH_DIR = Path(__file__).resolve().parent
TARGET_SHARE = 0.15


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000,
                        help="users in the one file of our pipeline (default 1000000)")
    parser.add_argument("--seed-users", type=int, default=2_000, help="users for the seed's shape (default 2000)")
    parser.add_argument("--per-file", type=int, default=1_000, help="users per file of the seed (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the seed's shape (default 2)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run our pipeline this many times on fresh namespaces and keep the best (default 1)")
    parser.add_argument("--redis-url", default=None,
                        help="Redis of the seed's shape (default: redis://127.0.0.1:6379 if it answers, else an embedded one)")
    parser.add_argument("--ours-redis-url", default=None,
                        help="Redis for our pipeline (default: its own embedded one, as --no-ui --once runs)")
    parser.add_argument("--baseline", default=None, metavar="PROGRAM",
                        help="another build's swordsec-console (an older checkout's venv): run in rounds alternating "
                             "with ours on the same file, and its best round printed beside ours")
    return parser.parse_args(argv)


def wait_for(condition, timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(step)


def count_users(path: Path) -> tuple[int, int]:
    """(records, distinct emails) in an all_users.json."""
    users = orjson.loads(path.read_bytes())
    return len(users), len({u["email"].strip().lower() for u in users})


# -- (a) the seed's shape -----------------------------------------------------------------------------
def read_seed_users(paths: list[Path], limit: int):
    """The seed client read each file whole with the json module and sent its users one by one."""
    sent = 0
    for path in paths:
        with open(path) as handle:
            for user in json.load(handle):
                if sent == limit:
                    return
                yield user
                sent += 1


def start_seed_workers(redis_url: str, queue_name: str, count: int) -> list[subprocess.Popen]:
    env = dict(os.environ, BENCH_REDIS_URL=redis_url)
    return [subprocess.Popen([sys.executable, str(BENCH_DIR / "seed_worker.py"), queue_name], env=env,
                             cwd=BENCH_DIR, stdin=subprocess.DEVNULL) for _ in range(count)]


def stop_processes(processes: list[subprocess.Popen], grace: float = 15.0) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_seed(bench: BenchRedis, paths: list[Path], users: int, workers: int, out_dir: Path) -> dict:
    namespace = f"benchseed-{uuid.uuid4().hex[:10]}"
    queue = Queue(namespace, connection=bench.connection)
    output = out_dir / "seed_all_users.json"
    processes = start_seed_workers(bench.url, namespace, workers)
    server, port = seed_server.serve(queue, namespace)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    names: list[str] = []
    try:
        wait_for(lambda: len(Worker.all(queue=queue)) >= workers, 30, "seed workers to register")
        names = [w.name for w in Worker.all(queue=queue)]
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = users_pb2_grpc.UsersStub(channel)
        finished = FinishedJobRegistry(queue=queue)
        failed = FailedJobRegistry(queue=queue)
        started = time.perf_counter()
        sent = 0
        for user in read_seed_users(paths, users):
            stub.SendUserInfo(users_pb2.UserRequest(**user))
            sent += 1
        rpc_done = time.perf_counter()
        # The final write must come after every per-user job, so it is queued once they have all ended.
        wait_for(lambda: finished.count + failed.count >= sent, 3600, "seed jobs", step=0.01)
        final = queue.enqueue(seed_jobs.write_all_users, namespace, str(output))
        wait_for(lambda: final.get_status(refresh=True) in ("finished", "failed"), 600, "the final job", step=0.01)
        seconds = time.perf_counter() - started
        records, distinct = count_users(output)
        return {"users": sent, "seconds": seconds, "rpc_seconds": rpc_done - started, "records": records,
                "distinct": distinct, "failed": failed.count}
    finally:
        channel.close()
        server.stop(1).wait()
        stop_processes(processes)
        cleanup(bench.connection, namespace, [namespace], names)


# -- (b) our pipeline -----------------------------------------------------------------------------------
OURS = str(Path(sys.executable).parent / "swordsec-console")


def run_ours(folder: Path, users: int, out_dir: Path, redis_url: str | None, program: str = OURS) -> dict:
    """The program, headless and once, as a user runs it; its own embedded Redis unless redis_url is given."""
    command = [program, "--no-ui", "--once", "--watch", str(folder),
               "--data-dir", str(out_dir / "data"), "--grpc-listen", "127.0.0.1:0"]
    namespace = f"benchours-{uuid.uuid4().hex[:10]}"
    if redis_url:
        command += ["--redis-url", redis_url, "--namespace", namespace]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=out_dir, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if redis_url:
        import redis

        connection = redis.Redis.from_url(redis_url)
        cleanup(connection, namespace, [namespace])
        connection.close()
    if done.returncode != 0:
        raise RuntimeError(f"swordsec-console exited {done.returncode}: {done.stderr[-2000:]}")
    records, distinct = count_users(out_dir / "data" / "all_users.json")
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return {"users": users, "seconds": seconds, "records": records, "distinct": distinct, "summary": summary}


# -- (c) merely parsing the input -------------------------------------------------------------------------
def run_orjson(path: Path, users: int, rounds: int = 3) -> dict:
    data = path.read_bytes()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        parsed = orjson.loads(data)
        best = min(best, time.perf_counter() - started)
        assert len(parsed) == users
        del parsed
    return {"users": users, "seconds": best}


# -- report ---------------------------------------------------------------------------------------------
def report(redis_kind: str, seed: dict, ours: dict, parse: dict, rounds: list[float]) -> None:
    seed_rate = seed["users"] / seed["seconds"]
    ours_rate = ours["users"] / ours["seconds"]
    parse_rate = parse["users"] / parse["seconds"]
    for line in machine.describe(f"{redis_kind} (seed's shape); ours: its own embedded Redis unless told"):
        print(line)
    print(f"(a) seed's shape: {seed['users']} users in {seed['seconds']:.2f} s = {seed_rate:,.0f} users/s "
          f"(unary RPCs done at {seed['rpc_seconds']:.2f} s; all_users.json holds {seed['records']} records, "
          f"{seed['distinct']} distinct emails; {seed['failed']} jobs failed)")
    print(f"(b) our pipeline: {ours['users']:,} users in one file through --no-ui --once in {ours['seconds']:.2f} s "
          f"(start-up included) = {ours_rate:,.0f} users/s (all_users.json holds {ours['records']:,} records, "
          f"{ours['distinct']:,} distinct emails)")
    print(f"    {ours['summary']}")
    if len(rounds) > 1:
        print(f"    best of {len(rounds)} rounds (median {statistics.median(rounds):.2f} s); all: "
              + ", ".join(f"{s:.2f} s" for s in rounds))
    print(f"(c) orjson.loads of the same file: {parse['seconds']:.2f} s = {parse_rate:,.0f} users/s (best of 3)")
    ratio = ours_rate / parse_rate
    print(f"ours / orjson.loads: {ratio:.1%} ({'meets' if ratio >= TARGET_SHARE else 'misses'} the "
          f"{TARGET_SHARE:.0%} goal); ours / seed's shape: {ours_rate / seed_rate:,.0f}x")
    for name, run in (("seed", seed), ("ours", ours)):
        if run["distinct"] != run["users"]:
            print(f"WARNING: {name} all_users.json has {run['distinct']} distinct users, expected {run['users']}")


def median(runs: list[dict]) -> float:
    return statistics.median(run["seconds"] for run in runs)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swordsec-bench-") as scratch:
        scratch = Path(scratch)
        print(f"generating {args.users:,} users in one file ...", flush=True)
        big = scratch / "drop" / "users.json"
        big.parent.mkdir()
        datagen.write_array(big, datagen.users(args.users))
        seed_paths = datagen.write_files(scratch / "seed", args.seed_users, args.per_file)
        bench = open_redis(args.redis_url, scratch / "redis")
        try:
            print(f"(a) seed's shape on {args.seed_users:,} users ...", flush=True)
            seed = run_seed(bench, seed_paths, args.seed_users, args.workers, scratch)
            redis_kind = f"{bench.kind} {bench.version()}"
        finally:
            bench.close()
        ours, baseline = [], []
        for round_ in range(max(1, args.rounds)):
            # Alternating (ABBA...) so a change in the machine's load falls on both sides alike.
            order = [(OURS, ours), (args.baseline, baseline)] if args.baseline else [(OURS, ours)]
            for program, runs in (order if round_ % 2 == 0 else order[::-1]):
                label = "our pipeline" if runs is ours else f"baseline {program}"
                print(f"(b) {label} on {args.users:,} (round {round_ + 1}) ...", flush=True)
                out = scratch / f"round{round_}-{'ours' if runs is ours else 'baseline'}"
                out.mkdir()
                runs.append(run_ours(big.parent, args.users, out, args.ours_redis_url, program))
        print("(c) orjson.loads of the same file ...", flush=True)
        parse = run_orjson(big, args.users)
        best = min(ours, key=lambda run: run["seconds"])
        report(redis_kind, seed, best, parse, [run["seconds"] for run in ours])
        if baseline:
            old = min(baseline, key=lambda run: run["seconds"])
            every = ", ".join(f"{run['seconds']:.2f} s" for run in baseline)
            print(f"baseline {args.baseline}: best {old['seconds']:.2f} s = {old['users'] / old['seconds']:,.0f} "
                  f"users/s ({old['users'] / old['seconds'] / (parse['users'] / parse['seconds']):.1%} of orjson.loads; "
                  f"all: {every}); "
                  f"ours / baseline: {old['seconds'] / best['seconds']:.2f}x best against best, "
                  f"{median(baseline) / median(ours):.2f}x median against median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
