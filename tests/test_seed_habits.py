"""A user of the original project runs its client, with its habits, against us (README: coming from the original).

The client here is written in the seed's shape (its proto, `GRPC_SERVER_ADDRESS` for the host, port 23333
hard-coded, every `*.json` of a `users/` folder next to it, a file that does not parse skipped whole), minus
the 2-second sleep per user, and runs as its own process against `--grpc-listen 127.0.0.1:23333`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
from grpc_tools import protoc

from tests.conftest import copy_challenge, wait_for, wait_pipeline
from tests.service.test_protobufs import SEED_PROTO

SEED_PORT = 23333

SEED_SHAPED_CLIENT = textwrap.dedent("""
    import glob, json, os, sys
    import grpc
    import seed_users_pb2 as pb2, seed_users_pb2_grpc as pb2_grpc

    def users():
        for name in sorted(glob.glob(os.path.join(os.path.dirname(__file__), "users", "*.json"))):
            try:
                with open(name) as handle:
                    content = json.load(handle)
            except ValueError:
                continue  # the seed skips a file that does not parse, whole
            for user in content:
                yield pb2.UserRequest(**user)

    address = os.environ.get("GRPC_SERVER_ADDRESS", "localhost") + ":23333"
    with grpc.insecure_channel(address) as channel:
        stub = pb2_grpc.UsersStub(channel)
        if sys.argv[1] == "stream":
            print(stub.SendUserInfoClientStream(users()).message)
        else:
            sent = 0
            for user in users():
                sent += stub.SendUserInfo(user).status
                if sent == int(sys.argv[2]):
                    break
            print("sent", sent)
""")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def seed_habits_client(tmp_path):
    folder = tmp_path / "seed-client"
    copy_challenge(folder / "users")
    (folder / "seed_users.proto").write_text(SEED_PROTO)
    assert protoc.main(["protoc", f"-I{folder}", f"--python_out={folder}", f"--grpc_python_out={folder}",
                        str(folder / "seed_users.proto")]) == 0
    (folder / "client.py").write_text(SEED_SHAPED_CLIENT)

    def run(*args: str) -> str:
        env = dict(os.environ, GRPC_SERVER_ADDRESS="127.0.0.1")
        done = subprocess.run([sys.executable, "client.py", *args], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    return run


@pytest.mark.slow
@pytest.mark.skipif(not _port_free(SEED_PORT), reason=f"port {SEED_PORT} (the seed's) is taken on this machine")
def test_seed_client_with_its_habits_reaches_all_users_json(runtime_factory, seed_habits_client):
    runtime = runtime_factory(watch=False, grpc_listen=f"127.0.0.1:{SEED_PORT}")

    # Stream mode (with the seed's method name corrected): the nine files that parse, 9,000 users.
    assert seed_habits_client("stream").startswith("accepted 9000, rejected 0")
    # Two worker processes start cold here (imports, first connections): under a loaded machine that alone has
    # taken most of 30 s, so the deadline is generous; the condition, not the time, is what is tested.
    wait_pipeline(runtime, lambda: runtime.store.count() == 9000, 90, message="the seed client's 9,000 users merged")
    # Unary mode, the seed's default, for the first 300 users: the same people, so no new user appears.
    assert seed_habits_client("unary", "300") == "sent 300"
    wait_for(lambda: runtime.store.redis.llen(runtime.store.key("inbox")) == 0, message="unary inbox drained")
    assert runtime.exporter.write()["count"] == 9000
