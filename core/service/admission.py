"""Who gets served on the public gRPC port, and for how long: limits meant for outside callers.

grpc's own `maximum_concurrent_rpcs` counts every call, health checks included, and cannot tell an idle
stream from a busy one: 64 streams that send nothing refused everyone else, the compose healthcheck too.
This interceptor replaces it:

- **Concurrency**: at most `limit` outside calls at once; past it a call ends at once with
  RESOURCE_EXHAUSTED. The health service is exempt, and the thread pool has `RESERVED_THREADS` more
  threads than the limit, so a probe always finds a thread. The console's own watcher never comes here:
  it talks to a private unix socket (core.service.server.GrpcServer), so no outside caller can starve it.
- **Idle streams**: a call waiting longer than `idle_timeout` for the client's next message ends with
  DEADLINE_EXCEEDED and says why. Time the server spends holding a stream (back-pressure) is not idle.
- **Message shape**: every handler is served as request-streaming with raw bytes, so grpc never blocks a
  thread waiting for a unary request before we count it, and a message that is not valid protobuf ends
  with INVALID_ARGUMENT (grpc's own answer is INTERNAL). A `UserBatch` with more than `max_users`
  records ends with RESOURCE_EXHAUSTED: one message is one merge job, and this bounds how long one merge
  script blocks Redis.
"""

from __future__ import annotations

import threading
import time

import grpc
import orjson

from protobufs import users_pb2

RESERVED_THREADS = 8
DEFAULT_IDLE_TIMEOUT = 60.0
# One message is one merge job is one Lua script call, and Redis runs nothing else meanwhile. Measured on
# the 2-core dev VM (bench/ping_latency.py): on an empty store 1,000 users take 5-10 ms, 5,000 about 34 ms;
# on a store of 1,000,000 users (longer buckets) 1,000 users take 26 ms (median), 40 ms at worst. 1,000 is
# what keeps one call under the 50 ms goal, and it is the default --batch-size.
MAX_BATCH_USERS = 1_000
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def _cancel_with_status(context, code: grpc.StatusCode, details: str) -> None:
    """End a call from another thread with a status the client can read.

    The public ServicerContext.cancel() only says CANCELLED; grpc's call object takes a code and details
    (grpc_call_cancel_with_status in the C core). Fall back to the plain cancel if that ever changes.
    """
    try:
        from grpc._cython import cygrpc

        context._rpc_event.call.cancel(getattr(cygrpc.StatusCode, code.name.lower()), details)
    except Exception:
        context.cancel()


class _Call:
    __slots__ = ("context", "waiting_since", "expired", "messages")

    def __init__(self, context):
        self.context = context
        self.waiting_since: float | None = None
        self.expired = False
        self.messages = 0


def users_in(message, max_users: int) -> int:
    """Records in a UserBatch; commas bound a users_json array from above, so typical batches are not parsed."""
    if not isinstance(message, users_pb2.UserBatch):
        return 0
    count = len(message.users)
    if count > max_users:
        return count
    if message.users_json:
        commas = message.users_json.count(b",")
        if count + commas + 1 <= max_users:  # an upper bound: no need to parse
            return count + commas + 1
        try:
            value = orjson.loads(message.users_json)
        except orjson.JSONDecodeError:
            return count  # the service answers INVALID_ARGUMENT with the parser's reason
        count += len(value) if isinstance(value, list) else 1
    return count


class Admission(grpc.ServerInterceptor):
    def __init__(self, limit: int | None, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
                 max_users: int = MAX_BATCH_USERS, exempt: tuple[str, ...] = EXEMPT_PREFIXES):
        self.limit = limit or None
        self.idle_timeout = idle_timeout or None
        self.max_users = max_users
        self.exempt = exempt
        self.active = 0  # outside calls being served now
        self.refused = 0
        self.idle_closed = 0
        self._calls: set[_Call] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.idle_timeout and self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="grpc-idle-reaper", daemon=True)
            self._reaper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(5)
            self._reaper = None

    def _reap(self) -> None:
        period = max(0.05, min(1.0, self.idle_timeout / 4))
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                stale = [c for c in self._calls
                         if c.waiting_since is not None and now - c.waiting_since > self.idle_timeout]
                for call in stale:
                    call.expired = True
                    self.idle_closed += 1
            for call in stale:
                _cancel_with_status(call.context, grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no message from the client for {self.idle_timeout:g} s: idle call closed "
                                    f"(message {call.messages + 1} never came)")

    # -- the interceptor ------------------------------------------------------------------------------
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        counted = not handler_call_details.method.startswith(self.exempt)
        return self._wrap(handler, counted)

    def _admit(self, context, counted: bool) -> _Call:
        call = _Call(context)
        with self._lock:
            if counted and self.limit is not None and self.active >= self.limit:
                self.refused += 1
                refused = True
            else:
                refused = False
                self.active += counted
                self._calls.add(call)
        if refused:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"the server is serving its limit of {self.limit} calls; retry later")
        return call

    def _release(self, call: _Call, counted: bool) -> None:
        with self._lock:
            self._calls.discard(call)
            self.active -= counted

    def _messages(self, raw, call: _Call, deserialize):
        """The request stream, deserialised here so bad bytes get a clear status; waiting time is watched."""
        while True:
            call.waiting_since = time.monotonic()
            try:
                data = next(raw)
            except StopIteration:
                return
            finally:
                call.waiting_since = None
            call.messages += 1
            try:
                message = deserialize(data) if deserialize else data
            except Exception:
                call.context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"message {call.messages} is not a valid protobuf message for this method")
            users = users_in(message, self.max_users)
            if users > self.max_users:
                call.context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"message {call.messages} holds {users} records, over the limit of "
                                   f"{self.max_users} per message: send smaller batches")
            yield message

    def _wrap(self, handler: grpc.RpcMethodHandler, counted: bool) -> grpc.RpcMethodHandler:
        behavior = (handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream)
        deserialize = handler.request_deserializer
        unary_request = not handler.request_streaming
        admission = self

        def arguments(raw, call):
            messages = admission._messages(raw, call, deserialize)
            if not unary_request:
                return messages
            first = next(messages, None)
            if first is None:
                call.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "this method needs exactly one request message")
            return first

        if handler.response_streaming:
            def serve(raw, context):
                call = admission._admit(context, counted)
                try:
                    yield from behavior(arguments(raw, call), context)
                finally:
                    admission._release(call, counted)
            return grpc.stream_stream_rpc_method_handler(serve, None, handler.response_serializer)

        def serve_unary(raw, context):
            call = admission._admit(context, counted)
            try:
                return behavior(arguments(raw, call), context)
            finally:
                admission._release(call, counted)
        return grpc.stream_unary_rpc_method_handler(serve_unary, None, handler.response_serializer)
