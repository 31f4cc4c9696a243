"""Entry point of one RQ worker process: `python -m core.worker_process QUEUE NAME [MODE]`.

The Redis URL comes in the environment (SWORDSEC_WORKER_REDIS_URL) so its password never shows in `ps`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import redis

from core.taskqueue import make_worker

URL_VARIABLE = "SWORDSEC_WORKER_REDIS_URL"


def _exit_with_parent(parent: int) -> None:
    """A supervised worker outlives a console killed with SIGKILL; notice and stop after the current job.

    SIGTERM to ourselves is RQ's own warm shutdown: an idle worker leaves its blocking dequeue at once.
    """
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main(argv: list[str]) -> int:
    queue_name = argv[0]
    name = argv[1] if len(argv) > 1 else None
    mode = argv[2] if len(argv) > 2 else "inline"
    url = os.environ.get(URL_VARIABLE)
    if not url:
        print(f"worker: {URL_VARIABLE} is not set", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(message)s")
    connection = redis.Redis.from_url(url, socket_connect_timeout=5)
    worker = make_worker(connection, queue_name, name, mode)
    if os.environ.get("SWORDSEC_WORKER_SUPERVISED") == "1":
        threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        worker.work(logging_level="WARNING")
    except (redis.ConnectionError, redis.TimeoutError) as error:
        print(f"worker {worker.name}: lost Redis: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
