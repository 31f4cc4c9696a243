"""What an attached console costs: its CPU and Redis commands per second at idle and during a 100,000-user
ingest, and the ingest's time with and without it, in the same run (rounds alternate without / with, ABBA).

The pipeline runs as `swordsec-console --no-ui` in a process of its own; the attached console
(core.ops.attached + the real Textual app, headless) runs in this process, so this process's CPU time is
the console's, and its Redis commands are counted on its own connections.

    .venv/bin/python bench/attach.py [--users 100000] [--rounds 4] [--no-nice] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchredis import cleanup, open_redis  # noqa: E402
from datagen import users, write_array  # noqa: E402

IDLE_SECONDS = 10.0
PER_FILE = 10_000


class CommandCounter:
    """Counts the commands sent on one client's connections (pipelines count each command)."""

    def __init__(self, client) -> None:
        self.count = 0
        self._lock = threading.Lock()
        pool = client.connection_pool
        original = pool.get_connection

        def get_connection(*args, **kwargs):
            connection = original(*args, **kwargs)
            if not getattr(connection, "_bench_counted", False):
                one, many = connection.pack_command, connection.pack_commands
                connection.pack_command = lambda *a: (self._add(1), one(*a))[1]
                connection.pack_commands = lambda commands: (self._add(len(commands)), many(commands))[1]
                connection._bench_counted = True
            return connection

        pool.get_connection = get_connection

    def _add(self, n: int) -> None:
        with self._lock:
            self.count += n


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000, help="users per ingest (default 100,000)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="pairs of ingests without and with the console, in ABBA order (default 4)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--redis-url", help="Redis to use (default: the machine's, else an embedded one)")
    parser.add_argument("--no-nice", action="store_true",
                        help="keep the console at the usual priority (the attach command lowers it)")
    return parser.parse_args(argv)


def wait_for(condition, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(step)
    return value


def start_pipeline(url: str, namespace: str, work: Path, workers: int) -> subprocess.Popen:
    log = open(work / "pipeline.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "console.cli", "--no-ui", "--redis-url", url, "--namespace", namespace,
         "--watch", str(work / "drop"), "--data-dir", str(work / "data"), "--grpc-listen", "127.0.0.1:0",
         "--workers", str(workers), "--quiet-period", "0.3"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def ingest(connection, namespace: str, work: Path, total: int, start: int) -> float:
    """Drop `total` new users (files of PER_FILE) and time until the store holds them all."""
    from core.storage.store import Store

    store = Store(connection, namespace)
    before = store.count()
    staging = work / "staging"
    staging.mkdir(exist_ok=True)
    paths = []
    for index, offset in enumerate(range(0, total, PER_FILE)):
        path = staging / f"r{start}-{index}.json"
        write_array(path, users(min(PER_FILE, total - offset), start=start + offset))
        paths.append(path)
    began = time.perf_counter()
    for path in paths:
        shutil.move(path, work / "drop" / path.name)
    wait_for(lambda: store.count() >= before + total, 600, f"{total} users merged", step=0.1)
    return time.perf_counter() - began


async def measure(args, bench, namespace: str, work: Path) -> dict:
    from console.commands import yield_cpu
    from core.config import Settings

    settings = Settings.build({"redis_url": bench.url, "namespace": namespace, "data_dir": work / "attach"},
                              environ={}, listens=False)
    if not args.no_nice:
        yield_cpu()  # as the attach command does: this process is the console (the pipeline is another one)
    results: dict = {"without": [], "with": []}
    offset = args.users
    ingest(bench.connection, namespace, work, args.users, 0)  # warm-up, not counted: the pipeline's caches fill
    for index in range(args.rounds):
        # ABBA: without-with, then with-without, so a store that grows from round to round favours neither.
        for attached in ((False, True) if index % 2 == 0 else (True, False)):
            if not attached:
                results["without"].append(ingest(bench.connection, namespace, work, args.users, offset))
            else:
                results["with"].append(await ingest_attached(args, bench, settings, namespace, work, offset, results))
            offset += args.users
    return results


async def ingest_attached(args, bench, settings, namespace: str, work: Path, offset: int, results: dict) -> float:
    """One ingest with a console attached (and, the first time, its idle figures before it)."""
    from console.app import make_app
    from core.ops.attached import AttachedRuntime

    runtime = AttachedRuntime(settings).start()
    counter = CommandCounter(runtime.broker.client)
    app = make_app(runtime, start_runtime=False)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            while app.snapshot is None:
                await pilot.pause(0.1)
            if "idle" not in results:
                cpu, commands, began = time.process_time(), counter.count, time.perf_counter()
                await pilot.pause(IDLE_SECONDS)
                seconds = time.perf_counter() - began
                results["idle"] = ((time.process_time() - cpu) / seconds, (counter.count - commands) / seconds)
            cpu, commands = time.process_time(), counter.count
            seconds = await asyncio.to_thread(ingest, bench.connection, namespace, work, args.users, offset)
            results.setdefault("busy", []).append(((time.process_time() - cpu) / seconds,
                                                   (counter.count - commands) / seconds))
            await pilot.press("q")
    finally:
        runtime.stop()
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-attach-"))
    (work / "drop").mkdir()
    bench = open_redis(args.redis_url, work / "redis")
    namespace = f"benchattach-{uuid.uuid4().hex[:8]}"
    pipeline = start_pipeline(bench.url, namespace, work, args.workers)
    try:
        from core.ops.owner import read_presence

        wait_for(lambda: read_presence(bench.connection, namespace), 60, "the pipeline to start")
        results = asyncio.run(measure(args, bench, namespace, work))
    finally:
        pipeline.terminate()
        pipeline.wait(60)
        cleanup(bench.connection, namespace, [namespace])
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    from console.commands import ATTACH_NICE

    idle_cpu, idle_rate = results["idle"]
    busy_cpu = statistics.median(c for c, _ in results["busy"])
    busy_rate = statistics.median(r for _, r in results["busy"])
    without, with_console = statistics.median(results["without"]), statistics.median(results["with"])
    print(f"attached console at nice {0 if args.no_nice else ATTACH_NICE} (the pipeline at 0)")
    print(f"attached console, idle ({IDLE_SECONDS:g} s): CPU {idle_cpu * 100:.1f}% of one core, "
          f"{idle_rate:.1f} Redis commands/s")
    print(f"attached console, during a {args.users:,}-user ingest: CPU {busy_cpu * 100:.1f}% of one core, "
          f"{busy_rate:.1f} Redis commands/s")
    print(f"ingest of {args.users:,} users ({args.workers} workers, {bench.kind} Redis), median of {args.rounds} each: "
          f"without a console {without:.2f} s, with one attached {with_console:.2f} s; "
          f"ratio {with_console / without:.3f} ({(with_console / without - 1) * 100:+.1f}%)")
    print("rounds without:", " ".join(f"{s:.2f}" for s in results["without"]),
          "| with:", " ".join(f"{s:.2f}" for s in results["with"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
