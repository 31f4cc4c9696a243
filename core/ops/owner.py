"""The pipeline's owner in Redis. The process that runs the pipeline (`--no-ui`, or the local console) says
who it is and what only it can see (its gRPC server, watcher and worker processes), every second, under a
key that expires when it stops saying it; and it carries out the requests attached consoles send it
(scale, restart, pause the watcher, replay), answering each one."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

import orjson
import redis

from core.background import Background
from core.ops.snapshot import GrpcInfo, WatcherInfo

PRESENCE_EVERY = 1.0
PRESENCE_TTL = 5  # seconds without a word from the owner before consoles say nobody runs the pipeline
REPLY_TTL = 60
# What an attached console may ask the owner for (the core.ops.control commands only the owner can do), and
# how many arguments each takes.
ACTIONS = {"add_worker": 0, "remove_worker": 0, "scale": 1, "stop_worker": 1, "restart_worker": 1,
           "toggle_watcher": 0, "replay": 1}
WHAT = {"add_worker": "add a worker", "remove_worker": "remove a worker", "scale": "scale the workers",
        "stop_worker": "stop a worker", "restart_worker": "restart a worker",
        "toggle_watcher": "pause or resume the watcher", "replay": "replay a file"}


def owner_key(namespace: str) -> str:
    return f"{namespace}:owner"


def requests_key(namespace: str) -> str:
    return f"{namespace}:control"


def reply_key(namespace: str, request_id: str) -> str:
    return f"{namespace}:control:reply:{request_id}"


@dataclass(frozen=True)
class Presence:
    """What only the process running the pipeline knows. A local snapshot reads it from the live parts;
    an attached one from the owner's key (an empty Presence when no owner speaks)."""

    grpc: GrpcInfo | None = None
    watcher: WatcherInfo | None = None
    desired: int = 0
    processes: tuple[dict, ...] = ()  # the supervisor's worker processes: name, pid, alive, frozen
    dead: tuple[dict, ...] = ()  # workers that died lately: name, pid, at
    export_error: str = ""
    redis_problem: str = ""  # Redis answers but refuses writes (core.storage.redis_guard)
    embedded: bool = False
    output_path: str = ""
    host: str = ""
    pid: int = 0
    instance: str = ""
    at: float = 0.0
    started_at: float = 0.0

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> Presence:
        data = orjson.loads(raw)
        grpc = GrpcInfo(**data["grpc"]) if data.get("grpc") else None
        watcher = data.get("watcher")
        if watcher:
            watcher = WatcherInfo(**{**watcher, "waiting_names": tuple(watcher.get("waiting_names", ()))})
        known = set(cls.__dataclass_fields__) - {"grpc", "watcher", "processes", "dead"}
        return cls(grpc=grpc, watcher=watcher or None, processes=tuple(data.get("processes", ())),
                   dead=tuple(data.get("dead", ())), **{k: v for k, v in data.items() if k in known})


def read_presence(connection: redis.Redis, namespace: str) -> Presence | None:
    raw = connection.get(owner_key(namespace))
    if raw is None:
        return None
    try:
        return Presence.decode(raw)
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None  # written by another release: treat as no owner we can talk to


class OwnerChannel(Background):
    """The owner's side: one loop that refreshes the presence key and serves requests (BLPOP, 1 s)."""

    thread_name = "owner-channel"
    join_seconds = 3.0

    def __init__(self, connection: redis.Redis, namespace: str, *, describe: Callable[[], Presence],
                 control: Callable[[], object], emit: Callable[[str, str], None]):
        super().__init__()
        self.connection = connection
        self.namespace = namespace
        self.describe = describe  # the owner's live parts, now
        self.control = control  # core.ops.control.Control over the parts running now
        self.emit = emit
        self.instance = uuid.uuid4().hex
        self.started_at = time.time()
        self._host = socket.gethostname().split(".")[0]
        self._wake_key = f"{namespace}:control:wake:{self.instance}"

    def stop(self) -> None:
        self._stop.set()
        try:  # end the loop's wait for a request now, not at its timeout
            self.connection.rpush(self._wake_key, 1)
        except (redis.RedisError, OSError):
            pass
        super().stop()
        try:  # only our own presence: a newer owner of the namespace keeps its key
            self.connection.delete(self._wake_key)
            current = read_presence(self.connection, self.namespace)
            if current is not None and current.instance == self.instance:
                self.connection.delete(owner_key(self.namespace))
        except (redis.RedisError, OSError):
            pass  # it expires by itself

    def _run(self) -> None:
        next_presence = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_presence:
                    self.publish()
                    next_presence = time.monotonic() + PRESENCE_EVERY
                taken = self.connection.blpop([requests_key(self.namespace), self._wake_key], timeout=1)
                if taken is not None and taken[0].decode() == requests_key(self.namespace):
                    self.serve(taken[1])
                    next_presence = 0.0  # the answer changed what consoles see: say it now
            except (redis.RedisError, OSError):
                self._stop.wait(1.0)  # Redis away (restarting): consoles see no owner until it is back

    def publish(self) -> None:
        presence = self.describe()
        presence = Presence(**{**{k: getattr(presence, k) for k in presence.__dataclass_fields__},
                               "host": self._host, "pid": os.getpid(), "instance": self.instance, "at": time.time(),
                               "started_at": self.started_at})
        self.connection.set(owner_key(self.namespace), presence.encode(), ex=PRESENCE_TTL)

    def serve(self, raw: bytes) -> None:
        try:
            request = orjson.loads(raw)
            request_id, action, args = str(request["id"]), str(request["action"]), list(request.get("args", []))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.emit("warning", "control: a request that is not ours was dropped")
            return
        who = str(request.get("from", "an attached console"))
        if ACTIONS.get(action) != len(args):
            ok, text = False, f"the pipeline does not know the command {action!r}"
        else:
            # Said before it is done: the command's own line (workers scaled, watcher paused) follows.
            self.emit("info", f"{who} asks to {WHAT[action]}{' ' + ' '.join(map(str, args)) if args else ''}")
            try:
                ok, text = True, str(getattr(self.control(), action)(*args))
            except Exception as error:  # ControlError: one line for the operator; anything else too
                ok, text = False, str(error)
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.rpush(reply_key(self.namespace, request_id), orjson.dumps({"ok": ok, "text": text}))
            pipe.expire(reply_key(self.namespace, request_id), REPLY_TTL)
            pipe.execute()
