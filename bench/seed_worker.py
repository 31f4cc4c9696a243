"""One forking RQ worker for the seed-shaped baseline: `python bench/seed_worker.py QUEUE`.

The Redis URL comes in BENCH_REDIS_URL so a password never shows in `ps`.
"""

from __future__ import annotations

import os
import sys

import redis
from rq import Queue, Worker


def main(argv: list[str]) -> int:
    connection = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    queue = Queue(argv[0], connection=connection)
    # The plain rq.Worker forks a work-horse for every job: that fork is the seed's per-user cost.
    Worker([queue], connection=connection).work(logging_level="WARNING")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
