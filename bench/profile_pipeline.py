"""Where the time of our pipeline goes: CPU seconds per process, and optionally a function profile.

Run from the repository root with the project's venv:

    .venv/bin/python bench/profile_pipeline.py                      # CPU per process, 100,000 users
    .venv/bin/python bench/profile_pipeline.py --yappi 30           # + top 30 functions of the console
    .venv/bin/py-spy record --subprocesses -o /tmp/flame.svg -- .venv/bin/python bench/profile_pipeline.py

The console process (watcher, gRPC client and server, exporter) is profiled with yappi because it
sees every thread; workers and Redis are accounted by their CPU time in /proc (the worker's child
time includes its reaped work-horses).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rq import Worker

import datagen
from benchredis import cleanup, open_redis

TICK = os.sysconf("SC_CLK_TCK")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--per-file", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="override Settings.batch_size")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--yappi", type=int, default=0, metavar="N", help="print the N costliest console functions")
    return parser.parse_args(argv)


def cpu_of(pid: int) -> tuple[float, float]:
    """(own CPU seconds, CPU seconds of reaped children) of a process."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        stat = handle.read()
    fields = stat[stat.rfind(b")") + 2:].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def console_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def snapshot(worker_pids: list[int], redis_pid: int | None) -> dict:
    shot = {"console": console_cpu()}
    for n, pid in enumerate(worker_pids):
        own, horses = cpu_of(pid)
        shot[f"worker {n + 1}"] = own
        shot[f"work-horses of worker {n + 1}"] = horses
    if redis_pid:
        shot["redis-server"] = sum(cpu_of(redis_pid))
    return shot


def redis_pid(connection) -> int | None:
    pid = int(connection.info("server").get("process_id", 0))
    return pid if pid and Path(f"/proc/{pid}").exists() else None


class Phases:
    """Wall time spent inside chosen methods, wrapped on the instances (core/ stays untouched)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner, method: str, label: str) -> None:
        original = getattr(owner, method)

        def timed(*a, **k):
            started = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, method, timed)


def run(args, bench, folder: Path, scratch: Path):
    from core.config import Settings
    from core.runtime import Runtime

    namespace = f"benchprof-{uuid.uuid4().hex[:10]}"
    flags = {"watch": folder, "data_dir": scratch / "data", "redis_url": bench.url, "grpc_listen": "127.0.0.1:0",
             "workers": args.workers, "namespace": namespace, "batch_size": args.batch_size}
    runtime = Runtime(Settings.build(flags, environ={}), watch=False)
    names: list[str] = []
    try:
        runtime.start()
        deadline = time.monotonic() + 30
        while len(Worker.all(queue=runtime.queue)) < args.workers and time.monotonic() < deadline:
            time.sleep(0.02)
        names = [w.name for w in Worker.all(queue=runtime.queue)]
        runtime.client.wait_ready()
        pids = [w["pid"] for w in runtime.supervisor.processes()]
        phases = Phases()
        phases.wrap(runtime.watcher, "ingest", "send files (fingerprint, ledger, gRPC stream)")
        phases.wrap(runtime.watcher.client, "send_file", "  of which gRPC stream")
        phases.wrap(runtime, "wait_merged", "wait for workers after the last file")
        phases.wrap(runtime.store, "export", "all_users.json exports (background + final)")
        before = snapshot(pids, redis_pid(bench.connection))
        if args.yappi:
            import yappi  # not a project dependency: `.venv/bin/pip install yappi`
            yappi.set_clock_type("cpu")
            yappi.start()
        started = time.perf_counter()
        summary = runtime.run_once()
        seconds = time.perf_counter() - started
        if args.yappi:
            yappi.stop()
        after = snapshot(pids, redis_pid(bench.connection))
        return summary, seconds, before, after, phases
    finally:
        runtime.stop()
        cleanup(bench.connection, namespace, [namespace], names)


def report(users: int, seconds: float, before: dict, after: dict, phases: Phases, summary, top: int) -> None:
    print(summary.line())
    print(f"wall {seconds:.2f} s = {users / seconds:,.0f} users/s; CPU seconds by process during the run:")
    total = 0.0
    for name in after:
        used = after[name] - before[name]
        total += used
        print(f"  {name:<26} {used:6.2f} s  ({used / seconds:5.0%} of one core)")
    print(f"  {'total':<26} {total:6.2f} s  (machine has {os.cpu_count()} cores: "
          f"{total / seconds / os.cpu_count():.0%} busy)")
    print("wall time inside phases (exports overlap the others):")
    for label, spent in phases.seconds.items():
        print(f"  {label:<48} {spent:6.2f} s in {phases.calls[label]} call(s)")
    if top:
        import yappi
        print(f"console: top {top} functions by total CPU (all threads):")
        stats = yappi.get_func_stats()
        stats.sort("ttot", "desc")
        for row in list(stats)[:top]:
            print(f"  {row.ttot:7.2f} tot {row.tsub:7.2f} self {row.ncall:9d} calls  {row.module.rsplit('/', 1)[-1]}"
                  f":{row.lineno} {row.name}")


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swordsec-prof-") as scratch:
        scratch = Path(scratch)
        datagen.write_files(scratch / "drop", args.users, args.per_file)
        bench = open_redis(args.redis_url, scratch / "redis")
        try:
            summary, seconds, before, after, phases = run(args, bench, scratch / "drop", scratch)
        finally:
            bench.close()
    report(args.users, seconds, before, after, phases, summary, args.yappi)
    return 0


if __name__ == "__main__":
    sys.exit(main())
