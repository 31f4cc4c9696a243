"""How many bytes of users wait in Redis for a merge: the back-pressure bound in bytes, not just in jobs.

A job carries a reference to its staged users (Store.stage_batch), not the users, so counting jobs says
little about memory: 200 queued jobs can hold 200 KB or 3 GB. Each check reads the queued job ids and their
staged blobs' lengths (LRANGE, then STRLEN pipelined); a job's blob name is read once (its data never
changes) and remembered while the job is queued. Measured fresh every time: a cached reading let a fast
stream stage ten batches past the bound before the next one.
"""

from __future__ import annotations

import threading
import zlib

import orjson
import redis

SAMPLE = 1000  # past this many queued jobs, the first SAMPLE are measured and the rest extrapolated


def _blobs_of(data: bytes | None) -> tuple[str, ...]:
    """The staged blobs a queued job names: one for merge_batch, several for merge_batches."""
    if not data:
        return ()
    try:
        _func, _instance, args, _kwargs = orjson.loads(zlib.decompress(data))
        batches = args[0] if args and isinstance(args[0], list) else args[:1]
        return tuple(b["blob"] for b in batches if isinstance(b, dict) and isinstance(b.get("blob"), str))
    except (zlib.error, orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
        return ()  # not one of our batch jobs (a drain job, or something foreign): it stages nothing


class StagedBytes:
    def __init__(self, queue, max_bytes: int):
        self.queue = queue
        self.max_bytes = max_bytes
        self._blobs: dict[bytes, tuple[str, ...]] = {}  # queued job id -> its staged blobs
        self._lock = threading.Lock()

    def total(self) -> int:
        """Bytes staged for the jobs now queued."""
        with self._lock:
            return self._measure()

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
            self._blobs.clear()
            return 0
        unknown = [job_id for job_id in ids if job_id not in self._blobs]
        if unknown:
            job_class = self.queue.job_class
            with connection.pipeline(transaction=False) as pipe:
                for job_id in unknown:
                    pipe.hget(job_class.key_for(job_id.decode()), "data")
                self._blobs.update(zip(unknown, map(_blobs_of, pipe.execute())))
        self._blobs = {job_id: self._blobs[job_id] for job_id in ids}  # forget jobs no longer queued
        blobs = [blob for named in self._blobs.values() for blob in named]
        if not blobs:
            return 0
        with connection.pipeline(transaction=False) as pipe:
            for blob in blobs:
                pipe.strlen(blob)
            sizes = pipe.execute()
        return int(sum(sizes) * max(1.0, length / len(ids)))
