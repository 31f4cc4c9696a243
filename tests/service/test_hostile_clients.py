"""Hostile clients against a real server on real sockets.

Slowloris streams, a message at each limit and one past it, malformed protobuf, wrong content types, and a
client that disconnects at every step of a stream. Every case must end with the right status, lose no user
the server accepted, and leave no busy thread, open file handle or staged blob behind (counted, not guessed).
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time

import grpc
import orjson
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.service.server import MAX_MESSAGE_BYTES
from protobufs import users_pb2, users_pb2_grpc
from tests.conftest import make_users, wait_for

LIMIT, IDLE, MAX_USERS = 4, 1.0, 50
SERVING = health_pb2.HealthCheckResponse.SERVING


# -- counting what a call could leave behind ----------------------------------------------------------------

def pools(runtime):
    servers = [runtime.server.server, runtime.server.private_server]
    return [s._state.thread_pool for s in servers if s is not None]  # grpc's executors (private attribute)


def busy_threads(runtime) -> int:
    """Pool threads running a call now (a ThreadPoolExecutor's idle semaphore counts the idle ones)."""
    return sum(len(p._threads) - p._idle_semaphore._value for p in pools(runtime))


def other_threads(runtime) -> int:
    return threading.active_count() - sum(len(p._threads) for p in pools(runtime))


def open_fds() -> int:
    """This process's file handles, less its pooled Redis connections: a pool grows by one when a call's
    thread and the exporter use Redis at the same moment, and keeps it for reuse; that is not a leak."""
    return len(set(os.listdir("/proc/self/fd")) - {str(fd) for fd in pooled_redis_fds()})


def pooled_redis_fds() -> set[int]:
    fds = set()
    for pool in (o for o in gc.get_objects() if isinstance(o, redis.ConnectionPool)):
        for connection in [*pool._available_connections, *pool._in_use_connections]:  # private, stable for years
            sock = getattr(connection, "_sock", None)
            if sock is not None and sock.fileno() >= 0:
                fds.add(sock.fileno())
    return fds


def staged_blobs(runtime) -> int:
    return sum(1 for _ in runtime.store.redis.scan_iter(match=runtime.store.key("batch", "*"), count=1000))


class Baseline:
    def __init__(self, runtime):
        self.runtime = runtime
        self.threads = other_threads(runtime)
        self.fds = open_fds()

    def settled(self) -> None:
        """Every call released, no thread busy, handles and threads back to the baseline, every staged batch
        merged (a merge deletes its blob) and none failed: nothing left behind, no accepted user lost."""
        runtime, admission = self.runtime, self.runtime.server.admission
        wait_for(lambda: admission.active == 0 and not admission._calls, 15, message="every call to be released")
        wait_for(lambda: busy_threads(runtime) == 0, 15, message="no gRPC thread busy")
        wait_for(lambda: other_threads(runtime) <= self.threads, 15,
                 message=f"threads back to {self.threads} (now {other_threads(runtime)})")
        wait_for(lambda: open_fds() <= self.fds, 15, message=f"file handles back to {self.fds} (now {open_fds()})")
        wait_for(lambda: len(runtime.queue) == 0 and staged_blobs(runtime) == 0, 30,
                 message="every staged batch merged")
        assert runtime.queue.failed_job_registry.count == 0
        assert health(runtime) == SERVING


def health(runtime) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


@pytest.fixture
def hostile(runtime_factory):
    runtime = runtime_factory(watch=False, workers=1, max_concurrent_calls=LIMIT, idle_timeout=IDLE,
                              max_batch_users=MAX_USERS, batch_size=MAX_USERS)
    # Warm up one ordinary call so lazily created grpc threads and handles are in the baseline.
    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
        users_pb2_grpc.UsersStub(channel).SendUserBatches(iter([batch(make_users(1, "warm"))]), timeout=10)
    baseline = Baseline(runtime)
    baseline.settled()
    return runtime, Baseline(runtime)


def batch(users: list[dict], **fields) -> users_pb2.UserBatch:
    return users_pb2.UserBatch(users_json=orjson.dumps(users), source="hostile", **fields)


def merged(runtime, users: list[dict]) -> bool:
    path = runtime.exporter.write()["path"]
    have = {u["email"] for u in orjson.loads(open(path, "rb").read())}
    return {u["email"] for u in users} <= have


# -- slowloris ------------------------------------------------------------------------------------------------

def test_slowloris_streams_are_closed_and_never_starve_health(hostile):
    runtime, baseline = hostile
    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}")
    stub = users_pb2_grpc.UsersStub(channel)
    errors: list[grpc.RpcError] = []
    hold = threading.Event()

    def silent():
        try:
            stub.SendUserBatches(iter(lambda: hold.wait(60) and None, 1), timeout=60)
        except grpc.RpcError as error:
            errors.append(error)

    threads = [threading.Thread(target=silent, daemon=True) for _ in range(LIMIT)]
    for thread in threads:
        thread.start()
    wait_for(lambda: runtime.server.admission.active == LIMIT, 10, message="the slowloris streams to hold every slot")
    assert health(runtime) == SERVING
    for thread in threads:
        thread.join(20)
    hold.set()
    assert len(errors) == LIMIT
    assert {e.code() for e in errors} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    channel.close()
    baseline.settled()


def test_a_byte_at_a_time_message_is_still_idle(hostile):
    """Dripping bytes of a message keeps a socket busy but never completes a message: closed all the same."""
    runtime, baseline = hostile
    payload = message(batch(make_users(3, "drip")).SerializeToString())
    with RawH2(runtime.server.port) as raw:
        raw.open_call("/Users/SendUserBatches")
        started = time.monotonic()
        for offset in range(len(payload)):
            if raw.answered() or time.monotonic() - started > 10:
                break
            raw.data(payload[offset:offset + 1])
            time.sleep(IDLE / 5)
        assert raw.answered(), "the server never closed a call that dripped one byte at a time"
        assert time.monotonic() - started < IDLE * 4
    baseline.settled()


# -- limits: at each, and one past it ------------------------------------------------------------------------------

def test_users_per_message_at_the_limit_and_one_past_it(hostile):
    runtime, baseline = hostile
    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        at = make_users(MAX_USERS, "at")
        assert stub.SendUserBatches(iter([batch(at)]), timeout=30).accepted == MAX_USERS
        for past in (batch(make_users(MAX_USERS + 1, "past")),
                     users_pb2.UserBatch(users=[users_pb2.UserRequest(**u) for u in make_users(MAX_USERS + 1, "pb")]),
                     users_pb2.UserBatch(users=[users_pb2.UserRequest(**u) for u in make_users(25, "mix")],
                                         users_json=orjson.dumps(make_users(26, "mixj")))):
            with pytest.raises(grpc.RpcError) as refused:
                stub.SendUserBatches(iter([past]), timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"over the limit of {MAX_USERS} per message" in refused.value.details()
        # A refused message does not cost the stream's earlier, accepted batches.
        before = make_users(10, "before")
        with pytest.raises(grpc.RpcError):
            stub.SendUserBatches(iter([batch(before), batch(make_users(MAX_USERS + 1, "after"))]), timeout=30)
    baseline.settled()
    assert merged(runtime, at) and merged(runtime, before)


def test_message_bytes_at_the_limit_and_one_past_it(hostile):
    runtime, baseline = hostile
    user = make_users(1, "big")
    body = orjson.dumps(user)
    envelope = users_pb2.UserBatch(users_json=body, source="hostile").ByteSize() - len(body)
    # Padding JSON whitespace keeps the array valid; the varint length prefix grows with it, so solve for it.
    def padded(pad: int) -> users_pb2.UserBatch:
        return users_pb2.UserBatch(users_json=body[:-1] + b" " * pad + b"]", source="hostile")

    pad = MAX_MESSAGE_BYTES - envelope - len(body)
    while padded(pad).ByteSize() > MAX_MESSAGE_BYTES:
        pad -= 1
    at, past = padded(pad), padded(pad + 1)
    assert at.ByteSize() == MAX_MESSAGE_BYTES and past.ByteSize() == MAX_MESSAGE_BYTES + 1
    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}",
                               options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        assert stub.SendUserBatches(iter([at]), timeout=60).accepted == 1
        with pytest.raises(grpc.RpcError) as refused:
            stub.SendUserBatches(iter([past]), timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    baseline.settled()
    assert merged(runtime, user)


# -- malformed protobuf ---------------------------------------------------------------------------------------------

def raw_calls(channel):
    """Identity serializers: the bytes we give are the bytes on the wire."""
    return (channel.stream_unary("/Users/SendUserBatches", request_serializer=None, response_deserializer=None),
            channel.unary_unary("/Users/SendUserInfo", request_serializer=None, response_deserializer=None))


def test_malformed_protobuf_is_invalid_argument(hostile):
    runtime, baseline = hostile
    first = make_users(7, "valid-first")
    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
        stream, unary = raw_calls(channel)
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\x0f", b"\x0a\x05ab"):
            for call, argument in ((stream, iter([garbage])), (unary, garbage),
                                   (stream, iter([batch(first).SerializeToString(), garbage]))):
                with pytest.raises(grpc.RpcError) as refused:
                    call(argument, timeout=10)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
                assert "not a valid protobuf message" in refused.value.details()
    baseline.settled()
    assert merged(runtime, first)  # accepted before the bad message came: kept


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=1, max_size=300))
def test_any_bytes_get_a_clear_status_never_an_internal_error(hostile, junk):
    runtime, _ = hostile
    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
        stream, unary = raw_calls(channel)
        for call, argument in ((stream, iter([junk])), (unary, junk)):
            try:
                call(argument, timeout=10)
            except grpc.RpcError as error:
                assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), \
                    (error.code(), error.details())
    assert health(runtime) == SERVING


# -- wrong content types ----------------------------------------------------------------------------------------------

def test_http1_and_wrong_content_types_are_answered_and_forgotten(hostile):
    runtime, baseline = hostile
    port = runtime.server.port
    for request in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"POST /Users/SendUserInfo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 2\r\n\r\n{}",
                    b"\x16\x03\x01\x00\x05hello"):  # a TLS ClientHello on a plaintext port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            sock.settimeout(10)
            try:
                while sock.recv(65536):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass  # closed or reset: either way the server let go of it
    for content_type in (b"application/json", b"text/html", b""):
        with RawH2(port) as raw:
            raw.open_call("/Users/SendUserBatches", content_type=content_type)
            raw.data(message(batch(make_users(2, "ct")).SerializeToString()), end=True)
            wait_for(raw.answered, 10, message=f"an answer to content-type {content_type!r}")
    baseline.settled()


# -- a client that disconnects at every step ------------------------------------------------------------------------

STEPS = ("connect", "preface", "headers", "half a message", "one message", "end of stream", "answer read")


@pytest.mark.parametrize("step", STEPS)
def test_disconnect_at_every_step(hostile, step):
    runtime, baseline = hostile
    users = make_users(5, f"step{STEPS.index(step)}")
    payload = message(batch(users).SerializeToString())
    raw = RawH2(runtime.server.port, handshake=step != "connect")
    try:
        if step in ("connect", "preface"):
            return
        raw.open_call("/Users/SendUserBatches")
        if step == "headers":
            return
        if step == "half a message":
            raw.data(payload[: len(payload) // 2])
            return
        raw.data(payload, end=step != "one message")
        if step == "answer read":
            wait_for(raw.answered, 10, message="the answer")
    finally:
        raw.close()
        baseline.settled()
    if step == "answer read":
        assert merged(runtime, users)


# -- a minimal HTTP/2 client: bytes on a socket, no library between us and the server ----------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0, 1, 3, 4, 7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def message(payload: bytes) -> bytes:
    """gRPC's length-prefixed message: no compression flag, 4-byte big-endian length."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman (lengths < 127)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


class RawH2:
    def __init__(self, port: int, handshake: bool = True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.frames: list[tuple[int, int, int]] = []
        self.closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        if handshake:
            self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self._reader.start()

    def _read(self):
        buffer = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 9:
                    length = int.from_bytes(buffer[:3], "big")
                    if len(buffer) < 9 + length:
                        break
                    kind, flags, stream = buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    self.frames.append((kind, flags, stream))
                    if kind == SETTINGS and not flags & ACK:
                        self.sock.sendall(frame(SETTINGS, ACK, 0))
                    buffer = buffer[9 + length:]
        except OSError:
            pass
        self.closed = True

    def open_call(self, path: str, content_type: bytes = b"application/grpc") -> None:
        headers = b"".join(literal(k, v) for k, v in (
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()), (b":authority", b"localhost"),
            (b"content-type", content_type), (b"te", b"trailers")))
        self.sock.sendall(frame(HEADERS, END_HEADERS, 1, headers))

    def data(self, payload: bytes, end: bool = False) -> None:
        self.sock.sendall(frame(DATA, END_STREAM if end else 0, 1, payload))

    def answered(self) -> bool:
        """The server ended stream 1 (trailers or a reset) or the connection."""
        return self.closed or any(stream == 1 and (kind == RST_STREAM or (kind == HEADERS and flags & END_STREAM))
                                  or kind == GOAWAY for kind, flags, stream in self.frames)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._reader.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
