"""Remote senders are first-class: two hosts' worth of processes, one ledger that the server owns.

The server is a Runtime with its drop folder; the other "host" is `swordsec-console send` run as its own process
from its own working folder, or a client generated from protobufs/users.proto alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from grpc_tools import protoc

from tests.conftest import CHALLENGE, ROOT, make_users, wait_for

pytestmark = pytest.mark.slow


def sender_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWORDSEC_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(ROOT)  # the program, not this checkout's folder as the working folder
    return env


def send(host: Path, *args: str, **kwargs):
    """`swordsec-console send` run on the other host: its own process and working folder."""
    host.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "console.cli", "send", *args]
    if kwargs.pop("background", False):
        return subprocess.Popen(command, cwd=host, env=sender_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(command, cwd=host, env=sender_env(), capture_output=True, text=True, timeout=300)


def fp(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def merged_lines(runtime, file_id: str) -> list:
    return [e for e in runtime.events.recent(5000) if e.data.get("id") == file_id
            and e.data.get("state") in ("merged", "partial")]


def exported_emails(runtime) -> list[str]:
    runtime.exporter.write()
    return [u["email"] for u in json.loads(runtime.settings.output_path.read_text())]


def test_same_file_under_two_names_from_both_sides_is_ingested_once(runtime_factory, tmp_path):
    runtime = runtime_factory()
    server = f"127.0.0.1:{runtime.server.port}"
    host = tmp_path / "other-host"
    host.mkdir()
    drop = runtime.settings.watch

    # dropped on the server first, then sent from the other host under another name (twice)
    shutil.copy(CHALLENGE / "1.json", drop / "1.json")
    first = fp(drop / "1.json")
    wait_for(lambda: runtime.store.report(first).get("state") == "merged", message="1.json to merge")
    shutil.copy(CHALLENGE / "1.json", host / "copy-of-1.json")
    for _ in range(2):
        done = send(host, "copy-of-1.json", "--server", server)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"copy-of-1.json: already ingested (id {first}); nothing sent" in done.stdout

    # sent from the other host first, then dropped on the server under another name
    shutil.copy(CHALLENGE / "2.json", host / "2.json")
    second = fp(host / "2.json")
    done = send(host, "2.json", "--server", server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2.json: 1000 records, 1000 accepted, 0 rejected" in done.stdout and f"(id {second})" in done.stdout
    wait_for(lambda: runtime.store.report(second).get("state") == "merged", message="2.json to merge")
    shutil.copy(CHALLENGE / "2.json", drop / "renamed-2.json")
    wait_for(lambda: any("renamed-2.json: already ingested (same content as 2.json)" in e.text
                         for e in runtime.events.recent(2000)), message="the dropped copy to be recognised")
    done = send(host, "2.json", "--server", server)
    assert "already ingested" in done.stdout

    wait_for(lambda: merged_lines(runtime, first) and merged_lines(runtime, second), message="merged lines")
    assert len(merged_lines(runtime, first)) == 1 and len(merged_lines(runtime, second)) == 1
    report = runtime.store.report(second)
    assert (report["name"], report["size"], report["accepted"], report["records"]) == (
        "2.json", (CHALLENGE / "2.json").stat().st_size, 1000, 1000)
    assert report["peer"].startswith("ipv4:127.0.0.1")  # the server knows who sent it
    emails = exported_emails(runtime)
    assert len(emails) == len(set(emails)) == runtime.store.count()


def test_a_send_killed_half_way_and_resent_with_another_batch_size_ends_complete(runtime_factory, tmp_path):
    # A short queue holds the stream while the worker merges, so the kill lands half-way through the file.
    runtime = runtime_factory(watch=False, workers=1, max_backlog=2)
    server = f"127.0.0.1:{runtime.server.port}"
    host = tmp_path / "other-host"
    host.mkdir()
    users = make_users(20_000, tag="resume")
    source = host / "big.json"
    source.write_bytes(orjson.dumps(users))
    file_id = fp(source)

    first = send(host, "big.json", "--server", server, "--batch-size", "100", background=True)
    try:
        wait_for(lambda: runtime.store.report(file_id).get("records", 0) >= 6000, timeout=120,
                 message="the first send to be half-way")
        assert first.poll() is None, "the first send finished before it could be killed"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    half = runtime.store.report(file_id)
    assert half["state"] == "streaming" and half["records"] < 20_000
    wait_for(lambda: runtime.store.applied_ranges(file_id) and runtime.backlog() == 0, timeout=120,
             message="the batches it sent to merge")
    merged_before = runtime.store.applied_ranges(file_id)
    assert merged_before[0][0] == 0 and merged_before[0][1] >= 100

    done = send(host, "big.json", "--server", server, "--batch-size", "333")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "big.json: 20000 records, 20000 accepted, 0 rejected" in done.stdout
    wait_for(lambda: runtime.store.report(file_id).get("state") == "merged", timeout=120, message="big.json to merge")
    report = runtime.store.report(file_id)
    assert (report["records"], report["accepted"], report["rejected"]) == (20_000, 20_000, 0)
    # the ranges merged before the resume were skipped, not staged again
    assert report["batches_total"] < -(-20_000 // 333)
    assert runtime.store.applied_ranges(file_id) == [(0, 20_000)]
    assert report["new"] == 20_000
    emails = exported_emails(runtime)
    assert sorted(emails) == sorted(u["email"].lower() for u in users)
    wait_for(lambda: merged_lines(runtime, file_id), message="its merged line")
    assert len(merged_lines(runtime, file_id)) == 1
    assert len([r for r in runtime.store.reports() if r.get("name") == "big.json"]) == 1


def test_a_truncated_file_sent_remotely_lands_in_the_servers_quarantine(runtime_factory, tmp_path):
    runtime = runtime_factory(watch=False)
    host = tmp_path / "other-host"
    host.mkdir()
    shutil.copy(CHALLENGE / "6.json", host / "6.json")  # truncated inside record 978
    done = send(host, "6.json", "--server", f"127.0.0.1:{runtime.server.port}")
    assert done.returncode == 1 and "truncated" in done.stdout, done.stdout + done.stderr
    file_id = fp(host / "6.json")
    wait_for(lambda: runtime.store.report(file_id).get("state") == "merged", message="6.json's valid records to merge")
    quarantine = runtime.settings.data_dir / "quarantine"
    assert (quarantine / "6.json").read_bytes() == (host / "6.json").read_bytes()
    error = json.loads((quarantine / "6.json.error.json").read_text())
    report = runtime.store.report(file_id)
    assert error["reason"] == report["damage"] and "truncated" in error["reason"]
    assert (error["file"], error["id"], error["records_kept"]) == ("6.json", file_id, 977)
    assert runtime.store.count() == 977
    line = wait_for(lambda: merged_lines(runtime, file_id), message="its partial line")[0]
    assert line.data["state"] == "partial" and "truncated" in line.text


THIRD_PARTY = textwrap.dedent('''
    """A client written from protobufs/users.proto and its comments alone."""
    import hashlib, json, sys
    import grpc
    import users_pb2 as pb, users_pb2_grpc as rpc

    target, path, batch, cut = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    data = open(path, "rb").read()
    users = json.loads(data)
    header = pb.SourceHeader(name=path, size=len(data), fingerprint=hashlib.blake2b(data, digest_size=16).hexdigest())

    def stream():
        first = True
        for start in range(0, min(cut, len(users)), batch):
            part = users[start:start + batch]
            message = pb.UserBatch(users_json=json.dumps(part).encode(), first_record=start, record_count=len(part),
                                   source_bytes=len(data))
            if first:
                message.header.CopyFrom(header)
                first = False
            yield message
        if cut >= len(users):
            yield pb.UserBatch(trailer=pb.SourceTrailer(records=len(users)))

    with grpc.insecure_channel(target) as channel:
        answer = rpc.UsersStub(channel).SendUserBatches(stream())
        print(answer.state, answer.file_id, answer.accepted, answer.rejected, answer.batches)
''')


def test_a_third_party_client_from_the_proto_alone_gets_idempotent_batches_and_a_report(runtime_factory, tmp_path):
    runtime = runtime_factory(watch=False)
    target = f"127.0.0.1:{runtime.server.port}"
    host = tmp_path / "third-party"
    host.mkdir()
    shutil.copy(ROOT / "protobufs" / "users.proto", host / "users.proto")
    assert protoc.main(["protoc", f"-I{host}", f"--python_out={host}", f"--grpc_python_out={host}",
                        str(host / "users.proto")]) == 0
    (host / "client.py").write_text(THIRD_PARTY)
    users = make_users(1000, tag="third") + [{"id": "not a number", "email": "bad@example.org"}]
    (host / "users.json").write_bytes(orjson.dumps(users))
    file_id = fp(host / "users.json")

    def run(batch: int, cut: int) -> list[str]:
        done = subprocess.run([sys.executable, "client.py", target, "users.json", str(batch), str(cut)], cwd=host,
                              capture_output=True, text=True, timeout=120, env=sender_env() | {"PYTHONPATH": ""})
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    # cut off after 400 users (no trailer): the file stays streaming, and what was sent merges
    assert run(100, 400)[:3] == ["streaming", file_id, "400"]
    wait_for(lambda: runtime.store.applied_ranges(file_id) == [(0, 400)], message="the first 400 to merge")
    assert runtime.store.report(file_id)["state"] == "streaming"
    # sent again whole with another batch size: the merged ranges are skipped, the report completes
    state, _, accepted, rejected, batches = run(250, 10**9)
    assert (state in ("queued", "merged"), accepted, rejected) == (True, "1000", "1")
    assert int(batches) == 4  # 0:250 was merged (skipped); 250:250 only partly (sent again), and the rest
    wait_for(lambda: runtime.store.report(file_id).get("state") == "merged", message="the file to merge")
    report = runtime.store.report(file_id)
    assert (report["records"], report["accepted"], report["rejected"], report["new"]) == (1001, 1000, 1, 1000)
    assert "record 1000" in report["reasons"][0]
    # and once more: already ingested, nothing is read
    assert run(50, 10**9)[:3] == ["already", "ingested", file_id]
    assert runtime.store.count() == 1000
