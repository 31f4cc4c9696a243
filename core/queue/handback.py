"""Hand a worker's unfinished jobs back to RQ now, instead of when their registry entries expire.

RQ keeps a started job in the StartedJobRegistry until its timeout + 60 s; a job whose worker died, or
lost Redis mid-job, would wait that long. Marking its entries expired and running RQ's own cleanup
retries it at once (every job carries a Retry; the merge is idempotent, so a second run is safe).
"""

from __future__ import annotations

import time

import redis
from rq.registry import StartedJobRegistry

from core.queue.taskqueue import JSONSerializer, SafeJob


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


def rescue_stranded(connection: redis.Redis, queue_name: str, settle: float = 1.0) -> int:
    """Put back jobs taken off the queue (RQ's BLMOVE into its intermediate list) by a worker that died or
    froze before it registered them as started; RQ itself would wait a minute or more.

    A job seen there twice, `settle` seconds apart, and never started is stranded: a live worker registers
    its job in milliseconds. Should a slow one still run it, the merge is idempotent: the result is the same.
    """
    from core.queue.taskqueue import make_queue

    queue = make_queue(connection, queue_name)
    key = queue.intermediate_queue_key

    def stranded() -> set[bytes]:
        started = {m.split(b":", 1)[0] for m in connection.zrange(queue.started_job_registry.key, 0, -1)}
        return {j for j in connection.lrange(key, 0, -1) if j not in started}

    first = stranded()
    if not first:
        return 0
    time.sleep(settle)
    count = 0
    for job_id in first & stranded():
        if connection.lrem(key, 1, job_id):
            queue.push_job_id(job_id.decode(), at_front=True)
            count += 1
    return count
