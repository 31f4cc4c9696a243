"""Jobs that failed for good, told once each where the operator looks: the --no-ui log and the Events panel.

A failed job's traceback is in RQ's failed registry (the console's Failed jobs panel) and in the worker's
own log file; headless, neither is where anyone looks. This reads the registry of our queue every few
seconds and emits one line per newly failed job: which file it came from (the job's description) and the
last line of its traceback. Reading happens in one thread for the whole process, whatever the worker count.
"""

from __future__ import annotations

import redis
from rq.results import Result

from core.background import Background
from core.queue.taskqueue import JSONSerializer, SafeJob

POLL_SECONDS = 2.0
# Failed jobs remembered as already told (only those still in the registry, and at most this many).
REMEMBER = 10_000


def reason_of(exc_string: str) -> str:
    """The last non-empty line of a traceback: the exception and its message."""
    lines = [line.strip() for line in (exc_string or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason recorded"


class FailureLog(Background):
    """Emits `error` events for jobs that enter the failed registry of `queue`."""

    thread_name = "failures"

    def __init__(self, queue, emit, interval: float = POLL_SECONDS):
        super().__init__()
        self.queue = queue
        self.emit = emit
        self.interval = interval
        self._told: dict[str, None] = {}  # insertion-ordered, trimmed to REMEMBER
        self._primed = False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except redis.RedisError:
                pass  # Redis being down is said once by whoever owns Redis; failed jobs wait in the registry
            self._stop.wait(self.interval)

    def check(self) -> list[str]:
        """Tell the failed jobs not told yet; returns their ids. Jobs that failed before this process
        started are counted in the console and the doctor, not told again one by one at every start."""
        registry = self.queue.failed_job_registry
        present = [i.decode() if isinstance(i, bytes) else i
                   for i in self.queue.connection.zrange(registry.key, 0, -1)]
        # A job that left the registry (requeued, deleted) is forgotten, so failing again is told again.
        still = set(present)
        self._told = dict.fromkeys(job_id for job_id in self._told if job_id in still)
        new = [job_id for job_id in present if job_id not in self._told]
        if not self._primed:
            self._primed = True
            self._remember(new)
            if new:
                self.emit("warning", f"{len(new)} job(s) failed before this start; see Failed jobs in the console "
                                     f"or `rq info -S json {self.queue.name}`")
            return []
        told = []
        for job_id, job in zip(new, SafeJob.fetch_many(new, connection=self.queue.connection,
                                                       serializer=JSONSerializer)):
            told.append(job_id)
            if job is None:
                continue  # deleted or requeued between the two reads
            self.emit("error", f"job {job_id} failed for good ({job.description}): {reason_of(self._exc(job))}",
                      job=job_id)
        self._remember(told)
        return told

    @staticmethod
    def _exc(job) -> str:
        try:
            result = Result.fetch_latest(job, serializer=JSONSerializer)
        except Exception:  # a result another serializer wrote: the job's own copy will do
            result = None
        if result is not None and result.exc_string:
            return result.exc_string
        return getattr(job, "_exc_info", None) or ""

    def _remember(self, ids: list[str]) -> None:
        self._told.update(dict.fromkeys(ids))
        while len(self._told) > REMEMBER:
            self._told.pop(next(iter(self._told)))
