"""The picture the console draws: plain frozen data, made by core.ops.status.collect and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.ops.doctor import Problem
from core.ops.events import Event


@dataclass(frozen=True)
class RedisInfo:
    url: str
    embedded: bool
    connected: bool
    version: str = ""
    memory: str = ""
    error: str = ""


@dataclass(frozen=True)
class GrpcInfo:
    address: str
    serving: bool
    open_streams: int = 0
    calls: int = 0


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    pid: int | None
    state: str  # idle, busy, starting, dead, stale
    current_job: str = ""
    successful: int = 0
    failed: int = 0
    last_heartbeat: float | None = None
    local: bool = True


@dataclass(frozen=True)
class WatcherInfo:
    folder: str
    active: bool
    paused: bool
    waiting: int
    current: str = ""
    folder_ok: bool = True
    folder_error: str = ""
    waiting_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class FailedJob:
    id: str
    description: str
    exc_info: str
    ended_at: float | None = None


@dataclass(frozen=True)
class PipelineInfo:
    """For an attached console: the pipeline it watches, and whether its owner speaks in Redis."""

    namespace: str
    alive: bool
    host: str = ""
    pid: int = 0


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    redis: RedisInfo
    grpc: GrpcInfo | None
    watcher: WatcherInfo | None
    workers: tuple[WorkerInfo, ...] = ()
    desired_workers: int = 0
    queue: dict = field(default_factory=dict)
    users: int = 0
    users_rate: float = 0.0
    rate_history: tuple[float, ...] = ()
    jobs_rate: float = 0.0
    backlog: int = 0
    backlog_trend: int = 0
    eta: float | None = None
    files: tuple[dict, ...] = ()
    export: dict = field(default_factory=dict)
    output_path: str = ""
    failed: tuple[FailedJob, ...] = ()
    unreadable_inbox: int = 0
    problems: tuple[Problem, ...] = ()
    events: tuple[Event, ...] = ()
    pipeline: PipelineInfo | None = None  # None: the console runs the pipeline itself

    @property
    def alive_workers(self) -> int:
        return sum(1 for w in self.workers if w.local and w.state in ("idle", "busy"))

    @property
    def in_flight(self) -> int:
        """Work that quitting now would interrupt: queued or running jobs, files being read."""
        streaming = sum(1 for f in self.files if f.get("state") == "streaming")
        return self.queue.get("queued", 0) + self.queue.get("started", 0) + streaming


@dataclass(frozen=True)
class Pulse:
    """The headline numbers between two snapshots (core.ops.status.pulse): one round trip, cheap enough to draw
    several times a second while the full snapshot comes once a second."""

    taken_at: float
    users: int
    backlog: int  # jobs queued or being merged, as Snapshot.backlog counts them
