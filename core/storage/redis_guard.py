"""Watch Redis for the runtime: restart the embedded one when it dies, say when any Redis goes and comes back.

The console supervises its own redis-server as it supervises its workers: a redis-server that exits
under it (killed, crashed) is started again on the same socket, password and append-only file, so
every client reconnects by itself and finds everything that was accepted; staged batches and queued
jobs are in the AOF, so the ingest resumes. When it cannot be started again, the runtime is told
(`on_fatal`) and the program exits 3 with one line.

Any Redis, embedded or external, is probed with a write under our namespace: one line when it
becomes unreachable or refuses writes (a full disk under its AOF answers PING but refuses writes),
one when it is back, probes spaced by a backoff meanwhile. A Redis we did not start is never
started, stopped or restarted here.
"""

from __future__ import annotations

import time

import redis

from core.background import Background
from core.storage.broker import Broker, BrokerError

INTERVAL = 0.5
BACKOFF = (0.5, 1, 2, 4, 5)
# Restarts of the embedded redis-server in a row that fail before the runtime gives up.
MAX_RESTART_FAILURES = 3


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class RedisGuard(Background):
    thread_name = "redis-guard"
    join_seconds = 20.0

    def __init__(self, broker: Broker, namespace: str, on_event, on_fatal):
        super().__init__()
        self.broker = broker
        self.probe_key = f"{namespace}:probe:guard"
        self.on_event = on_event
        self.on_fatal = on_fatal
        self.problem: str = ""  # what is wrong with Redis now, in words; "" when it answers writes
        self.restarts = 0

    def _run(self) -> None:
        failures, attempt, down_since = 0, 0, 0.0
        while not self._stop.is_set():
            code = self.broker.exited() if self.broker.embedded else None
            if code is not None:
                if not self._restart(code, failures):
                    failures += 1
                    if failures >= MAX_RESTART_FAILURES:
                        self.on_fatal(f"the embedded redis-server died and cannot be started again: "
                                      f"{self.broker.log_tail() or 'see ' + str(self.broker.data_dir / 'redis')}")
                        return
                    self._stop.wait(BACKOFF[min(failures, len(BACKOFF) - 1)])
                else:
                    failures = 0
                continue
            problem = self._probe()
            if problem and not self.problem:
                down_since = time.monotonic()
                self.on_event("error", f"redis: {problem}; retrying")
            elif self.problem and not problem:
                self.on_event("info", f"redis: back after {time.monotonic() - down_since:.1f} s")
                attempt = 0
            self.problem = problem
            if problem:
                self._stop.wait(BACKOFF[min(attempt, len(BACKOFF) - 1)])
                attempt += 1
            else:
                self._stop.wait(INTERVAL)

    def _probe(self) -> str:
        client = self.broker.client
        if client is None:
            return "not connected"
        try:
            client.set(self.probe_key, "1", ex=10)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            return f"{self.broker.display_url} is unreachable ({first_line(error)})"
        except redis.RedisError as error:
            where = f" (its files are in {self.broker.data_dir / 'redis'})" if self.broker.embedded else ""
            return f"{self.broker.display_url} refuses writes: {first_line(error)}{where}"
        return ""

    def _restart(self, code: int, failures: int) -> bool:
        if failures == 0:
            tail = self.broker.log_tail()
            self.on_event("error", f"redis: the embedded redis-server exited with {code}"
                                   f"{' (' + tail + ')' if tail else ''}; starting it again from its AOF")
        started = time.monotonic()
        try:
            self.broker.restart()
        except BrokerError as error:
            self.on_event("error", f"redis: restart failed: {error}")
            return False
        self.restarts += 1
        self.problem = ""
        self.on_event("info", f"redis: embedded redis-server running again after {time.monotonic() - started:.1f} s; "
                              f"the ingest resumes")
        return True
