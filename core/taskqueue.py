"""RQ wiring shared by the server (enqueue) and the workers (dequeue): serializer, job class, worker class."""

from __future__ import annotations

import orjson
import redis
from rq import Queue, Retry, SimpleWorker, Worker
from rq.job import Job

from core import jobs

# Retries cover a work-horse that dies mid-batch; the merge is idempotent, so a retry is always safe.
# No interval: a delayed retry would need RQ's scheduler process, and an immediate one is what we want.
RETRY = Retry(max=5)
# A 10,000-user batch merges in well under a second; the timeout also bounds recovery: an inline worker
# cannot heartbeat mid-job, so its job's registry entry lives timeout + 60 s before RQ may reclaim it.
JOB_TIMEOUT = 30
RESULT_TTL = 600
# Heartbeats every 5 s and registry maintenance every 15 s: a whole worker killed with SIGKILL is
# noticed by a surviving worker on any machine within ~80 s (forking: heartbeat TTL is monitoring + 60 s)
# or ~105 s (inline: timeout + 60 s); our own supervisor requeues its dead workers' jobs at once.
JOB_MONITORING_INTERVAL = 5
MAINTENANCE_INTERVAL = 15
WORKER_TTL = 30


class JSONSerializer:
    """RQ's JSON serializer contract, with orjson. Its output is plain JSON, so `rq info`, rq-dashboard
    and anything using `rq.serializers.JSONSerializer` read our jobs. Never pickle: a pickled job lets
    anyone who can write to Redis run code in the workers."""

    @staticmethod
    def dumps(obj, *args, **kwargs) -> bytes:
        return orjson.dumps(obj)

    @staticmethod
    def loads(data, *args, **kwargs):
        return orjson.loads(data)


class ForeignJobRefused(RuntimeError):
    """A job that names a function outside core.jobs; it fails without anything being imported."""


class SafeJob(Job):
    """A job that will only call our own job functions.

    RQ resolves a job's function by import path even with a JSON serializer, so anyone able to write
    to the queue could name `os.system`. The check happens before the function is imported; callbacks
    (also resolved by name) are never honoured because we never set any.
    """

    def refusal(self) -> str | None:
        if self.instance is not None or self.func_name not in jobs.ALLOWED:
            return f"refused: {self.func_name!r} is not a swordsec job function"
        return None

    def _execute(self):
        reason = self.refusal()
        if reason:
            raise ForeignJobRefused(reason)
        return super()._execute()

    @property
    def success_callback(self):
        return None

    @property
    def failure_callback(self):
        return None

    @property
    def stopped_callback(self):
        return None


class ForkingWorker(Worker):
    """RQ's classic worker: each job runs in a forked work-horse, so a crash or leak in one job cannot
    touch the worker. About 20 ms of CPU per job goes to the fork."""

    job_class = SafeJob


class InlineWorker(SimpleWorker):
    """Jobs run in the worker process itself (RQ's SimpleWorker): no fork per job, ~40% more throughput
    here. A crash takes the worker down with its job; the supervisor replaces it and hands the job back
    to RQ at once, so nothing is lost. Job timeouts still hold (SIGALRM in the worker's main thread)."""

    job_class = SafeJob


WORKER_MODES = {"inline": InlineWorker, "fork": ForkingWorker}


def make_queue(connection: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer, job_class=SafeJob)


def make_worker(connection: redis.Redis, queue_name: str, name: str | None = None, mode: str = "inline"):
    return WORKER_MODES[mode](
        [make_queue(connection, queue_name)],
        connection=connection,
        name=name,
        serializer=JSONSerializer,
        worker_ttl=WORKER_TTL,
        maintenance_interval=MAINTENANCE_INTERVAL,
        job_monitoring_interval=JOB_MONITORING_INTERVAL,
    )


def enqueue_batch(queue: Queue, batch: dict) -> Job:
    job_id = f"batch-{batch['report']}-{batch['seq']}"
    return queue.enqueue(jobs.merge_batch, batch, job_id=job_id, retry=RETRY, job_timeout=JOB_TIMEOUT,
                         result_ttl=RESULT_TTL, description=f"merge {batch['count']} users of {batch['source']}")


def enqueue_drain(queue: Queue, namespace: str) -> Job:
    return queue.enqueue(jobs.drain_inbox, namespace, retry=RETRY, job_timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL,
                         description="merge unary users")
