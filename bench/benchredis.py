"""The Redis a benchmark runs on: the machine's if it answers, else an embedded one; and its cleanup.

Benchmarks share the machine's Redis with tests and other sessions, so each run works in its own
namespace and queue names and deletes exactly the keys it made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import redis
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from core.storage.broker import Broker

DEFAULT_URL = "redis://127.0.0.1:6379"
CPU_FIELDS = ("used_cpu_sys", "used_cpu_user")
CHILDREN_CPU_FIELDS = ("used_cpu_sys_children", "used_cpu_user_children")


def redis_cpu(connection, children: bool = False) -> float:
    """Seconds of CPU the Redis server has spent (children: with its forks', the log's rewrites and dumps)."""
    info = connection.info("cpu")
    return sum(float(info[field]) for field in CPU_FIELDS + (CHILDREN_CPU_FIELDS if children else ()))
REGISTRIES = (FinishedJobRegistry, FailedJobRegistry, StartedJobRegistry, DeferredJobRegistry,
              ScheduledJobRegistry, CanceledJobRegistry)


@dataclass
class BenchRedis:
    url: str
    connection: redis.Redis
    broker: Broker | None = None

    @property
    def kind(self) -> str:
        return "embedded" if self.broker else "external"

    def version(self) -> str:
        return self.connection.info("server").get("redis_version", "?")

    def close(self) -> None:
        if self.broker:
            self.broker.stop()
        else:
            self.connection.close()


def open_redis(url: str | None, scratch: Path) -> BenchRedis:
    """`url` if given; else the default local Redis if it answers; else an embedded server in `scratch`."""
    candidate = url or DEFAULT_URL
    try:
        connection = redis.Redis.from_url(candidate, socket_connect_timeout=2)
        connection.ping()
        return BenchRedis(candidate, connection)
    except (redis.RedisError, OSError):
        if url:
            raise
    broker = Broker(None, scratch)
    connection = broker.start()
    return BenchRedis(broker.url, connection, broker)


def cleanup(connection: redis.Redis, namespace: str, queue_names: list[str], workers: list[str] = ()) -> int:
    """Delete the namespace's keys, every RQ key of the queues and of their jobs, and the workers' keys
    (a stopped worker's key would otherwise linger for RQ's death TTL); returns how many."""
    job_ids: set[str] = set()
    for name in queue_names:
        job_ids.update(i.decode() for i in connection.lrange(f"rq:queue:{name}", 0, -1))
        for registry in REGISTRIES:
            # Started-registry members are "job_id:execution_id"; the others are bare job ids.
            members = connection.zrange(registry(name, connection=connection).key, 0, -1)
            job_ids.update(m.decode().split(":", 1)[0] for m in members)
    doomed = [f"rq:worker:{name}" for name in workers]
    doomed += connection.scan_iter(match=f"{namespace}:*", count=1000)
    for key in connection.scan_iter(match="rq:*", count=1000):
        parts = key.decode(errors="replace").split(":")
        if any(name in parts for name in queue_names) or job_ids.intersection(parts):
            doomed.append(key)
    for start in range(0, len(doomed), 500):
        connection.delete(*doomed[start:start + 500])
    # RQ's global set of queues keeps a member per queue ever used; the machine's Redis must not keep ours.
    if queue_names:
        connection.srem("rq:queues", *(f"rq:queue:{name}" for name in queue_names))
    return len(doomed)
