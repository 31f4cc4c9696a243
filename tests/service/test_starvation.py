"""No starvation: outside callers holding every slot cannot stop health checks or the console's own watcher,
and streams that go quiet are closed after the idle timeout with a status that says so."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protobufs import users_pb2, users_pb2_grpc
from tests.conftest import make_users, wait_for, wait_pipeline

SERVING = health_pb2.HealthCheckResponse.SERVING


class SilentStream:
    """An outside client's stream that opens and then sends nothing until released (or forever)."""

    def __init__(self, stub, first: list[dict] | None = None):
        self.release = threading.Event()
        self.first = first
        self.error: grpc.RpcError | None = None
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(stub,), daemon=True)
        self.thread.start()

    def _requests(self):
        if self.first:
            yield users_pb2.UserBatch(users_json=orjson.dumps(self.first), source="silent")
        self.release.wait(60)

    def _run(self, stub):
        try:
            self.result = stub.SendUserBatches(self._requests(), timeout=90)
        except grpc.RpcError as error:
            self.error = error

    def finish(self, timeout: float = 30):
        self.release.set()
        self.thread.join(timeout)
        return self


def public(runtime) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}")


def test_a_full_limit_still_answers_health_and_merges_dropped_files(runtime_factory):
    limit = 4
    runtime = runtime_factory(workers=1, max_concurrent_calls=limit, idle_timeout=0)
    channel = public(runtime)
    stub = users_pb2_grpc.UsersStub(channel)
    silent = [SilentStream(stub) for _ in range(limit)]
    try:
        wait_for(lambda: runtime.server.admission.active == limit, 20, message="the limit to fill with idle streams")
        # An outside caller past the limit is refused at once, with the reason.
        with pytest.raises(grpc.RpcError) as refused:
            stub.SendUserInfo(users_pb2.UserRequest(email="late@example.org"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 4 calls" in refused.value.details()
        # Health on the same public port: still SERVING, in-process and through the compose healthcheck command.
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(3 * limit):
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        done = subprocess.run([sys.executable, "-m", "console.cli", "health", "--server",
                               f"127.0.0.1:{runtime.server.port}"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        # The console's own watcher is not an outside caller: a dropped file is merged meanwhile.
        users = make_users(300, tag="starved")
        (runtime.settings.watch / "arrived.json").write_bytes(orjson.dumps(users))
        output = runtime.settings.output_path

        def merged():
            try:
                return {u["email"] for u in json.loads(output.read_text())} >= {u["email"] for u in users}
            except (OSError, ValueError):
                return False
        wait_for(merged, 60, message="the dropped file to be merged while the limit is full")
        assert runtime.server.admission.active == limit
    finally:
        for stream in silent:
            stream.finish()
        channel.close()
    assert all(s.error is None for s in silent)
    wait_for(lambda: runtime.server.admission.active == 0, 10, message="the released streams to end")


def test_idle_streams_end_after_the_deadline_with_a_clear_status(runtime_factory):
    runtime = runtime_factory(watch=False, workers=1, idle_timeout=0.5)
    channel = public(runtime)
    stub = users_pb2_grpc.UsersStub(channel)
    started = time.monotonic()
    # One stream sends nothing; one sends a batch, then goes quiet. Neither is released by the client.
    quiet = SilentStream(stub)
    half = SilentStream(stub, first=make_users(5, tag="half"))
    quiet.thread.join(20)
    half.thread.join(20)
    try:
        for stream in (quiet, half):
            assert stream.error is not None, "an idle stream was never closed"
            assert stream.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no message from the client for 0.5 s" in stream.error.details()
        assert time.monotonic() - started < 10
        # A unary call whose request never comes is idle too (a slowloris on a unary method).
        slow = channel.stream_unary("/Users/SendUserInfo", request_serializer=None, response_deserializer=None)
        never = threading.Event()
        with pytest.raises(grpc.RpcError) as unary:
            slow(iter(lambda: never.wait(30) or None, 1), timeout=20)
        assert unary.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The batch the server accepted before the stream went quiet is merged, not lost.
        wait_pipeline(runtime, lambda: runtime.store.count() == 5, 30, message="the accepted batch to merge")
        wait_for(lambda: runtime.server.admission.active == 0 and not runtime.server.admission._calls, 10,
                 message="every closed call to be released")
        assert runtime.server.admission.idle_closed >= 3
    finally:
        quiet.release.set()
        half.release.set()
        channel.close()
