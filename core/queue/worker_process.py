"""Entry point of one RQ worker process: `python -m core.queue.worker_process QUEUE NAME [MODE]`.

The Redis URL comes in the environment (SWORDSEC_WORKER_REDIS_URL) so its password never shows in `ps`.

A worker that loses Redis (gone, restarting, or refusing writes on a full disk) does not exit: exiting
would only make its supervisor restart it in a loop. It waits, probing with backoff and saying so once
per change of state, then hands back the job it held when Redis went away and works again under the
same name. Only a stop request (SIGTERM/SIGINT, RQ's warm shutdown) ends it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import redis

from core.queue.children import arm_from_environment
from core.queue.handback import hand_back, rescue_stranded
from core.queue.taskqueue import make_worker

URL_VARIABLE = "SWORDSEC_WORKER_REDIS_URL"
# Seconds between probes of a Redis that went away; the last one repeats.
REDIS_BACKOFF = (0.25, 0.5, 1, 2, 4)
# A supervised worker whose console died gets SIGTERM from the kernel (core.queue.children); if a job or a
# lost Redis holds it past this, it leaves anyway: nothing the console started may outlive it long.
ORPHAN_DEADLINE = 3.0

log = logging.getLogger("swordsec.worker")


def _exit_with_parent(parent: int) -> None:
    """Backstop for the parent-death signal: notice an orphaning, ask for a warm stop, then insist."""
    # Stop signals must reach the main thread, where RQ waits on Redis: a signal taken by this thread
    # would leave that wait unaware of it until it times out.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    while os.getppid() == parent:
        time.sleep(0.25)
    os.kill(os.getpid(), signal.SIGTERM)  # RQ's warm shutdown: an idle worker leaves its dequeue at once
    time.sleep(ORPHAN_DEADLINE)
    _kill_children()  # a fork-mode work-horse has no parent-death signal of its own
    os._exit(1)


def _kill_children() -> None:
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            if ppid == me:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


def _stop_was_requested(worker) -> bool:
    # RQ records the time of a SIGTERM/SIGINT here (request_stop); there is no public accessor.
    return getattr(worker, "_shutdown_requested_date", None) is not None


def _wait_for_redis(connection: redis.Redis, probe_key: str, name: str, stopping: threading.Event) -> bool:
    """Block until Redis answers a write again; False when a stop is requested meanwhile."""
    down_since, attempt, said = time.monotonic(), 0, False
    while not stopping.is_set():
        try:
            connection.set(probe_key, "1", ex=10)  # a write: a full disk lets PING through but refuses writes
        except redis.RedisError as error:
            if not said:
                log.warning("%s: Redis is unreachable or refuses writes (%s); waiting for it", name,
                            str(error).splitlines()[0] if str(error) else type(error).__name__)
                said = True
            stopping.wait(REDIS_BACKOFF[min(attempt, len(REDIS_BACKOFF) - 1)])
            attempt += 1
            continue
        if said:
            log.warning("%s: Redis is back after %.1f s", name, time.monotonic() - down_since)
        return True
    return False


def main(argv: list[str]) -> int:
    arm_from_environment()  # the parent-death signal, and a check that we were not orphaned first (core.queue.children)
    queue_name = argv[0]
    name = argv[1] if len(argv) > 1 else None
    mode = argv[2] if len(argv) > 2 else "inline"
    url = os.environ.get(URL_VARIABLE)
    if not url:
        print(f"worker: {URL_VARIABLE} is not set", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(message)s")
    connection = redis.Redis.from_url(url, socket_connect_timeout=5)
    if os.environ.get("SWORDSEC_WORKER_SUPERVISED") == "1":
        threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    stopping = threading.Event()
    incarnation = 0
    while not stopping.is_set():
        worker = make_worker(connection, queue_name, name, mode)
        name = worker.name
        started = time.monotonic()
        try:
            worker.work(logging_level="WARNING")
        except redis.RedisError:  # RQ's teardown on a Redis that is gone; the wait below says it once
            pass
        if _stop_was_requested(worker):
            return 0
        # Past RQ's work loop without a stop request: Redis went away or refused a write under us.
        # Signals now only set a flag; RQ's handlers would call Redis from inside the handler.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        incarnation = 1 if time.monotonic() - started > 60 else incarnation + 1
        if incarnation > 1:  # a loop that keeps failing with Redis up: slow down, never spin
            stopping.wait(REDIS_BACKOFF[min(incarnation, len(REDIS_BACKOFF) - 1)])
        if not _wait_for_redis(connection, f"{queue_name}:worker-probe:{name}", name, stopping):
            return 0
        try:
            if count := hand_back(connection, queue_name, name) + rescue_stranded(connection, queue_name):
                log.warning("%s: handed back %d job(s) interrupted when Redis went away", name, count)
            worker.register_death()  # the same name registers again below
        except redis.RedisError:
            continue  # gone again: wait again
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
