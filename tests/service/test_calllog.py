"""gRPC calls from outside are logged: one line per stream, one per peer per second of unary calls."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from core.queue.taskqueue import make_queue
from core.service.calllog import CallLog
from core.service.server import Intake, UsersService
from core.storage.store import Store
from protobufs import users_pb2, users_pb2_grpc
from tests.conftest import make_users


@pytest.fixture
def logged_server(connection, namespace):
    lines = []
    calllog = CallLog(lambda level, text, **data: lines.append((level, text, data)))
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[calllog])
    intake = Intake(Store(connection, namespace), make_queue(connection, namespace), "email", 1000)
    users_pb2_grpc.add_UsersServicer_to_server(UsersService(intake), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", lines, calllog
    server.stop(0).wait()
    calllog.close()


def _request(user: dict) -> users_pb2.UserRequest:
    return users_pb2.UserRequest(**user)


def test_streams_are_one_line_each_with_peer_counts_and_time(logged_server):
    target, lines, _ = logged_server
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        users = make_users(30, "log")
        users[3]["email"] = "x" * 70000  # one rejected
        stub.SendUserInfoClientStream(iter([_request(u) for u in users]))
    streams = [text for _, text, data in lines if data.get("rpc") == "SendUserInfoClientStream"]
    assert len(streams) == 1
    assert streams[0].startswith("gRPC SendUserInfoClientStream from ipv4:127.0.0.1:")
    assert ": 29 accepted, 1 rejected in " in streams[0] and streams[0].endswith(" s")


def test_unary_calls_are_summed_per_peer_and_window(logged_server):
    target, lines, calllog = logged_server
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        for user in make_users(12, "unary"):
            assert stub.SendUserInfo(_request(user)).status
        stub.SendUserInfo(users_pb2.UserRequest(email="y" * 70000))
    calllog.flush()
    unary = [data for _, _, data in lines if data.get("rpc") == "SendUserInfo"]
    assert sum(d["accepted"] for d in unary) == 12 and sum(d["rejected"] for d in unary) == 1
    assert len(unary) <= 3  # a second of calls is one line, not one line per call


def test_the_runtime_logs_outside_senders_but_not_its_own_watcher(runtime_factory, tmp_path):
    from core.intake.client import UsersClient
    from tests.conftest import copy_challenge, wait_for

    runtime = runtime_factory(watch=True)
    [dropped] = copy_challenge(runtime.settings.watch, {"1.json"})
    wait_for(lambda: any("1.json" in e.text and "merged" in e.text for e in runtime.events.recent()),
             message="the dropped file merged")
    [sent] = copy_challenge(tmp_path / "elsewhere", {"2.json"})
    with UsersClient(f"127.0.0.1:{runtime.server.port}") as client:
        assert client.send_file(sent).accepted == 1000
    lines = [e.text for e in runtime.events.recent() if e.text.startswith("gRPC ")]
    assert len(lines) == 1, lines  # the watcher's own stream goes through the private socket, unlogged
    assert lines[0].startswith("gRPC SendUserBatches from ipv4:127.0.0.1:") and ": 1000 accepted, 0 rejected" in lines[0]
