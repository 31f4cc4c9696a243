"""One log line per client stream, and one per second of unary calls: who sent, how much, how long.

The seed logged every request; a line per user drowns a log at thousands of users a second, so streams
are told when they end and unary calls are summed per peer over a second. It is a server interceptor: it
reads what the service answered (the counts in the reply) and never changes a call. It sits on the public
port only: our own watcher uses the private socket and says more about its files once they are merged.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict

import grpc

from core.background import Background

_COUNTS = re.compile(r"accepted (\d+), rejected (\d+)")
UNARY_WINDOW = 1.0


def _counts(reply) -> tuple[int, int]:
    """(accepted, rejected) from a reply: IngestReport carries them, the seed's UserResponse says them."""
    if reply is None:
        return 0, 0
    if hasattr(reply, "accepted"):
        return int(reply.accepted), int(reply.rejected)
    found = _COUNTS.search(getattr(reply, "message", ""))
    if found:
        return int(found[1]), int(found[2])
    return (1, 0) if getattr(reply, "status", False) else (0, 1)


class CallLog(Background, grpc.ServerInterceptor):
    """Wraps the Users service's handlers to report each call; other services pass untouched."""

    thread_name = "calllog"
    join_seconds = 2.0

    def __init__(self, emit, service: str = "/Users/"):
        super().__init__()
        self.emit = emit
        self.service = service
        self._unary: dict[str, list] = defaultdict(lambda: [0, 0, 0.0])  # peer -> [accepted, rejected, seconds]
        self._window_started = time.monotonic()
        self._lock = threading.Lock()
        self.start()  # the unary window is flushed from the first call on

    def close(self) -> None:
        self.stop()
        self.flush()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self.service):
            return handler
        name = method.rpartition("/")[2]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_behaviour(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._stream_behaviour(name, handler.stream_unary), handler.request_deserializer,
                handler.response_serializer)
        return handler

    def _unary_behaviour(self, behaviour):
        def logged(request, context):
            started = time.monotonic()
            reply = behaviour(request, context)
            accepted, rejected = _counts(reply)
            with self._lock:
                tally = self._unary[context.peer()]
                tally[0] += accepted
                tally[1] += rejected
                tally[2] += time.monotonic() - started
            return reply

        return logged

    def _stream_behaviour(self, name: str, behaviour):
        def logged(request_iterator, context):
            started, peer = time.monotonic(), context.peer()
            try:
                reply = behaviour(request_iterator, context)
            except Exception:
                code = getattr(context, "code", lambda: None)()
                self.emit("warning", f"gRPC {name} from {peer} ended with {code.name if code else 'an error'} "
                                     f"after {time.monotonic() - started:.2f} s", peer=peer, rpc=name)
                raise
            accepted, rejected = _counts(reply)
            self.emit("info", f"gRPC {name} from {peer}: {accepted} accepted, {rejected} rejected in "
                              f"{time.monotonic() - started:.2f} s", peer=peer, rpc=name, accepted=accepted,
                      rejected=rejected)
            return reply

        return logged

    def _run(self) -> None:
        while not self._stop.wait(UNARY_WINDOW):
            self.flush()

    def flush(self) -> None:
        """Tell the unary calls of the window that just ended, one line per peer."""
        with self._lock:
            window, self._unary = self._unary, defaultdict(lambda: [0, 0, 0.0])
            seconds, self._window_started = time.monotonic() - self._window_started, time.monotonic()
        for peer, (accepted, rejected, busy) in sorted(window.items()):
            calls = accepted + rejected
            self.emit("info", f"gRPC SendUserInfo from {peer}: {calls} call(s) in {seconds:.1f} s, {accepted} "
                              f"accepted, {rejected} rejected, {busy / max(1, calls) * 1000:.1f} ms each",
                      peer=peer, rpc="SendUserInfo", accepted=accepted, rejected=rejected)
