"""One port, one server: a second instance (or anything else holding the port) is refused, never shares it.

gRPC sets SO_REUSEPORT by default on Linux, so two servers could bind the same port and the kernel split
connections between them: one instance's files were merged by the other. Both listeners bind exclusively.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.ops.metrics import MetricsServer
from core.queue.taskqueue import make_queue
from core.service.server import GrpcServer, Intake
from core.storage.store import Store
from tests.conftest import wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("SWORDSEC_") and k != "REDIS_URL"}


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def program(tmp_path, name: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "console.cli", "--no-ui", "--grpc-listen", f"127.0.0.1:{port}", "--workers", "0",
            "--data-dir", str(tmp_path / name / "data"), "--watch", str(tmp_path / name / "drop"), *extra]


@pytest.mark.slow
def test_a_second_program_on_a_taken_port_exits_3_with_one_line(tmp_path):
    port = free_port()
    first = subprocess.Popen(program(tmp_path, "first", port), env=clean_env(), cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: first.poll() is not None or serving(port), 60, message="the first program to serve")
        assert first.poll() is None, first.stderr.read()
        second = subprocess.run(program(tmp_path, "second", port, "--once"), env=clean_env(), cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 3, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert f"cannot listen on 127.0.0.1:{port} for gRPC" in second.stderr and "in use" in second.stderr
        assert "Traceback" not in second.stderr
        # The first instance never noticed: still serving, still alone on its port.
        assert first.poll() is None and serving(port)
        # The second stopped what it started: its embedded Redis is gone.
        pid_file = tmp_path / "second" / "data" / "redis" / "redis.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            wait_for(lambda: not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2],
                     30, message="the second program's Redis to stop")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)


@pytest.fixture
def intake(connection, namespace):
    return Intake(Store(connection, namespace), make_queue(connection, namespace), "email", 1000)


def test_a_second_server_in_process_is_refused(intake):
    first = GrpcServer(intake, "127.0.0.1:0")
    first.start()
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port} for gRPC"):
            GrpcServer(intake, f"127.0.0.1:{first.port}")
        assert serving(first.port)
    finally:
        first.stop(0)


def test_a_port_held_by_another_reuseport_listener_is_refused(intake):
    """Whatever holds the port, even a socket that itself allows sharing (as every gRPC server does)."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            GrpcServer(intake, f"127.0.0.1:{port}")


def test_metrics_port_is_exclusive_too():
    first = MetricsServer(None, listen="127.0.0.1:0").start()
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port} for metrics"):
            MetricsServer(None, listen=f"127.0.0.1:{first.port}").start()
    finally:
        first.stop()
