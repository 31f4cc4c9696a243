"""How long one merge blocks Redis: the worst PING latency and the slowest commands during a big ingest.

Redis runs one command at a time, so a Lua merge script that takes 1.2 s (a 300,000-user job) makes every
other client, health checks included, wait 1.2 s. The goal is that no single script call blocks Redis for
more than 50 ms; a merge job holds at most one message's users (SWORDSEC_MAX_BATCH_USERS, default 1,000),
normally --batch-size (default 1,000).

Run from the repository root with the project's venv:

    .venv/bin/python bench/ping_latency.py                       # 1,000,000 users, batches of 1,000
    .venv/bin/python bench/ping_latency.py --batch-size 5000     # with SWORDSEC_MAX_BATCH_USERS raised to match
    .venv/bin/python bench/ping_latency.py --users 200000 --redis-url redis://127.0.0.1:6379

Two figures, printed and never asserted: the worst round trip of a PING sent every millisecond from a
separate process (client side: includes the machine's scheduling noise), and the slowest commands in
Redis's SLOWLOG (server side: the time Redis itself spent in one command, a script call included). On the
embedded Redis (the default here) the slowlog threshold is set to 5 ms for the run; on an external Redis the
slowlog is only read, with whatever threshold it has.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

import machine  # noqa: E402

import datagen  # noqa: E402
from benchredis import cleanup  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000, help="users to ingest (default 1000000)")
    parser.add_argument("--per-file", type=int, default=100_000, help="users per generated file (default 100000)")
    parser.add_argument("--batch-size", type=int, default=1000, help="users per batch and merge job (default 1000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--redis-url", default=None, help="an external Redis (default: an embedded one)")
    return parser.parse_args(argv)


def pinger(url: str, stop, results) -> None:
    """A separate process, so the console's threads never delay our clock."""
    import redis

    connection = redis.Redis.from_url(url)
    samples: list[float] = []
    while not stop.is_set():
        started = time.perf_counter()
        connection.ping()
        samples.append(time.perf_counter() - started)
        time.sleep(0.001)
    results.put(samples)


def quiet_merges(runtime, connection, batch_size: int, rounds: int = 20) -> list[float]:
    """The same merge script on the now full store, with the ingest over: its own cost, less the contention."""
    from core.records import normalise

    connection.config_set("slowlog-log-slower-than", 0)
    durations = []
    for n in range(rounds):
        users = [normalise(u) for u in datagen.users(batch_size, start=10**8 + n * batch_size)]
        connection.slowlog_reset()
        runtime.store.merge_batch(f"quiet-{n}", "a", f"0:{batch_size}", 10**9 + n * batch_size, users, "email")
        durations += [e["duration"] / 1e6 for e in connection.slowlog_get(100) if b"EVALSHA" in _bytes(e["command"])]
    return durations


def _bytes(command) -> bytes:
    return command if isinstance(command, bytes) else str(command).encode()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def main(argv=None) -> int:
    args = parse_args(argv)
    import redis

    from core.config import Settings
    from core.runtime import Runtime
    from core.storage.broker import Broker

    scratch = Path(tempfile.mkdtemp(prefix="swordsec-ping-"))
    broker = None
    if args.redis_url:
        url = args.redis_url
    else:
        broker = Broker(None, scratch / "redis")
        broker.start()
        url = broker.url
    connection = redis.Redis.from_url(url)
    if broker:
        connection.config_set("slowlog-log-slower-than", 5000)
        connection.config_set("slowlog-max-len", 100_000)
        connection.slowlog_reset()
    since = time.time()
    print(f"generating {args.users:,} users ...", flush=True)
    datagen.write_files(scratch / "drop", args.users, args.per_file)
    namespace = f"benchping-{uuid.uuid4().hex[:10]}"
    settings = Settings.build(dict(watch=scratch / "drop", data_dir=scratch / "data", redis_url=url,
                                   grpc_listen="127.0.0.1:0", workers=args.workers, namespace=namespace,
                                   batch_size=args.batch_size, max_batch_users=max(1000, args.batch_size)),
                              environ={})
    stop, results = multiprocessing.Event(), multiprocessing.Queue()
    probe = multiprocessing.Process(target=pinger, args=(url, stop, results), daemon=True)
    runtime = Runtime(settings, watch=False)
    try:
        runtime.start()
        probe.start()
        started = time.perf_counter()
        summary = runtime.run_once()
        seconds = time.perf_counter() - started
        stop.set()
        samples = results.get(timeout=60)
        probe.join(10)
        slow = [entry for entry in connection.slowlog_get(100_000) if entry["start_time"] >= since]
        merges = int(connection.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
        quiet = quiet_merges(runtime, connection, args.batch_size) if broker else []
    finally:
        runtime.stop()
        cleanup(connection, namespace, [namespace])
        if broker:
            broker.stop()
    slow.sort(key=lambda e: e["duration"], reverse=True)
    print(f"{summary.accepted:,} users in {seconds:.1f} s ({summary.accepted / seconds:,.0f} users/s), "
          f"batch size {args.batch_size:,}, {args.workers} workers, {'embedded' if broker else 'external'} Redis")
    print(f"PING every ms from another process: {len(samples):,} samples, worst {max(samples) * 1000:.1f} ms, "
          f"p99.9 {percentile(samples, 0.999) * 1000:.1f} ms, p99 {percentile(samples, 0.99) * 1000:.1f} ms, "
          f"median {percentile(samples, 0.5) * 1000:.2f} ms")
    scripts = [e for e in slow if b"EVALSHA" in _bytes(e["command"])]
    over = sum(1 for e in scripts if e["duration"] > 50_000)
    if broker:
        print(f"script calls during the ingest: {merges:,}; over 5 ms: {len(scripts):,}; over 50 ms: {over:,} "
              f"({over / max(1, merges):.2%})")
        if quiet:
            print(f"the merge of {args.batch_size:,} users on the full store, ingest over, {len(quiet)} calls: worst "
                  f"{max(quiet) * 1000:.1f} ms, median {percentile(quiet, 0.5) * 1000:.1f} ms")
        print(f"SLOWLOG (commands over 5 ms): {len(slow)}; slowest:")
        for entry in slow[:5]:
            command = entry["command"]
            name = command[:60] if isinstance(command, str) else command[:60].decode(errors="replace")
            print(f"  {entry['duration'] / 1000:.1f} ms  {name}")
    print("\n".join(machine.describe()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
