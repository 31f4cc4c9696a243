"""How many bytes of users wait in Redis for a merge: the back-pressure bound in bytes, not just in jobs.

A job carries a reference to its staged users (Store.stage_batch), not the users, so counting jobs says
little about memory: 200 queued jobs can hold 200 KB or 3 GB. This reads the queued jobs' staged blobs'
lengths (STRLEN, pipelined) at most every REFRESH seconds, so a busy server pays a few milliseconds per
tenth of a second whatever its rate.
"""

from __future__ import annotations

import threading
import time
import zlib

import orjson
import redis

REFRESH = 0.1
SAMPLE = 1000  # past this many queued jobs, the first SAMPLE are measured and the rest extrapolated


def _blob_of(data: bytes | None) -> str | None:
    if not data:
        return None
    try:
        _func, _instance, args, _kwargs = orjson.loads(zlib.decompress(data))
        blob = args[0].get("blob") if args and isinstance(args[0], dict) else None
    except (zlib.error, orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
        return None  # not one of our batch jobs (a drain job, or something foreign): it stages nothing
    return blob if isinstance(blob, str) else None


class StagedBytes:
    def __init__(self, queue, max_bytes: int):
        self.queue = queue
        self.max_bytes = max_bytes
        self._measured = 0
        self._at = 0.0
        self._lock = threading.Lock()

    def total(self) -> int:
        """Bytes staged for the jobs now queued (cached for REFRESH seconds)."""
        with self._lock:
            if time.monotonic() - self._at < REFRESH:
                return self._measured
            self._measured = self._measure()
            self._at = time.monotonic()
            return self._measured

    def over(self) -> bool:
        try:
            return self.total() >= self.max_bytes
        except redis.RedisError:
            return False  # the next enqueue meets the same error and reports it

    def _measure(self) -> int:
        connection = self.queue.connection
        with connection.pipeline(transaction=False) as pipe:
            pipe.llen(self.queue.key)
            pipe.lrange(self.queue.key, 0, SAMPLE - 1)
            length, ids = pipe.execute()
        if not ids:
            return 0
        job_class = self.queue.job_class
        with connection.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(job_class.key_for(job_id.decode()), "data")
            blobs = [b for b in map(_blob_of, pipe.execute()) if b]
        if not blobs:
            return 0
        with connection.pipeline(transaction=False) as pipe:
            for blob in blobs:
                pipe.strlen(blob)
            sizes = pipe.execute()
        return int(sum(sizes) * max(1.0, length / len(ids)))
