"""What waits in Redis for a merge: queued batches and the bytes of their staged users, the back-pressure bounds.

A job carries a reference to its staged users (Store.stage_batch), not the users, so counting jobs says
little about memory: 200 queued jobs can hold 200 KB or 3 GB; and a job may carry several batches
(merge_batches). Each check reads the queued job ids (LLEN, LRANGE); what a job carries is read once (its data
never changes) and remembered while it is queued: its batches and their sizes, which the server writes into
the job ("bytes"), or STRLEN of its blobs for a job queued without them. Measured fresh every time: a cached
reading let a fast stream stage ten batches past the bound before the next one.
"""

from __future__ import annotations

import threading
import zlib

import orjson

SAMPLE = 1000  # past this many queued jobs, the first SAMPLE are measured and the rest extrapolated


def batches_of(data: bytes | None) -> list[tuple[str, int | None]]:
    """(blob, size or None) of each staged batch a queued job names: one for merge_batch, several for
    merge_batches, none for anything else (a drain job, or something foreign)."""
    if not data:
        return []
    try:
        _func, _instance, args, _kwargs = orjson.loads(zlib.decompress(data))
        batches = args[0] if args and isinstance(args[0], list) else args[:1]
        return [(b["blob"], b.get("bytes") if isinstance(b.get("bytes"), int) else None) for b in batches
                if isinstance(b, dict) and isinstance(b.get("blob"), str)]
    except (zlib.error, orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
        return []


class StagedBytes:
    def __init__(self, queue, max_bytes: int):
        """max_bytes: the bound in bytes (0: none; the batches are still counted for the backlog bound)."""
        self.queue = queue
        self.max_bytes = max_bytes
        self._jobs: dict[bytes, tuple[int, int]] = {}  # queued job id -> (batches, staged bytes)
        self._lock = threading.Lock()

    def total(self) -> int:
        """Bytes staged for the jobs now queued."""
        return self.measure()[1]

    def measure(self) -> tuple[int, int]:
        """(batches, bytes staged for them) of the jobs now queued; a job that stages nothing counts as one."""
        with self._lock:
            return self._measure()

    def _measure(self) -> tuple[int, int]:
        connection = self.queue.connection
        with connection.pipeline(transaction=False) as pipe:
            pipe.llen(self.queue.key)
            pipe.lrange(self.queue.key, 0, SAMPLE - 1)
            length, ids = pipe.execute()
        if not ids:
            self._jobs.clear()
            return 0, 0
        unknown = [job_id for job_id in ids if job_id not in self._jobs]
        if unknown:
            self._learn(connection, unknown)
        self._jobs = {job_id: self._jobs[job_id] for job_id in ids}  # forget jobs no longer queued
        scale = max(1.0, length / len(ids))
        batches = sum(count for count, _ in self._jobs.values())
        size = sum(size for _, size in self._jobs.values())
        return int(batches * scale), int(size * scale)

    def _learn(self, connection, unknown: list[bytes]) -> None:
        job_class = self.queue.job_class
        with connection.pipeline(transaction=False) as pipe:
            for job_id in unknown:
                pipe.hget(job_class.key_for(job_id.decode()), "data")
            carried = [batches_of(data) for data in pipe.execute()]
        sizes = [blob for batches in carried for blob, size in batches if size is None]
        if sizes:
            with connection.pipeline(transaction=False) as pipe:
                for blob in sizes:
                    pipe.strlen(blob)
                measured = dict(zip(sizes, pipe.execute()))
        for job_id, batches in zip(unknown, carried):
            self._jobs[job_id] = (max(1, len(batches)),
                                  sum(size if size is not None else measured[blob] for blob, size in batches))
