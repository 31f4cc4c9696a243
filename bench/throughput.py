"""End-to-end users/second: the seed's shape against our pipeline, on the same generated data.

Run from the repository root with the project's venv:

    .venv/bin/python bench/throughput.py                    # 2,000 seed users, 100,000 ours
    .venv/bin/python bench/throughput.py --users 20000 --seed-users 500 --redis-url redis://127.0.0.1:6379
    .venv/bin/python bench/throughput.py --rounds 3          # best of 3 runs of ours (a busy machine is noisy)

(a) seed's shape: one unary `Users.SendUserInfo` per user to a server that enqueues one RQ job per
    user, 2 forking rq.Worker processes, then one job that writes all_users.json after the others.
(b) ours: core.runtime.Runtime with 2 workers on a fresh namespace, `run_once()` over the folder.
Both clocks run from the first file read to all users present in all_users.json; server and worker
start-up are outside the clock in both. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
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
TARGET_RATIO = 400


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000, help="users for our pipeline (default 100000)")
    parser.add_argument("--seed-users", type=int, default=2_000, help="users for the seed's shape (default 2000)")
    parser.add_argument("--per-file", type=int, default=1_000, help="users per generated file (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes on both sides (default 2)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run our pipeline this many times on fresh namespaces and keep the best (default 1)")
    parser.add_argument("--redis-url", default=None,
                        help="Redis to use (default: redis://127.0.0.1:6379 if it answers, else an embedded one)")
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
def run_ours(bench: BenchRedis, folder: Path, users: int, workers: int, out_dir: Path) -> dict:
    from core.config import Settings
    from core.runtime import Runtime

    namespace = f"benchours-{uuid.uuid4().hex[:10]}"
    settings = Settings.build({"watch": folder, "data_dir": out_dir / "data", "redis_url": bench.url,
                               "grpc_listen": "127.0.0.1:0", "workers": workers, "namespace": namespace},
                              environ={})
    runtime = Runtime(settings, watch=False)
    names: list[str] = []
    try:
        runtime.start()
        wait_for(lambda: len(Worker.all(queue=runtime.queue)) >= workers, 30, "our workers to register")
        names = [w.name for w in Worker.all(queue=runtime.queue)]
        runtime.client.wait_ready()
        started = time.perf_counter()
        summary = runtime.run_once()
        seconds = time.perf_counter() - started
        records, distinct = count_users(settings.output_path)
        return {"users": users, "seconds": seconds, "records": records, "distinct": distinct,
                "summary": summary.line()}
    finally:
        runtime.stop()
        cleanup(bench.connection, namespace, [namespace], names)


# -- report ---------------------------------------------------------------------------------------------
def report(bench: BenchRedis, seed: dict, ours: dict, rounds: list[float]) -> None:
    seed_rate = seed["users"] / seed["seconds"]
    ours_rate = ours["users"] / ours["seconds"]
    ratio = ours_rate / seed_rate
    for line in machine.describe(f"{bench.kind} {bench.version()}"):
        print(line)
    print(f"(a) seed's shape: {seed['users']} users in {seed['seconds']:.2f} s = {seed_rate:,.0f} users/s "
          f"(unary RPCs done at {seed['rpc_seconds']:.2f} s; all_users.json holds {seed['records']} records, "
          f"{seed['distinct']} distinct emails; {seed['failed']} jobs failed)")
    print(f"(b) our pipeline: {ours['users']} users in {ours['seconds']:.2f} s = {ours_rate:,.0f} users/s "
          f"(all_users.json holds {ours['records']} records, {ours['distinct']} distinct emails)")
    print(f"    {ours['summary']}")
    if len(rounds) > 1:
        print(f"    best of {len(rounds)} rounds; all: " + ", ".join(f"{s:.2f} s" for s in rounds))
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"ratio: {ratio:,.0f}x ({verdict} the {TARGET_RATIO}x target)")
    for name, run in (("seed", seed), ("ours", ours)):
        if run["distinct"] != run["users"]:
            print(f"WARNING: {name} all_users.json has {run['distinct']} distinct users, expected {run['users']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swordsec-bench-") as scratch:
        scratch = Path(scratch)
        print(f"generating {args.users:,} users in files of {args.per_file:,} ...", flush=True)
        paths = datagen.write_files(scratch / "drop", args.users, args.per_file)
        bench = open_redis(args.redis_url, scratch / "redis")
        try:
            print(f"(a) seed's shape on the first {args.seed_users:,} of them ...", flush=True)
            seed = run_seed(bench, paths, args.seed_users, args.workers, scratch)
            ours = []
            for round_ in range(max(1, args.rounds)):
                print(f"(b) our pipeline on all {args.users:,} (round {round_ + 1}) ...", flush=True)
                ours.append(run_ours(bench, scratch / "drop", args.users, args.workers, scratch / f"round{round_}"))
            report(bench, seed, min(ours, key=lambda run: run["seconds"]), [run["seconds"] for run in ours])
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
