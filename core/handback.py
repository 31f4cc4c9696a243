"""Hand a worker's unfinished jobs back to RQ now, instead of when their registry entries expire.

RQ keeps a started job in the StartedJobRegistry until its timeout + 60 s; a job whose worker died, or
lost Redis mid-job, would wait that long. Marking its entries expired and running RQ's own cleanup
retries it at once (every job carries a Retry; the merge is idempotent, so a second run is safe).
"""

from __future__ import annotations

import redis
from rq.registry import StartedJobRegistry

from core.taskqueue import JSONSerializer, SafeJob


def hand_back(connection: redis.Redis, queue_name: str, worker_name: str) -> int:
    """Requeue the started jobs held by `worker_name`; returns how many. Raises redis.RedisError."""
    registry = StartedJobRegistry(queue_name, connection=connection, job_class=SafeJob, serializer=JSONSerializer)
    expired = {}
    for member in connection.zrange(registry.key, 0, -1):
        job_id = member.decode().split(":", 1)[0]
        holder = connection.hget(f"rq:job:{job_id}", "worker_name")
        if holder is not None and holder.decode() == worker_name:
            expired[member] = 0
    if expired:
        connection.zadd(registry.key, expired)
        registry.cleanup()
    return len(expired)
