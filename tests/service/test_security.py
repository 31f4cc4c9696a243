"""Secure defaults of the gRPC server: TLS, bearer tokens, message and concurrency limits, health, reflection."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core.config import ConfigError, Settings
from core.intake.client import UsersClient
from core.service.server import MAX_MESSAGE_BYTES
from protobufs import users_pb2, users_pb2_grpc
from tests.conftest import copy_challenge, wait_for

TOKEN = "correct-horse-battery-staple-42"
USER = {"id": 1, "first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com", "gender": "Female",
        "ip_address": "10.0.0.1", "user_name": "ada", "agent": "test", "country": "UK"}
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def make_certificate(folder: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for `names` (DNS names or IPs), made here: `cryptography` or the openssl CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    san = ",".join(("IP:" if n.replace(".", "").isdigit() else "DNS:") + n for n in names)
    try:
        _make_with_cryptography(cert, key, names)
        return cert, key
    except ImportError:
        pass
    if not shutil.which("openssl"):
        pytest.skip("neither the cryptography package nor the openssl CLI is available to make a certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={names[0]}",
                    "-addext", f"subjectAltName={san}"], check=True, capture_output=True, timeout=60)
    return cert, key


def _make_with_cryptography(cert: Path, key: Path, names: list[str]) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName(alt), critical=False).sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))


def target(runtime) -> str:
    return f"127.0.0.1:{runtime.server.port}"


def channel(runtime, **options) -> grpc.Channel:
    return grpc.insecure_channel(target(runtime), options=list(options.items()))


def batch(users: list[dict], index: int = 0) -> users_pb2.UserBatch:
    return users_pb2.UserBatch(users_json=orjson.dumps(users), source="test", index=index)


def user(n: int) -> dict:
    return dict(USER, id=n, email=f"user{n}@example.com")


class HeldStream:
    """A client stream that sends one batch, then waits until released: an in-flight call we control."""

    def __init__(self, stub, metadata=()):
        self.release = threading.Event()
        self.result = None
        self.error = None
        self._thread = threading.Thread(target=self._run, args=(stub, metadata), daemon=True)
        self._thread.start()

    def _requests(self):
        yield batch([user(1)], 0)
        self.release.wait(30)
        yield batch([user(2)], 1)

    def _run(self, stub, metadata):
        try:
            self.result = stub.SendUserBatches(self._requests(), timeout=60, metadata=metadata)
        except grpc.RpcError as error:
            self.error = error

    def finish(self):
        self.release.set()
        self._thread.join(30)
        return self


# -- TLS ----------------------------------------------------------------------------------------------------

def test_tls_handshake_with_self_signed_certificate(runtime_factory, tmp_path):
    # Named like a compose service, not localhost: the watcher's own client must still verify it.
    cert, key = make_certificate(tmp_path, ["server"])
    runtime = runtime_factory(watch=False, workers=1, tls_cert=cert, tls_key=key)
    with UsersClient(target(runtime), timeout=10, tls_ca=cert, server_name="server") as client:
        client.wait_ready(10)
        assert client.send_unary(USER).status
    untrusted = grpc.secure_channel(target(runtime), grpc.ssl_channel_credentials(),
                                    options=[("grpc.ssl_target_name_override", "server")])
    with pytest.raises(grpc.RpcError) as refused:
        users_pb2_grpc.UsersStub(untrusted).SendUserInfo(users_pb2.UserRequest(**USER), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as plaintext:
        users_pb2_grpc.UsersStub(channel(runtime)).SendUserInfo(users_pb2.UserRequest(**USER), timeout=10)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    # The watcher streams through the same TLS port: a file dropped in is merged.
    copy_challenge(runtime.settings.watch, names={"1.json"})
    summary = runtime.run_once()
    assert summary.accepted == 1000


# -- tokens -------------------------------------------------------------------------------------------------

def test_token_accepted_and_refused(runtime_factory):
    runtime = runtime_factory(watch=False, workers=1, token=TOKEN)
    stub = users_pb2_grpc.UsersStub(channel(runtime))
    for metadata in ((), (("authorization", "Bearer wrong-token-of-some-length"),), (("authorization", TOKEN),)):
        with pytest.raises(grpc.RpcError) as unary:
            stub.SendUserInfo(users_pb2.UserRequest(**USER), timeout=10, metadata=metadata)
        assert unary.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as stream:
            stub.SendUserBatches(iter([batch([USER])]), timeout=10, metadata=metadata)
        assert stream.value.code() == grpc.StatusCode.UNAUTHENTICATED
    good = (("authorization", f"Bearer {TOKEN}"),)
    assert stub.SendUserInfo(users_pb2.UserRequest(**USER), timeout=10, metadata=good).status
    assert stub.SendUserBatches(iter([batch([user(5), user(6)])]), timeout=10, metadata=good).accepted == 2
    with UsersClient(target(runtime), timeout=10, token=TOKEN) as client:
        assert client.send_unary(user(7)).status
    # Health stays open so probes need no secret; nothing else does.
    health = health_pb2_grpc.HealthStub(channel(runtime))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
    assert not any(TOKEN in event.text for event in runtime.events.recent(2000))


def test_send_command_with_token(runtime_factory, tmp_path):
    runtime = runtime_factory(watch=False, workers=1, token=TOKEN)
    (source,) = copy_challenge(tmp_path / "outbox", names={"2.json"})
    command = [sys.executable, "-m", "console.cli", "send", str(source), "--server", target(runtime)]
    env = {k: v for k, v in os.environ.items() if k != "SWORDSEC_TOKEN"}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr
    accepted = subprocess.run(command, capture_output=True, text=True, timeout=60, env=dict(env, SWORDSEC_TOKEN=TOKEN))
    assert accepted.returncode == 0, accepted.stderr
    assert "1000 accepted" in accepted.stdout


# -- the listen policy ----------------------------------------------------------------------------------------

def test_non_loopback_needs_tls_or_insecure(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWORDSEC_")}
    done = subprocess.run([sys.executable, "-m", "console.cli", "--no-ui", "--once", "--grpc-listen", "0.0.0.0:0",
                           "--data-dir", str(tmp_path / "data"), "--watch", str(tmp_path / "drop")],
                          capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "refusing to listen on 0.0.0.0:0" in done.stderr
    cert, key = make_certificate(tmp_path, ["server"])
    for ok in ({"tls_cert": cert, "tls_key": key, "token": TOKEN}, {"insecure": True},
               {"insecure": True, "token": TOKEN}, {"grpc_listen": "127.0.0.1:0"}, {"grpc_listen": "[::1]:0"},
               {"grpc_listen": "127.0.0.1:0", "token": TOKEN}):
        Settings.build({"grpc_listen": "0.0.0.0:0", **ok}, environ={})
    # A token alone off loopback would cross the network in clear: refused, and the reason says so.
    with pytest.raises(ConfigError, match="token and users would travel in clear"):
        Settings.build({"grpc_listen": "0.0.0.0:0", "token": TOKEN}, environ={})
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        Settings.build({"tls_cert": tmp_path / "cert.pem"}, environ={})
    assert TOKEN not in repr(Settings.build({"token": TOKEN}, environ={}))


def test_metrics_listener_follows_the_same_rule(tmp_path):
    with pytest.raises(ConfigError, match="refusing to serve metrics on 0.0.0.0:9100 without TLS"):
        Settings.build({"metrics_listen": "0.0.0.0:9100"}, environ={})
    with pytest.raises(ConfigError, match="refusing to serve metrics"):
        Settings.build({"metrics_listen": "0.0.0.0:9100", "token": TOKEN}, environ={})
    cert, key = make_certificate(tmp_path, ["server"])
    for ok in ({"metrics_listen": "127.0.0.1:9100"}, {"metrics_listen": "0.0.0.0:9100", "insecure": True},
               {"metrics_listen": "0.0.0.0:9100", "tls_cert": cert, "tls_key": key}):
        Settings.build(ok, environ={})


def test_the_log_says_what_is_exposed(runtime_factory):
    runtime = runtime_factory(watch=False, workers=0, grpc_listen="0.0.0.0:0", insecure=True, token=TOKEN,
                              metrics_listen="0.0.0.0:0")
    warnings = [e.text for e in runtime.events.recent(2000) if e.level == "warning"]
    assert any(f"exposed: gRPC on 0.0.0.0:{runtime.server.port} to the network in plaintext (the token travels "
               f"in clear" in text for text in warnings), warnings
    assert any(f"exposed: metrics on 0.0.0.0:{runtime.metrics.port} to the network in plaintext" in text
               for text in warnings), warnings
    assert not any(TOKEN in e.text for e in runtime.events.recent(2000))


# -- limits ---------------------------------------------------------------------------------------------------

def test_oversize_message_is_refused_without_harming_other_streams(runtime_factory):
    runtime = runtime_factory(watch=False, workers=1)
    stub = users_pb2_grpc.UsersStub(channel(runtime, **{"grpc.max_send_message_length": -1}))
    held = HeldStream(stub)
    wait_for(lambda: runtime.server.service.open_streams == 1, 10, message="the held stream to open")
    huge = users_pb2.UserBatch(users_json=b" " * (MAX_MESSAGE_BYTES + 1024), source="huge")
    with pytest.raises(grpc.RpcError) as refused:
        stub.SendUserBatches(iter([huge]), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    held.finish()
    assert held.error is None and held.result.accepted == 2


def test_past_max_concurrent_calls_the_server_answers_resource_exhausted(runtime_factory):
    runtime = runtime_factory(watch=False, workers=1, max_concurrent_calls=2)
    stub = users_pb2_grpc.UsersStub(channel(runtime))
    held = [HeldStream(stub), HeldStream(stub)]
    wait_for(lambda: runtime.server.service.open_streams == 2, 10, message="two held streams")
    with pytest.raises(grpc.RpcError) as refused:
        stub.SendUserInfo(users_pb2.UserRequest(**USER), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for stream in held:
        assert stream.finish().result.accepted == 2
    assert stub.SendUserInfo(users_pb2.UserRequest(**USER), timeout=10).status


# -- health and reflection --------------------------------------------------------------------------------------

def test_health_serving_then_not_serving_during_graceful_stop(runtime_factory):
    runtime = runtime_factory(watch=False, workers=1)
    health = health_pb2_grpc.HealthStub(channel(runtime))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
    held = HeldStream(users_pb2_grpc.UsersStub(channel(runtime)))
    wait_for(lambda: runtime.server.service.open_streams == 1, 10, message="the held stream to open")
    # A Watch stream is how a balancer sees the change: new calls are refused once stop() begins.
    updates = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
    assert next(updates).status == SERVING
    stopper = threading.Thread(target=runtime.server.stop, kwargs={"grace": 20}, daemon=True)
    stopper.start()
    assert next(updates).status == NOT_SERVING
    updates.cancel()
    # The call in flight when the stop began still completes within the grace period.
    held.finish()
    assert held.error is None and held.result.accepted == 2
    stopper.join(30)
    assert not stopper.is_alive()


def test_reflection_lists_users(runtime_factory):
    runtime = runtime_factory(watch=False, workers=0, token=TOKEN)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel(runtime))
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = stub.ServerReflectionInfo(iter([request]), timeout=10,
                                          metadata=(("authorization", f"Bearer {TOKEN}"),))
    names = {s.name for s in next(responses).list_services_response.service}
    assert {"Users", "grpc.health.v1.Health"} <= names
    with pytest.raises(grpc.RpcError) as refused:
        next(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_redis_password_never_in_events(runtime_factory, redis_url):
    runtime = runtime_factory(watch=False, workers=1)
    parts = urlsplit(redis_url)
    secret = parts.password or parse_qs(parts.query).get("password", [""])[0]
    if not secret:
        pytest.skip("this Redis URL has no password")
    text = "\n".join(e.text for e in runtime.events.recent(2000))
    assert "redis:" in text and secret not in text
