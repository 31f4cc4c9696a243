"""One snapshot of the whole system: services, queue, workers, files, merged users, rates and problems.

Everything the console draws comes from `collect(runtime)`; nothing here knows about the terminal,
so the same picture can feed a TUI, a test or a future web page. Rates need history, so each
runtime gets a `History` (kept beside it, weakly) that successive snapshots update.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque

import redis
from rq.results import Result
from rq.worker import Worker

from core.doctor import diagnose
from core.snapshot import FailedJob, GrpcInfo, RedisInfo, Snapshot, WatcherInfo, WorkerInfo
from core.taskqueue import WORKER_TTL, JSONSerializer, SafeJob

REGISTRIES = ("queued", "started", "finished", "failed", "deferred", "scheduled", "canceled")
RATE_WINDOW = 5.0
SPARK_POINTS = 60
MAX_FAILED = 50


class History:
    """Samples of successive snapshots, for rates, the sparkline and the backlog trend."""

    def __init__(self):
        self.users: deque[tuple[float, int]] = deque(maxlen=64)
        self.rates: deque[float] = deque(maxlen=SPARK_POINTS)
        self.jobs: deque[tuple[float, int]] = deque(maxlen=64)
        self.backlog: deque[tuple[float, int]] = deque(maxlen=64)
        self.job_counts: dict[str, int] = {}
        self.jobs_done = 0
        self.tracebacks: dict[tuple[str, float | None], str] = {}
        self.lock = threading.Lock()

    @staticmethod
    def _rate(samples) -> float:
        now, latest = samples[-1]
        older = [s for s in samples if now - s[0] >= RATE_WINDOW] or [samples[0]]
        then, first = older[-1]
        return max(0.0, (latest - first) / (now - then)) if now > then else 0.0

    def add(self, now: float, users: int, workers: tuple[WorkerInfo, ...], backlog: int):
        # Jobs done comes from each worker's own counters, diffed per name, so a restarted worker
        # (whose counters start again at 0) never makes the throughput go negative.
        for worker in workers:
            before = self.job_counts.get(worker.name)
            total = worker.successful + worker.failed
            if before is not None and total > before:
                self.jobs_done += total - before
            self.job_counts[worker.name] = total
        self.users.append((now, users))
        self.jobs.append((now, self.jobs_done))
        self.backlog.append((now, backlog))
        users_rate, jobs_rate = self._rate(self.users), self._rate(self.jobs)
        self.rates.append(users_rate)
        old = [b for t, b in self.backlog if now - t >= RATE_WINDOW * 2]
        trend = backlog - old[-1] if old else 0
        return users_rate, jobs_rate, tuple(self.rates), trend


_HISTORIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def history_of(runtime) -> History:
    return _HISTORIES.setdefault(runtime, History())


def collect(runtime, now: float | None = None) -> Snapshot:
    """Everything the screen needs in one consistent object; blocking (Redis), so call it off the UI loop."""
    now = time.time() if now is None else now
    history = history_of(runtime)
    with history.lock:
        return _collect(runtime, history, now)


def _collect(runtime, history: History, now: float) -> Snapshot:
    connection = runtime.broker.client
    redis_info = _redis_info(runtime, connection)
    grpc = _grpc_info(runtime.server)
    watcher = _watcher_info(runtime)
    events = tuple(runtime.events.recent(500))
    supervisor = runtime.supervisor
    desired = supervisor.desired if supervisor else 0
    # Known without Redis: a snapshot taken while Redis is away (restarting) must still name it.
    output_path = str(runtime.settings.output_path)
    if not redis_info.connected or runtime.queue is None:
        snap = Snapshot(taken_at=now, redis=redis_info, grpc=grpc, watcher=watcher, desired_workers=desired,
                        events=events, rate_history=tuple(history.rates), output_path=output_path)
        return _with_problems(snap, runtime)
    queue = runtime.queue
    try:
        counts = _queue_counts(queue)
        workers = _workers(queue, supervisor, now)
        users = runtime.store.count()
        files = tuple(runtime.store.reports(limit=500))
        export = runtime.store.last_export()
        unreadable = runtime.store.unreadable_inbox()
        if (exporter := runtime.exporter) is not None and getattr(exporter, "error", ""):
            export = {**export, "error": exporter.error}  # the doctor names the path it cannot write
        failed = _failed_jobs(queue, history)
    except redis.RedisError as error:
        broken = RedisInfo(redis_info.url, redis_info.embedded, False, error=str(error))
        snap = Snapshot(taken_at=now, redis=broken, grpc=grpc, watcher=watcher, desired_workers=desired,
                        events=events, rate_history=tuple(history.rates), output_path=output_path)
        return _with_problems(snap, runtime)
    backlog = counts["queued"] + counts["started"]
    users_rate, jobs_rate, rates, trend = history.add(now, users, workers, backlog)
    eta = backlog / jobs_rate if backlog and jobs_rate > 0 else (0.0 if not backlog else None)
    snap = Snapshot(
        taken_at=now, redis=redis_info, grpc=grpc, watcher=watcher, workers=workers, desired_workers=desired,
        queue=counts, users=users, users_rate=users_rate, rate_history=rates, jobs_rate=jobs_rate,
        backlog=backlog, backlog_trend=trend, eta=eta, files=files, export=export,
        output_path=output_path, failed=failed, events=events, unreadable_inbox=unreadable,
    )
    return _with_problems(snap, runtime)


def _with_problems(snap: Snapshot, runtime) -> Snapshot:
    from dataclasses import replace

    return replace(snap, problems=tuple(diagnose(snap, runtime.settings)))


def _redis_info(runtime, connection) -> RedisInfo:
    broker = runtime.broker
    base = dict(url=broker.display_url, embedded=broker.embedded)
    if connection is None:
        return RedisInfo(connected=False, error="not started", **base)
    try:
        info = connection.info("server")
        memory = connection.info("memory")
    except (redis.RedisError, OSError) as error:
        return RedisInfo(connected=False, error=str(error), **base)
    # Answering is not enough: a Redis on a full disk answers but refuses writes (core.redis_guard probes).
    refused = runtime.guard.problem if getattr(runtime, "guard", None) is not None else ""
    return RedisInfo(connected=True, version=str(info.get("redis_version", "")),
                     memory=str(memory.get("used_memory_human", "")), error=refused, **base)


def _grpc_info(server) -> GrpcInfo | None:
    if server is None:
        return None
    service = server.service
    return GrpcInfo(address=server.address, serving=server.serving, open_streams=service.open_streams,
                    calls=service.calls_done)


def _watcher_info(runtime) -> WatcherInfo | None:
    watcher = runtime.watcher
    if watcher is None:
        return None
    folder = watcher.folder
    ok, error = True, ""
    if not folder.is_dir():
        ok, error = False, "missing"
    elif not os.access(folder, os.R_OK | os.X_OK):
        ok, error = False, "not readable"
    try:
        # Settling candidates and files already queued for reading are both "waiting" to the operator.
        queued = [p for p in list(watcher.ready.queue) if p is not None]
        names = tuple(sorted({p.name for p in list(watcher.candidates) + queued}))
    except RuntimeError:  # the watcher thread changed the dict mid-copy; the next snapshot will show them
        names = ()
    return WatcherInfo(folder=str(folder), active=bool(runtime.watch), paused=watcher.paused.is_set(),
                       waiting=watcher.waiting, current=watcher.current or "", folder_ok=ok, folder_error=error,
                       waiting_names=names)


def _queue_counts(queue) -> dict:
    """Counts per RQ registry with one round trip (ZCARD, not RQ's count, which also runs cleanup)."""
    registries = [queue.started_job_registry, queue.finished_job_registry, queue.failed_job_registry,
                  queue.deferred_job_registry, queue.scheduled_job_registry, queue.canceled_job_registry]
    with queue.connection.pipeline(transaction=False) as pipe:
        pipe.llen(queue.key)
        for registry in registries:
            pipe.zcard(registry.key)
        values = pipe.execute()
    return dict(zip(REGISTRIES, (int(v) for v in values)))


def _workers(queue, supervisor, now: float) -> tuple[WorkerInfo, ...]:
    rq_workers = {w.name: w for w in Worker.all(queue=queue, serializer=JSONSerializer, job_class=SafeJob)}
    local = {p["name"]: p for p in supervisor.processes()} if supervisor else {}
    rows = []
    for name in list(local) + [n for n in rq_workers if n not in local]:
        process, worker = local.get(name), rq_workers.get(name)
        heartbeat = worker.last_heartbeat.timestamp() if worker and worker.last_heartbeat else None
        if process is not None and not process["alive"]:
            state = "dead"
        elif process is not None and process.get("frozen"):
            state = "frozen"  # stopped by a signal (core.supervisor hands its job back after a delay)
        elif worker is None:
            state = "starting"
        elif heartbeat is not None and now - heartbeat > WORKER_TTL:
            state = "stale"
        else:
            state = "busy" if worker.get_state() == "busy" else "idle"
        rows.append(WorkerInfo(
            name=name, pid=process["pid"] if process else worker.pid, state=state,
            current_job=(worker.get_current_job_id() or "") if worker else "",
            successful=worker.successful_job_count if worker else 0, failed=worker.failed_job_count if worker else 0,
            last_heartbeat=heartbeat, local=process is not None,
        ))
    if supervisor:
        shown = {r.name for r in rows}
        for dead in reversed(supervisor.dead[-5:]):
            if dead["name"] not in shown and now - dead["at"] < 120:
                rows.append(WorkerInfo(name=dead["name"], pid=dead["pid"], state="dead", local=False))
                shown.add(dead["name"])
    return tuple(rows)


def _failed_jobs(queue, history: History) -> tuple[FailedJob, ...]:
    registry = queue.failed_job_registry
    ids = [i.decode() if isinstance(i, bytes) else i
           for i in queue.connection.zrevrange(registry.key, 0, MAX_FAILED - 1)]
    if not ids:
        history.tracebacks.clear()
        return ()
    jobs = SafeJob.fetch_many(ids, connection=queue.connection, serializer=JSONSerializer)
    rows, keep = [], {}
    for job_id, job in zip(ids, jobs):
        if job is None:
            rows.append(FailedJob(id=job_id, description="(job data expired)", exc_info=""))
            continue
        ended = job.ended_at.timestamp() if job.ended_at else None
        key = (job_id, ended)
        # A traceback never changes until the job runs again, so fetch each one once.
        text = history.tracebacks.get(key)
        if text is None:
            text = _traceback(job)
        keep[key] = text
        rows.append(FailedJob(id=job_id, description=job.description or job.func_name, exc_info=text,
                              ended_at=ended))
    history.tracebacks = keep
    return tuple(rows)


def _traceback(job) -> str:
    try:
        result = Result.fetch_latest(job, serializer=JSONSerializer)
    except Exception:  # a result written by another serializer: fall back to the job's own copy
        result = None
    if result is not None and result.exc_string:
        return result.exc_string
    return getattr(job, "_exc_info", None) or ""
