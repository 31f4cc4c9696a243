"""Operator commands: scale and manage workers, requeue or delete failed jobs, pause the watcher, replay files.

Every command is blocking (Redis, processes, files), returns a short sentence saying what happened,
and records it in the event log, so the console, a test and a future API report the same thing.
Failed jobs go through RQ's own registry API with our serializer and job class, so a requeued job
is exactly what `rq requeue` would have produced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.registry import FailedJobRegistry

from core.intake.quarantine import quarantined, replay_file
from core.queue.taskqueue import JSONSerializer, SafeJob

if TYPE_CHECKING:
    from rq import Queue

    from core.intake.watcher import Watcher
    from core.queue.supervisor import Supervisor
    from core.storage.store import Store

MAX_WORKERS = 64


class ControlError(RuntimeError):
    """A command that cannot be done; the message is one line for the operator."""


@dataclass(frozen=True, kw_only=True)
class Control:
    """Commands over the parts they act on; a part that is None (not started, or no watcher in this mode)
    makes its commands fail with one line."""

    emit: Callable[[str, str], None]  # (level, text) into the event log
    data_dir: Path  # its quarantine/ holds the files that replay
    watch: Path
    supervisor: Supervisor | None = None
    queue: Queue | None = None
    store: Store | None = None
    watcher: Watcher | None = None

    def _emit(self, text: str, level: str = "info") -> str:
        self.emit(level, text)
        return text

    # -- workers ---------------------------------------------------------------------------------------
    @property
    def _supervisor(self) -> Supervisor:
        if self.supervisor is None:
            raise ControlError("the runtime is not started")
        return self.supervisor

    def scale(self, desired: int) -> str:
        desired = max(0, min(MAX_WORKERS, desired))
        self._supervisor.scale(desired)
        return self._emit(f"workers scaled to {desired}")

    def add_worker(self) -> str:
        return self.scale(self._supervisor.desired + 1)

    def remove_worker(self) -> str:
        return self.scale(self._supervisor.desired - 1)

    def stop_worker(self, name: str) -> str:
        if not self._supervisor.stop_worker(name):
            raise ControlError(f"{name} is not a worker this console started")
        return f"worker {name} stopping after its current job"

    def restart_worker(self, name: str) -> str:
        if not self._supervisor.restart_worker(name):
            raise ControlError(f"{name} is not a worker this console started")
        return f"worker {name} restarting"

    # -- watcher ---------------------------------------------------------------------------------------
    def toggle_watcher(self) -> str:
        watcher = self.watcher
        if watcher is None:
            raise ControlError("no watcher is running")
        if watcher.paused.is_set():
            watcher.resume()
            return "watcher resumed"
        watcher.pause()
        return "watcher paused"

    # -- failed jobs -----------------------------------------------------------------------------------
    def _failed(self) -> FailedJobRegistry:
        queue = self.queue
        if queue is None:
            raise ControlError("the runtime is not started")
        return FailedJobRegistry(queue=queue, serializer=JSONSerializer, job_class=SafeJob)

    def requeue(self, job_id: str) -> str:
        try:
            self._failed().requeue(job_id)
        except (InvalidJobOperation, NoSuchJobError):
            raise ControlError(f"job {job_id} is no longer in the failed registry") from None
        return self._emit(f"job {job_id} requeued")

    def requeue_all(self) -> str:
        registry = self._failed()
        done = 0
        for job_id in registry.get_job_ids(cleanup=False):
            try:
                registry.requeue(job_id)
                done += 1
            except (InvalidJobOperation, NoSuchJobError):
                continue  # requeued or expired meanwhile
        return self._emit(f"{done} failed job(s) requeued")

    def delete_job(self, job_id: str) -> str:
        registry = self._failed()
        try:
            job = SafeJob.fetch(job_id, connection=registry.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            registry.remove(job_id)
            return self._emit(f"job {job_id} removed (its data had expired)")
        job.delete()
        return self._emit(f"job {job_id} deleted", "warning")

    # -- files -----------------------------------------------------------------------------------------
    def quarantined(self) -> list[dict]:
        return quarantined(self.data_dir)

    def replay(self, name: str) -> str:
        """Put a quarantined or rejected file back in the watched folder, and forget its report so it is read again."""
        names = {item.get("file") for item in self.quarantined()}
        if name in names:
            target = replay_file(self.data_dir, self.watch, name)
        else:
            target = self.watch / name
            if not target.is_file():
                raise ControlError(f"{name} is neither quarantined nor in {self.watch}")
        if self.store is not None:
            for report in self.store.reports(limit=2000):
                if report.get("name") == name and report.get("state") in ("rejected", "merged"):
                    self.store.forget_report(report["id"])
        if self.watcher is not None:
            self.watcher.notice(target)
        return self._emit(f"{name} replayed")
