"""CPU of RQ's bookkeeping per batch, the merge left out: one job per batch against GROUP_BATCHES batches a job.

Run from the repository root with the project's venv:

    .venv/bin/python bench/rq_cost.py [--batches 2000] [--rounds 3]

Each round stages empty batches on a redis-server of its own, enqueues them as the server does (Intake.flush:
the job and its blobs' tracking in one round trip), then drains them with an inline worker in burst mode as
core/queue/worker_process.py runs it. Store.merge_staged is replaced by a no-op in this process, so what is
left is RQ (enqueue, dequeue, registries, heartbeats, status, result) and our job wrapper. The two shapes
alternate round by round; the figure is this process's CPU plus Redis's, per batch, and Redis commands per
batch. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

import machine

from core.queue.taskqueue import make_queue, make_worker
from core.service.server import Intake
from core.storage import store as store_module
from core.storage.broker import Broker
from core.storage.store import Store

from benchredis import redis_cpu


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=2000, help="batches per round and shape (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each shape, alternating (default 3)")
    return parser.parse_args(argv)


def commands(connection) -> int:
    return sum(stat["calls"] for stat in connection.info("commandstats").values())


def one_round(connection, batches: int, per_job: int) -> tuple[float, float, float]:
    """(our CPU ms, Redis CPU ms, Redis commands) per batch."""
    namespace = f"benchrq-{uuid.uuid4().hex[:8]}"
    store = Store(connection, namespace)
    intake = Intake(store, make_queue(connection, namespace), "email", 1000)
    staged = []
    for n in range(batches):
        seq, blob = store.stage_batch([])
        staged.append({"namespace": namespace, "report": "1" * 32, "attempt": "a", "span": f"{n}:1", "seq": seq,
                       "key": "email", "source": "bench", "blob": blob, "count": 0})
    connection.config_resetstat()
    ours, theirs = time.process_time(), redis_cpu(connection)
    for start in range(0, batches, per_job):
        intake.flush(staged[start:start + per_job])
    worker = make_worker(connection, intake.queue.name, name=f"bench-{uuid.uuid4().hex[:8]}")
    worker.work(burst=True, logging_level="WARNING")
    ours, theirs = time.process_time() - ours, redis_cpu(connection) - theirs
    sent = commands(connection)
    store.clear()
    for key in connection.scan_iter(match=f"rq:*{namespace}*", count=1000):
        connection.delete(key)
    worker.register_death()
    return ours * 1e3 / batches, theirs * 1e3 / batches, sent / batches


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.getLogger("rq").setLevel(logging.WARNING)
    store_module.Store.merge_staged = lambda self, *a, **k: {"new": 0, "updated": 0, "duplicate": 0,
                                                             "already_merged": False}
    shapes = {"1 batch a job": 1, f"{Intake.GROUP_BATCHES} batches a job": Intake.GROUP_BATCHES}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in shapes}
    with tempfile.TemporaryDirectory(prefix="swordsec-rqcost-") as scratch:
        broker = Broker(None, Path(scratch) / "redis")
        connection = broker.start()
        try:
            for _ in range(args.rounds):
                for name, per_job in shapes.items():
                    results[name].append(one_round(connection, args.batches, per_job))
        finally:
            broker.stop()
    for line in machine.describe("redis-server of its own"):
        print(line)
    print(f"RQ's CPU per batch, merge left out, {args.batches:,} batches a round, {args.rounds} rounds alternating"
          " (ms; median of the rounds' ours + redis, and each round):")
    for name, rows in results.items():
        totals = sorted(ours + theirs for ours, theirs, _ in rows)
        median = totals[len(totals) // 2]
        each = " ".join(f"{ours:.2f}+{theirs:.2f}" for ours, theirs, _ in rows)
        print(f"  {name:<20} {median:6.3f} ms  {rows[0][2]:5.1f} commands   ({each})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
