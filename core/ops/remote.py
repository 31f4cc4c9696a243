"""An attached console's commands. Failed jobs are requeued and deleted straight in Redis (RQ's registry is
all there is to them); the rest (scale, restart, pause the watcher, replay) only the pipeline's owner can
do, so they are requests to it (core.ops.owner) and its answer is the command's result. A request nobody
can carry out says so: no owner in Redis, or no answer in time."""

from __future__ import annotations

import time
import uuid

import orjson
import redis

from core.ops.control import Control, ControlError
from core.ops.owner import WHAT, owner_key, reply_key, requests_key

REQUEST_TIMEOUT = 10.0


class RemoteControl:
    """The same commands as core.ops.control.Control, for a pipeline running elsewhere."""

    def __init__(self, connection: redis.Redis, namespace: str, direct: Control, who: str,
                 timeout: float = REQUEST_TIMEOUT):
        self.connection = connection
        self.namespace = namespace
        self.direct = direct
        self.who = who
        self.timeout = timeout

    # -- straight in Redis -----------------------------------------------------------------------------
    def requeue(self, job_id: str) -> str:
        return self.direct.requeue(job_id)

    def requeue_all(self) -> str:
        return self.direct.requeue_all()

    def delete_job(self, job_id: str) -> str:
        return self.direct.delete_job(job_id)

    # -- through the owner -----------------------------------------------------------------------------
    def add_worker(self) -> str:
        return self.ask("add_worker")

    def remove_worker(self) -> str:
        return self.ask("remove_worker")

    def scale(self, desired: int) -> str:
        return self.ask("scale", int(desired))

    def stop_worker(self, name: str) -> str:
        return self.ask("stop_worker", name)

    def restart_worker(self, name: str) -> str:
        return self.ask("restart_worker", name)

    def toggle_watcher(self) -> str:
        return self.ask("toggle_watcher")

    def replay(self, name: str) -> str:
        return self.ask("replay", name)

    def ask(self, action: str, *args) -> str:
        """Send one request and wait for its answer; blocking, so from a thread."""
        what = WHAT.get(action, action)
        if not self.connection.exists(owner_key(self.namespace)):
            raise ControlError(f"cannot {what}: no pipeline runs namespace {self.namespace!r} now "
                               f"(no owner has spoken in Redis for 5 s)")
        request_id = uuid.uuid4().hex
        payload = orjson.dumps({"id": request_id, "action": action, "args": list(args), "from": self.who,
                                "at": time.time()})
        self.connection.rpush(requests_key(self.namespace), payload)
        answer = self.connection.blpop([reply_key(self.namespace, request_id)], timeout=self.timeout)
        if answer is None:
            if self.connection.lrem(requests_key(self.namespace), 1, payload):
                raise ControlError(f"cannot {what}: the pipeline did not take the request in {self.timeout:g} s; "
                                   f"nothing was done")
            raise ControlError(f"the pipeline took the request to {what} but did not answer in {self.timeout:g} s; "
                               f"see its events")
        reply = orjson.loads(answer[1])
        if not reply.get("ok"):
            raise ControlError(str(reply.get("text", f"the pipeline could not {what}")))
        return str(reply.get("text", ""))
