"""RQ wiring shared by the server (enqueue) and the workers (dequeue): serializer, job class, worker class."""

from __future__ import annotations

import orjson
import redis
from rq import Queue, Retry, SimpleWorker, Worker
from rq.job import Job

from core.queue import jobs
from core.storage.store import announce_change

# Retries cover a work-horse that dies mid-batch; the merge is idempotent, so a retry is always safe.
# No interval: a delayed retry would need RQ's scheduler process, and an immediate one is what we want.
RETRY = Retry(max=5)
# A 10,000-user batch merges in well under a second; the timeout also bounds recovery: an inline worker
# cannot heartbeat mid-job, so its job's registry entry lives timeout + 60 s before RQ may reclaim it.
JOB_TIMEOUT = 30
RESULT_TTL = 600
# Heartbeats every 5 s and registry maintenance every 15 s: a batch held by a worker killed with SIGKILL on
# another machine is reclaimed by a surviving worker once its entry lapses (inline: timeout + 60 s; forking:
# heartbeat TTL), measured 93-95 s (docs/DEPLOY.md); our own supervisor requeues its dead workers' jobs at once.
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
    """A job that names a function outside core.queue.jobs; it fails without anything being imported."""


def _ignored(_self, _value) -> None:
    """Setter for a job field we never act on: RQ's restore() may assign it, the value goes nowhere."""


class SafeJob(Job):
    """A job read from Redis is data, never instructions.

    Anyone able to write to Redis can forge a job hash. RQ acts on these of its fields (rq 3.0 source:
    job.py, worker/base.py, callbacks.py, webhook.py, queue.py, rate_limit.py, repeat.py), and each is
    neutralised here:
      - `func_name`/`instance`: resolved by import path even with a JSON serializer, so a job could name
        `os.system`; refused before anything is imported, with no retry.
      - `success/failure/stopped_callback`: also resolved by import path; never honoured.
      - `webhooks` (RQ 3): JSON HTTP requests to any URL with any headers, sent by the worker on
        finished/failed: an SSRF from every worker host; always empty, `send_webhooks` does nothing.
      - dependents (`rq:job:<id>:dependents`): on success or failure the worker moves other jobs, on any
        queue, to ready; never (SafeQueue), and a job's own dependencies are never fetched.
      - `rate_limit_key`: releasing a slot promotes jobs waiting under that key; never set.
      - `repeats_left`/`retry_intervals`/`retries_left`: a job could re-run itself forever or ask for the
        scheduler; no repeats, immediate retries only, never more than our own RETRY.max.
      - `meta`, `description`, timeouts and TTLs are plain JSON values that only decide bookkeeping.
    """

    def refusal(self) -> str | None:
        try:
            name, instance = self.func_name, self.instance
        except Exception:  # rq.exceptions.DeserializationError: not even our serializer's JSON
            return "refused: the job's data is not valid JSON job data"
        if instance is not None or name not in jobs.ALLOWED:
            return f"refused: {name!r} is not a swordsec job function"
        return None

    @property
    def func(self):
        reason = self.refusal()
        if reason:
            raise ForeignJobRefused(reason)
        return jobs.FORMER_NAMES.get(self.func_name) or super().func

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

    webhooks = property(lambda self: [], _ignored)
    rate_limit_key = property(lambda self: None, _ignored)
    repeats_left = property(lambda self: None, _ignored)
    retry_intervals = property(lambda self: None, _ignored)

    @property
    def retries_left(self):
        stored = self.__dict__.get("_retries_left")
        return None if stored is None else max(0, min(int(stored), RETRY.max))

    @retries_left.setter
    def retries_left(self, value):
        self.__dict__["_retries_left"] = value

    @property
    def should_retry(self) -> bool:
        return self.refusal() is None and bool(self.retries_left)

    def send_webhooks(self, status, *, exc_string=None) -> None:
        return None

    @property
    def dependent_ids(self) -> list[str]:
        return []

    @property
    def dependency(self):
        return None

    def fetch_dependencies(self, watch: bool = False, pipeline=None) -> list:
        return []


class SafeQueue(Queue):
    """Our queue: a finished or failed job never releases other jobs (RQ dependents) onto any queue."""

    job_class = SafeJob

    def move_dependents_to_ready(self, job, *args, **kwargs) -> dict:
        return {}

    def enqueue_dependents(self, job, *args, **kwargs) -> dict:
        return {}


class _AnnouncesMerges:
    """Once a job's success is recorded (it has left the started registry), wake the exporter. Woken by the
    merge itself, it would find the job still running, take the pipeline for busy and look again later."""

    def handle_job_success(self, job, queue, *args, **kwargs):
        super().handle_job_success(job, queue, *args, **kwargs)
        try:
            announce_change(self.connection, queue.name)  # the queue is named after the namespace
        except redis.RedisError:
            pass  # the exporter also looks by itself, every WAKE_WAIT


class ForkingWorker(_AnnouncesMerges, Worker):
    """RQ's classic worker: each job runs in a forked work-horse, so a crash or leak in one job cannot
    touch the worker. About 20 ms of CPU per job goes to the fork."""

    job_class = SafeJob
    queue_class = SafeQueue


class InlineWorker(_AnnouncesMerges, SimpleWorker):
    """Jobs run in the worker process itself (RQ's SimpleWorker): no fork per job, ~40% more throughput
    here. A crash takes the worker down with its job; the supervisor replaces it and hands the job back
    to RQ at once, so nothing is lost. Job timeouts still hold (SIGALRM in the worker's main thread)."""

    job_class = SafeJob
    queue_class = SafeQueue


WORKER_MODES = {"inline": InlineWorker, "fork": ForkingWorker}


def make_queue(connection: redis.Redis, name: str) -> Queue:
    return SafeQueue(name, connection=connection, serializer=JSONSerializer, job_class=SafeJob)


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


def enqueue_batch(queue: Queue, batch: dict, pipeline=None) -> Job:
    return enqueue_batches(queue, [batch], pipeline)


def enqueue_batches(queue: Queue, batches: list[dict], pipeline=None) -> Job:
    """One job for these staged batches (merge_batch for one, merge_batches for several), named after the
    first. pipeline: the caller's, to add its own writes to the same round trip (it executes it)."""
    first = batches[0]
    users = sum(batch["count"] for batch in batches)
    sources = ", ".join(dict.fromkeys(batch["source"] for batch in batches))
    if len(batches) == 1:
        function, argument, description = jobs.merge_batch, first, f"merge {users} users of {sources}"
    else:
        function, argument = jobs.merge_batches, batches
        description = f"merge {users} users in {len(batches)} batches of {sources}"
    return queue.enqueue_call(function, args=(argument,), job_id=f"batch-{first['report']}-{first['seq']}",
                              retry=RETRY, timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL, description=description,
                              pipeline=pipeline)


def enqueue_drain(queue: Queue, namespace: str) -> Job:
    return queue.enqueue(jobs.drain_inbox, namespace, retry=RETRY, job_timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL,
                         description="merge unary users")
