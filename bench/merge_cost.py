"""Where Redis's CPU goes when merge.lua merges one user, and the ingest rate that leaves at most.

Run from the repository root with the project's venv:

    .venv/bin/python bench/merge_cost.py                  # 200,000 new users, batches of 1,000, 3 rounds
    .venv/bin/python bench/merge_cost.py --users 500000 --rounds 5

Redis is the one process a 1,000,000-user `--once` cannot spread over two cores: every user is merged by
merge.lua inside it. This runs merge.lua as shipped and with one part taken out at a time (each variant is
merge.lua's own text with that part removed, so it follows the script as it changes) on a redis-server of its
own with the embedded configuration (append-only log on), every variant on an empty Redis, the rounds
alternating, and prints Redis's CPU per merged user (median of the rounds). The difference between two rows is
what that part costs. The last line turns the shipped script's cost into the ingest rate Redis alone would
allow (one core, merges only: staging, RQ and exports cost Redis more) against `orjson.loads` of the same
users in the same run, the issue's measure.

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import machine
import orjson

from core.storage.broker import Broker
from core.storage.codec import lua
from core.storage.store import Store

import datagen
from benchredis import redis_cpu

HGET = "current = redis.call('HGET', hash, key) or false"
HSET = "redis.call('HSET', wh[i], wk[i], wv[i])"
SADD = "redis.call('SADD', KEYS[14], unpack(buckets, i, math.min(i + 3999, #buckets)))"


def variants() -> dict[str, str | None]:
    """merge.lua as shipped and without each part; None: an empty script given the same arguments."""
    shipped = lua("merge.lua", with_counters=True)

    def without(*parts: tuple[str, str]) -> str:
        text = shipped
        for old, new in parts:
            if old not in text:
                raise SystemExit(f"merge.lua no longer holds {old!r}: update bench/merge_cost.py")
            text = text.replace(old, new)
        return text

    return {
        "merge.lua as shipped": shipped,
        "  without its HGET (every user new)": without((HGET, "current = false")),
        "  without its HSET": without((HSET, "")),
        "  without its SADD of changed buckets": without((SADD, "")),
        "  without all three: the script's own work": without((HGET, "current = false"), (HSET, ""), (SADD, "")),
        "an empty script, the same arguments": None,
        "merge.lua as shipped, append-only log off": shipped,
    }


def set_log(connection, appendonly: str, timeout: float = 120.0) -> None:
    """Turn the append-only log on or off; turning it on writes the log anew in a child process, which is waited
    for: its copy-on-write faults would land on the next variant's figure."""
    if connection.config_get("appendonly")["appendonly"] == appendonly:
        return
    connection.config_set("appendonly", appendonly)
    deadline = time.monotonic() + timeout
    while True:
        persistence = connection.info("persistence")
        if not persistence["aof_rewrite_in_progress"] and not persistence["aof_rewrite_scheduled"]:
            return
        if time.monotonic() > deadline:
            raise SystemExit("the append-only log was still being written after 120 s")
        time.sleep(0.05)


def merge_all(connection, source: str | None, batches: list[list[dict]]) -> float:
    """Redis CPU seconds for merging every batch into a fresh namespace through this script."""
    store = Store(connection, f"benchmerge-{uuid.uuid4().hex[:8]}")
    # The store's own merge call (its keys, its arguments), with this variant in merge.lua's place.
    store._merge = connection.register_script(source if source is not None else "return {0, 0, 0, 0}")
    attempt = store.begin_attempt("0" * 32, name="bench")
    first = 0
    before = redis_cpu(connection)
    for batch in batches:
        store.merge_batch("0" * 32, attempt, f"{first}:{len(batch)}", first + 1, batch, "email")
        first += len(batch)
    return redis_cpu(connection) - before


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000, help="new users merged per variant (default 200000)")
    parser.add_argument("--batch-size", type=int, default=1000, help="users per merge.lua call (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each variant once a round (default 3)")
    args = parser.parse_args(argv)
    text = orjson.dumps(list(datagen.users(args.users)))
    parse = min(_timed(orjson.loads, text) for _ in range(3))  # as throughput.py does: nothing else held yet
    users = orjson.loads(text)
    batches = [users[i:i + args.batch_size] for i in range(0, len(users), args.batch_size)]
    cost: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="swordsec-mergecost-") as scratch:
        broker = Broker(None, Path(scratch) / "redis")
        connection = broker.start()
        try:
            for number in range(args.rounds):
                print(f"round {number + 1} of {args.rounds} ...", flush=True)
                for name, source in variants().items():
                    set_log(connection, "no" if "log off" in name else "yes")
                    seconds = merge_all(connection, source, batches)
                    connection.flushall()  # every variant starts from an empty Redis (its cost grows with memory)
                    cost.setdefault(name, []).append(seconds * 1e6 / len(users))
            set_log(connection, "yes")
            server = connection.info("server").get("redis_version", "?")
        finally:
            broker.stop()
    print("\n".join(machine.describe(f"{server}, a redis-server of its own (embedded configuration)")))
    print(f"Redis CPU per merged user, {len(users):,} new users in batches of {args.batch_size:,} (µs, median of "
          f"{args.rounds}; each round's figure after it):")
    for name, figures in cost.items():
        print(f"  {name:<46} {statistics.median(figures):6.2f}   "
              + " ".join(f"{figure:.2f}" for figure in figures))
    shipped = statistics.median(cost["merge.lua as shipped"])
    rate, parsed = 1e6 / shipped, len(users) / parse
    print(f"merges alone allow at most {rate:,.0f} users/s on Redis's one core, {rate / parsed:.1%} of "
          f"orjson.loads's {parsed:,.0f} users/s on the same users: a bound above any ingest's (which also stages, "
          f"queues, counts and exports; the issue's goal is 15% end to end, bench/README.md says how far that is)")
    return 0


def _timed(function, argument) -> float:
    start = time.perf_counter()
    function(argument)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
