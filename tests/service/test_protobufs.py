"""The committed generated modules match the .proto, and the seed's own proto still talks to us."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from grpc_tools import protoc

from protobufs import generate
from tests.conftest import wait_pipeline

SEED_PROTO = textwrap.dedent("""
    syntax = "proto3";
    message UserRequest { int32 id = 1; string user_name = 2; string email = 3; string first_name = 4;
                          string last_name = 5; string ip_address = 6; string gender = 7; string country = 8;
                          string agent = 9; }
    message UserResponse { bool status = 1; string message = 2; }
    service Users {
      rpc SendUserInfo (UserRequest) returns (UserResponse);
      rpc SendUserInfoClientStream (stream UserRequest) returns (UserResponse);
    }
""")


def test_generated_modules_are_current(tmp_path):
    for produced in generate.generate(tmp_path):
        committed = generate.ROOT / "protobufs" / produced.name
        assert committed.read_bytes() == produced.read_bytes(), (
            f"protobufs/{produced.name} is stale: run `python -m protobufs.generate` and commit the result")


SEED_CLIENT = textwrap.dedent("""
    import sys
    import grpc
    import seed_users_pb2 as pb2, seed_users_pb2_grpc as pb2_grpc

    def user(n, email=None):
        return pb2.UserRequest(id=n, user_name=f"user{n}", email=email or f"User{n}@Seed.example", first_name="F",
                               last_name="L", ip_address="10.0.0.1", gender="Male", country="Turkey", agent="seed")

    with grpc.insecure_channel(sys.argv[1]) as channel:
        stub = pb2_grpc.UsersStub(channel)
        for n in range(25):
            answer = stub.SendUserInfo(user(n))
            print("unary", answer.status, answer.message)
        answer = stub.SendUserInfoClientStream(user(n) for n in range(20, 60))
        print("stream", answer.status, answer.message)
        answer = stub.SendUserInfo(pb2.UserRequest(email="a" * 70000))
        print("oversized", answer.status, answer.message)
""")


@pytest.fixture
def seed_client(tmp_path):
    """A client generated from the GUIDE's proto alone, run as its own process like an existing seed client."""
    (tmp_path / "seed_users.proto").write_text(SEED_PROTO)
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                        str(tmp_path / "seed_users.proto")]) == 0
    (tmp_path / "seed_client.py").write_text(SEED_CLIENT)

    def run(target: str) -> list[str]:
        done = subprocess.run([sys.executable, "seed_client.py", target], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    return run


def test_seed_unary_and_client_stream_rpcs(runtime_factory, seed_client):
    runtime = runtime_factory(watch=False)
    lines = seed_client(f"127.0.0.1:{runtime.server.port}")
    assert lines[:25] == ["unary True ok"] * 25
    assert lines[25].startswith("stream True accepted 40, rejected 0")
    assert lines[26].startswith("oversized False") and "limit" in lines[26]
    wait_pipeline(runtime, lambda: runtime.store.count() == 60, message="60 distinct seed users merged")
    assert runtime.exporter.write()["count"] == 60
