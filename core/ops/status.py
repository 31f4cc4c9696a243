"""One snapshot of the whole system: services, queue, workers, files, merged users, rates and problems.

Everything the console draws comes from `collect(sources)`; nothing here knows about the terminal,
so the same picture can feed a TUI, a test or a future web page. `Sources` names the few parts a
snapshot reads, so this module never reaches into a runtime. Rates need history: the owner of the
parts keeps one `History` and passes it in every time.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import redis
from rq.results import Result
from rq.worker import Worker

from core.ops.doctor import diagnose
from core.ops.owner import Presence
from core.ops.snapshot import FailedJob, GrpcInfo, PipelineInfo, Pulse, RedisInfo, Snapshot, WatcherInfo, WorkerInfo
from core.queue.taskqueue import WORKER_TTL, JSONSerializer, SafeJob

if TYPE_CHECKING:
    from rq import Queue

    from core.config import Settings
    from core.intake.watcher import Watcher
    from core.ops.events import EventLog
    from core.queue.supervisor import Supervisor
    from core.service.server import GrpcServer
    from core.storage.broker import Broker
    from core.storage.exporter import Exporter
    from core.storage.redis_guard import RedisGuard
    from core.storage.store import Store

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


@dataclass(frozen=True)
class Sources:
    """What one snapshot reads. The parts a runtime has not started yet are None."""

    settings: Settings
    broker: Broker
    events: EventLog
    history: History
    store: Store | None = None
    queue: Queue | None = None
    supervisor: Supervisor | None = None
    server: GrpcServer | None = None
    watcher: Watcher | None = None
    watching: bool = False  # the watcher runs (not --once, which reads the folder once)
    exporter: Exporter | None = None
    guard: RedisGuard | None = None
    # An attached console has none of the parts above: what only the pipeline's owner sees comes from its
    # presence in Redis (core.ops.owner), and `pipeline` names the pipeline being watched.
    presence: Presence | None = None
    pipeline: PipelineInfo | None = None


def local_presence(sources: Sources) -> Presence:
    """What the owner's own parts say now: drawn by the local console, and published for attached ones."""
    supervisor, exporter = sources.supervisor, sources.exporter
    return Presence(
        grpc=_grpc_info(sources.server), watcher=_watcher_info(sources.watcher, sources.watching),
        desired=supervisor.desired if supervisor else 0,
        processes=tuple(supervisor.processes()) if supervisor else (),
        dead=tuple(supervisor.dead[-5:]) if supervisor else (),
        export_error=(exporter.error or "") if exporter is not None else "",
        redis_problem=sources.guard.problem if sources.guard is not None else "",
        embedded=sources.broker.embedded, output_path=str(sources.settings.output_path))


def collect(sources: Sources, now: float | None = None) -> Snapshot:
    """Everything the screen needs in one consistent object; blocking (Redis), so call it off the UI loop."""
    now = time.time() if now is None else now
    with sources.history.lock:
        return _collect(sources, now)


def _collect(sources: Sources, now: float) -> Snapshot:
    history = sources.history
    presence = sources.presence if sources.presence is not None else local_presence(sources)
    redis_info = _redis_info(sources, presence)
    grpc, watcher, desired = presence.grpc, presence.watcher, presence.desired
    events = tuple(sources.events.recent(500))
    pipeline = sources.pipeline
    # Known without Redis: a snapshot taken while Redis is away (restarting) must still name it.
    output_path = presence.output_path or str(sources.settings.output_path)
    if not redis_info.connected or sources.queue is None or sources.store is None:
        snap = Snapshot(taken_at=now, redis=redis_info, grpc=grpc, watcher=watcher, desired_workers=desired,
                        events=events, rate_history=tuple(history.rates), output_path=output_path,
                        pipeline=pipeline)
        return _with_problems(snap, sources.settings)
    queue, store = sources.queue, sources.store
    try:
        counts = _queue_counts(queue)
        workers = _workers(queue, presence, now)
        users = store.count()
        files = tuple(store.reports(limit=500))
        export = store.last_export()
        unreadable = store.unreadable_inbox()
        if presence.export_error:
            export = {**export, "error": presence.export_error}  # the doctor names the path it cannot write
        failed = _failed_jobs(queue, history)
        watcher = _still_waiting(watcher, files, presence.at)
    except redis.RedisError as error:
        broken = RedisInfo(redis_info.url, redis_info.embedded, False, error=str(error))
        snap = Snapshot(taken_at=now, redis=broken, grpc=grpc, watcher=watcher, desired_workers=desired,
                        events=events, rate_history=tuple(history.rates), output_path=output_path,
                        pipeline=pipeline)
        return _with_problems(snap, sources.settings)
    backlog = _backlog(counts)
    users_rate, jobs_rate, rates, trend = history.add(now, users, workers, backlog)
    eta = backlog / jobs_rate if backlog and jobs_rate > 0 else (0.0 if not backlog else None)
    snap = Snapshot(
        taken_at=now, redis=redis_info, grpc=grpc, watcher=watcher, workers=workers, desired_workers=desired,
        queue=counts, users=users, users_rate=users_rate, rate_history=rates, jobs_rate=jobs_rate,
        backlog=backlog, backlog_trend=trend, eta=eta, files=files, export=export,
        output_path=output_path, failed=failed, events=events, unreadable_inbox=unreadable, pipeline=pipeline,
    )
    return _with_problems(snap, sources.settings)


def pulse(store: Store, queue: Queue) -> Pulse:
    """The users merged and the backlog now, in one round trip (what Snapshot.users and .backlog count)."""
    now = time.time()
    with queue.connection.pipeline(transaction=False) as pipe:
        pipe.get(store.count_key)
        pipe.llen(queue.key)
        pipe.zcard(queue.started_job_registry.key)
        users, queued, started = pipe.execute()
    counts = {"queued": int(queued), "started": int(started)}
    return Pulse(taken_at=now, users=int(users or 0), backlog=_backlog(counts))


def _backlog(counts: dict) -> int:
    """Jobs queued or being merged: the backlog of the status line, the pulse and the ETA alike."""
    return counts["queued"] + counts["started"]


def _with_problems(snap: Snapshot, settings: Settings) -> Snapshot:
    return replace(snap, problems=tuple(diagnose(snap, settings)))


def _redis_info(sources: Sources, presence: Presence) -> RedisInfo:
    broker = sources.broker
    base = dict(url=broker.display_url, embedded=presence.embedded)
    connection = broker.client
    if connection is None:
        return RedisInfo(connected=False, error="not started", **base)
    try:
        info = connection.info("server")
        memory = connection.info("memory")
    except (redis.RedisError, OSError) as error:
        return RedisInfo(connected=False, error=str(error), **base)
    # Answering is not enough: a Redis on a full disk answers but refuses writes (core.storage.redis_guard probes).
    refused = presence.redis_problem
    return RedisInfo(connected=True, version=str(info.get("redis_version", "")),
                     memory=str(memory.get("used_memory_human", "")), error=refused, **base)


def _grpc_info(server: GrpcServer | None) -> GrpcInfo | None:
    if server is None:
        return None
    service = server.service
    return GrpcInfo(address=server.address, serving=server.serving, open_streams=service.open_streams,
                    calls=service.calls_done)


def waiting_names(watcher: Watcher) -> tuple[str, ...]:
    """Files settling in the folder and files queued for a reader: both "waiting" to the operator.

    Read from copies taken atomically (a dict copy runs no Python code, so no other thread can change the
    dict during it; the queue's deque is copied under the queue's own mutex), never by iterating live state.
    """
    settling = watcher.candidates.copy()
    with watcher.ready.mutex:
        queued = [p for p in watcher.ready.queue if p is not None]
    return tuple(sorted({p.name for p in [*settling, *queued]}))


def _still_waiting(watcher: WatcherInfo | None, files, said_at: float) -> WatcherInfo | None:
    """An attached console's watcher is the owner's word of up to a few seconds ago (said_at; 0 for the live
    one): a file whose report began after that is not waiting any more. Shown both waiting and read, its
    waiting row sat above its report, and enter on it opened nothing."""
    if watcher is None or not said_at or not watcher.waiting_names:
        return watcher
    begun = {r.get("name") for r in files if (r.get("started_at") or 0) > said_at}
    names = tuple(name for name in watcher.waiting_names if name not in begun)
    if len(names) == len(watcher.waiting_names):
        return watcher
    return replace(watcher, waiting_names=names,
                   waiting=max(0, watcher.waiting - (len(watcher.waiting_names) - len(names))))


def _watcher_info(watcher: Watcher | None, watching: bool) -> WatcherInfo | None:
    if watcher is None:
        return None
    folder = watcher.folder
    ok, error = True, ""
    if not folder.is_dir():
        ok, error = False, "missing"
    elif not os.access(folder, os.R_OK | os.X_OK):
        ok, error = False, "not readable"
    return WatcherInfo(folder=str(folder), active=watching, paused=watcher.paused.is_set(),
                       waiting=watcher.waiting, current=watcher.current or "", folder_ok=ok, folder_error=error,
                       waiting_names=waiting_names(watcher))


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


def _workers(queue, presence: Presence, now: float) -> tuple[WorkerInfo, ...]:
    rq_workers = {w.name: w for w in Worker.all(queue=queue, serializer=JSONSerializer, job_class=SafeJob)}
    local = {p["name"]: p for p in presence.processes}
    rows = []
    for name in list(local) + [n for n in rq_workers if n not in local]:
        process, worker = local.get(name), rq_workers.get(name)
        heartbeat = worker.last_heartbeat.timestamp() if worker and worker.last_heartbeat else None
        if process is not None and not process["alive"]:
            state = "dead"
        elif process is not None and process.get("frozen"):
            state = "frozen"  # stopped by a signal (core.queue.supervisor hands its job back after a delay)
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
    shown = {r.name for r in rows}
    for dead in reversed(presence.dead):
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
