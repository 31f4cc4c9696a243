"""The whole pipeline in one object: Redis, gRPC server, workers, watcher and exporter.

The headless mode and the TUI drive this same object: start(), commands, snapshot(), stop().
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rq import Worker

from core.config import Settings
from core.intake.client import UsersClient
from core.intake.dropfiles import PATTERNS
from core.intake.watcher import DONE_STATES, Watcher
from core.ops.events import EventLog
from core.ops.eventstream import EventPublisher
from core.ops.owner import OwnerChannel, Presence
from core.ops.status import History, Sources, local_presence
from core.queue.failures import FailureLog
from core.queue.supervisor import Supervisor
from core.queue.taskqueue import JSONSerializer, SafeJob, make_queue
from core.service.calllog import CallLog
from core.service.security import exposure, server_name
from core.service.server import GrpcServer, Intake
from core.storage import privacy
from core.storage.broker import Broker
from core.storage.exporter import Exporter
from core.storage.redis_guard import RedisGuard
from core.storage.store import Store
from core.storage.viewfile import ExportStopped

NO_WORKER_GRACE = 30.0
# The gRPC server's own grace for calls in flight at stop (a held-back stream is cancelled, not waited on).
SERVER_STOP_GRACE = 3.0


def _usable_folder(path: Path, what: str) -> None:
    """Create the folder if needed, or fail with one line that names it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OSError(f"the {what} {path} exists and is not a folder") from None
    except OSError as error:
        raise OSError(f"cannot create the {what} {path}: {error.strerror}") from None
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise OSError(f"the {what} {path} is not readable and writable by this user")


def _size(connection, key: str) -> int:
    """Items in a key of whatever type holds it (the unary inbox's layout belongs to core.storage.store)."""
    kind = connection.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    sizes = {"list": connection.llen, "hash": connection.hlen, "zset": connection.zcard, "set": connection.scard,
             "stream": connection.xlen}
    return int(sizes[kind](key)) if kind in sizes else 0


class Fatal(RuntimeError):
    """The runtime cannot go on (its Redis cannot be started again); the message is one line."""


@dataclass(frozen=True)
class StopOutcome:
    """How a stop ended: users accepted but not merged (None: unknown, Redis gone) and the final export."""

    remaining: int | None
    exported: bool
    users: int | None = None

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and self.exported


@dataclass
class Summary:
    files: int
    accepted: int
    rejected: int
    duplicates: int
    damaged: int
    skipped: int
    users: int
    seconds: float

    @property
    def clean(self) -> bool:
        return self.rejected == 0 and self.damaged == 0

    def line(self) -> str:
        return (f"{self.files} files, {self.accepted} users accepted, {self.rejected} rejected, "
                f"{self.duplicates} duplicates, {self.damaged} damaged, {self.skipped} already ingested; "
                f"all_users.json holds {self.users} users; {self.seconds:.2f} s")


class Runtime:
    def __init__(self, settings: Settings, events: EventLog | None = None, *, serve: bool = True,
                 watch: bool = True):
        self.settings = settings
        self.events = events or EventLog()
        self.serve = serve
        self.watch = watch
        self.broker = Broker(settings.redis_url, settings.data_dir)
        self.store: Store | None = None
        self.queue = None
        self.server: GrpcServer | None = None
        self.supervisor: Supervisor | None = None
        self.client: UsersClient | None = None
        self.watcher: Watcher | None = None
        self.exporter: Exporter | None = None
        self.metrics = None
        self.call_log: CallLog | None = None
        self.failures: FailureLog | None = None
        self.guard: RedisGuard | None = None
        self.fatal: str | None = None
        self.started_at = time.time()
        self._stop_lock = threading.Lock()
        self._stopped: StopOutcome | None = None
        # A plain flag, not an Event: abort_drain() runs in signal handlers, and setting an Event there deadlocks
        # when the signal lands while the main thread holds that Event's lock (waiting on it in _drain).
        self._drain_aborted = False
        self._history = History()  # rates and trends, across this runtime's snapshots
        self.publisher: EventPublisher | None = None
        self.owner: OwnerChannel | None = None

    def emit(self, level: str, text: str) -> None:
        self.events.emit(level, text)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> "Runtime":
        # Under the stop lock: a signal arriving mid-start stops the runtime after start, never halfway
        # through it (children started after a stop would be orphans).
        with self._stop_lock:
            if self._stopped is not None:
                raise RuntimeError("the runtime was stopped while it was starting")
            return self._start()

    @property
    def stopped(self) -> bool:
        return self._stopped is not None

    def _start(self) -> "Runtime":
        s = self.settings
        _usable_folder(s.data_dir, "data folder")
        privacy.set_group_readable(s.group_readable)
        if problem := privacy.make_private(s.data_dir):
            self.emit("warning", problem)
        if self.serve:
            _usable_folder(s.watch, "watched folder")
        connection = self.broker.start()
        kind = "embedded" if self.broker.embedded else "external"
        self.emit("info", f"redis: {kind} at {self.broker.display_url}")
        # Every event from here on also goes to Redis, for consoles attached from elsewhere (core.ops.eventstream).
        self.publisher = EventPublisher(connection, s.namespace, self.events).start()
        self.guard = RedisGuard(self.broker, s.namespace, self.emit, self._on_fatal).start()
        self.store = Store(connection, s.namespace)
        if moved := self.store.upgrade_layout(s.merge_key):
            self.emit("info", f"store: {moved} users moved to the compact layout")
        self.queue = make_queue(connection, s.namespace)
        self.failures = FailureLog(self.queue, self.events.emit).start()
        self.supervisor = Supervisor(connection, self.broker.url, s.namespace, s.workers, on_event=self.emit,
                                     mode=s.worker_mode, log_dir=s.data_dir / "logs")
        self.supervisor.start()
        self.emit("info", f"workers: {s.workers} started")
        if self.serve:
            intake = Intake(self.store, self.queue, s.merge_key, s.batch_size, s.max_backlog,
                            quarantine=s.data_dir / "quarantine", on_event=self.events.emit)
            self.call_log = CallLog(self.events.emit)
            self.server = GrpcServer(intake, s.grpc_listen, tls_cert=s.tls_cert, tls_key=s.tls_key, token=s.token,
                                     max_concurrent_calls=s.max_concurrent_calls, idle_timeout=s.idle_timeout,
                                     max_batch_users=s.max_batch_users, max_staged_bytes=s.max_staged_bytes,
                                     call_log=self.call_log)
            self.server.start()
            intake.drain_leftovers()
            self.emit("info", f"gRPC: serving Users on {self.server.address}"
                              f"{' with TLS' if s.tls else ''}{' with a token' if s.token else ''}")
            # A second signal (abort_drain) also gives up a long write of all_users.json.
            self.exporter = Exporter(self.store, s.output_path, s.export_interval, on_event=self.emit,
                                     idle=self._merges_idle, stopping=lambda: self._drain_aborted,
                                     redis_url=self.broker.url)
            if self.watch:  # --once writes the file once, at the end: exporting meanwhile only costs time
                self.exporter.start()
            self.client = UsersClient(self._client_target(), tls_ca=s.tls_cert, token=s.token,
                                      server_name=server_name(s.tls_cert) if s.tls else None)
            self.watcher = Watcher(s.watch, self.store, self.client, self.events,
                                   batch_size=s.batch_size, quiet_period=s.quiet_period, poll=s.poll,
                                   after_merge=s.after_merge)
            if self.watch:
                self.watcher.start()
                self.emit("info", f"watching {s.watch} for {', '.join('*' + p for p in PATTERNS)}")
        if s.metrics_listen:
            from core.ops.metrics import MetricsServer, PipelineCollector

            collector = PipelineCollector(self.store, self.queue, self.supervisor)
            self.metrics = MetricsServer(collector, s.metrics_listen, s.tls_cert, s.tls_key).start()
            self.emit("info", f"metrics: Prometheus endpoint on http{'s' if s.tls else ''}://{self.metrics.address}"
                              f"/metrics")
        for level, text in exposure(s, self.server.address if self.server else None,
                                    self.metrics.address if self.metrics else None):
            self.emit(level, text)
        # Last: an attached console's request may reach any part started above.
        self.owner = OwnerChannel(connection, s.namespace, describe=self.presence, control=lambda: self.control,
                                  emit=self.emit).start()
        return self

    def _client_target(self) -> str:
        return self.server.private_target  # our own socket: outside callers' limits never starve the watcher

    def _on_fatal(self, reason: str) -> None:
        self.fatal = reason
        self.emit("error", reason)

    def check(self) -> None:
        """Raise Fatal when the runtime cannot go on; the modes call it from their main loop."""
        if self.fatal:
            raise Fatal(self.fatal)

    def stop(self, grace: float = 0.0) -> StopOutcome:
        """Stop in dependency order; accepted users are already in Redis, so nothing is lost.

        With a grace period, intake stops first and the workers go on until every accepted user is merged
        (or the grace runs out, or abort_drain() is called); the outcome says what is left. Safe to call
        from several threads and more than once: later calls wait for the first and return its outcome.
        """
        with self._stop_lock:
            if self._stopped is None:
                self._stopped = self._stop(grace)
            return self._stopped

    def abort_drain(self) -> None:
        """Stop waiting for the merge (a second signal): stop now, what is left finishes at the next start."""
        self._drain_aborted = True

    def _stop(self, grace: float) -> StopOutcome:
        if self.owner:
            self.owner.stop()  # first: no request from an attached console is taken while the parts stop
        if self.metrics:
            self.metrics.stop()
        if self.watcher:
            self.watcher.request_stop()
        if self.server:
            # Before joining the readers: a stream held back by a full queue is cancelled, not waited on;
            # its file stays "streaming" in the ledger and is read again at the next start.
            self.server.stop(grace=SERVER_STOP_GRACE)
        if self.watcher:
            self.watcher.stop()
        if self.client:
            self.client.close()
        if self.call_log:
            self.call_log.close()
        remaining = self._drain(grace) if self.queue is not None else 0
        if self.supervisor:
            self.supervisor.stop()
        if self.failures:
            self.failures.stop()
        if self.guard:
            self.guard.stop()  # before Redis stops, or the guard would start it again
        exported, users = self.exporter is None, None
        if self.exporter:
            self.exporter.stop()
            try:
                users = self.exporter.write()["count"]
                exported = True
            except ExportStopped as stopped:
                self.emit("warning", f"{self.exporter.path.name} not brought up to date: {stopped} (a second "
                                     f"signal); it still shows the export before, and the next start writes it")
            except Exception as error:  # Redis already gone: the last periodic export stands
                self.emit("error", f"final export failed: {error}")
        if self.publisher:
            self.publisher.stop()  # the stop's own lines reach attached consoles
        self.broker.stop()
        return StopOutcome(remaining=remaining, exported=exported, users=users)

    def _drain(self, grace: float) -> int | None:
        """Let the workers merge what was accepted, for up to `grace` seconds; users still waiting."""
        deadline = time.monotonic() + grace
        while True:
            remaining = self.pending_users()
            if remaining == 0 or time.monotonic() >= deadline or self._drain_aborted or self.fatal:
                return remaining
            time.sleep(0.1)

    def pending_users(self) -> int | None:
        """Users accepted (in Redis) and not merged yet: queued and running batch jobs, plus the unary
        inbox. None when Redis does not answer."""
        queue = self.queue
        try:
            connection = queue.connection
            ids = [i.decode() for i in connection.lrange(queue.key, 0, -1)]
            ids += [m.decode().split(":", 1)[0] for m in connection.zrange(queue.started_job_registry.key, 0, -1)]
            users = _size(connection, self.store.key("inbox"))
            for job in SafeJob.fetch_many(ids, connection=connection, serializer=JSONSerializer):
                # A drain job's users are the inbox's, counted above (its script takes them atomically).
                if job is not None and job.func_name.endswith("merge_batch") and job.args:
                    users += int(job.args[0].get("count", 0))
                elif job is not None and job.func_name.endswith("merge_batches") and job.args:
                    users += sum(int(batch.get("count", 0)) for batch in job.args[0])
            return users
        except Exception:  # Redis gone, or a job we cannot read: unknown, never "all done"
            return None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- queries --------------------------------------------------------------------------------------
    def backlog(self) -> int:
        return len(self.queue) if self.queue is not None else 0

    def wait_merged(self, report_ids: list[str], timeout: float | None = None) -> None:
        """Block until every report is merged or rejected.

        Fails instead of waiting forever when no worker serves the queue, or when batches failed for good
        (their users cannot arrive; the failed jobs hold them for a requeue).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = set(report_ids)
        idle_since = None
        failed_before = len(self.queue.failed_job_registry)
        while pending:
            self.watcher.check_inflight()
            for report in self.store.reports_for(list(pending)):
                if report.get("state") in DONE_STATES:
                    pending.discard(report["id"])
            if not pending:
                break
            failed = len(self.queue.failed_job_registry) - failed_before
            if failed > 0:
                raise RuntimeError(f"{failed} batch job(s) failed for good, so {len(pending)} file(s) cannot "
                                   f"complete; see Failed jobs in the console or `rq info`, fix, and requeue them")
            # A worker registered in Redis (here or on another machine) serves the queue; a local process
            # that keeps dying before it registers does not.
            if Worker.count(queue=self.queue):
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > NO_WORKER_GRACE:
                raise RuntimeError(f"no worker serves queue {self.queue.name!r}: pass --workers N here or run "
                                   f"`swordsec-console worker` against the same Redis")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} file(s) not merged in time")
            time.sleep(0.1)

    def _merges_idle(self) -> bool:
        """No stream open on our server and no batch queued or being merged: the last merge has landed (for the
        exporter, which then writes at once instead of waiting to see whether more merges come)."""
        if self.server is not None and self.server.service.open_streams:
            return False
        return len(self.queue) == 0 and self.queue.started_job_registry.count == 0

    def run_once(self) -> Summary:
        """Ingest every file now in the watched folder, wait for the merge, write all_users.json."""
        started = time.monotonic()
        self.watcher.folder.mkdir(parents=True, exist_ok=True)
        self.watcher.scan(everything=True)
        # Several files at once: each spends much of its time waiting on Redis and the server.
        with ThreadPoolExecutor(self.watcher.readers, thread_name_prefix="ingest") as pool:
            outcomes = list(pool.map(self.watcher.ingest_now, self.watcher.drain_now()))
        while self.watcher.candidates:  # "busy": a copy of a file that was being read
            outcomes += [self.watcher.ingest_now(path) for path in self.watcher.drain_now()]
        outcomes = [o for o in outcomes if o[1] != "busy"]
        sent = list(dict.fromkeys(report_id for report_id, outcome in outcomes if outcome == "sent"))
        self.wait_merged(sent)
        self.server.service.intake.ledger.check()  # the server's merged lines come before the summary
        self.watcher.check_inflight()  # the files merged since its last look: --after-merge
        info = self.exporter.write()
        fresh = [self.store.report(i) for i in sent]
        refused = sum(1 for _, outcome in outcomes if outcome == "refused")
        return Summary(
            files=len(outcomes), accepted=sum(r.get("accepted", 0) for r in fresh),
            rejected=sum(r.get("rejected", 0) for r in fresh), duplicates=sum(r.get("duplicate", 0) for r in fresh),
            damaged=refused + sum(1 for r in fresh if r.get("damage")),
            skipped=sum(1 for _, outcome in outcomes if outcome == "skipped"), users=info["count"],
            seconds=time.monotonic() - started,
        )

    # -- for the console -------------------------------------------------------------------------------
    def snapshot(self):
        """One consistent picture of the whole system (core.ops.status); safe to call from any thread."""
        from core.ops.status import collect

        return collect(self._sources())

    def presence(self) -> Presence:
        """What only this process sees (server, watcher, worker processes), for consoles attached elsewhere."""
        return local_presence(self._sources())

    def _sources(self) -> Sources:
        return Sources(settings=self.settings, broker=self.broker, events=self.events, history=self._history,
                       store=self.store, queue=self.queue, supervisor=self.supervisor, server=self.server,
                       watcher=self.watcher, watching=self.watch, exporter=self.exporter, guard=self.guard)

    @property
    def control(self):
        """Operator commands (core.ops.control) over the parts running now: scale workers, requeue or delete jobs,
        pause the watcher..."""
        from core.ops.control import Control

        return Control(emit=self.emit, data_dir=self.settings.data_dir, watch=self.settings.watch,
                       supervisor=self.supervisor, queue=self.queue, store=self.store, watcher=self.watcher)
