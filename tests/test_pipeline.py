"""The whole pipeline on the challenge files, on the embedded and the external Redis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import orjson

from core.storage.codec import bucket_of
from core.storage.store import Store
from tests.conftest import CHALLENGE, copy_challenge, wait_pipeline

COMPLETE_USERS = 9977  # ten files of 1,000; 6.json is cut inside its record 978


def load(path):
    return json.loads(path.read_text())


def test_once_merges_every_complete_record_and_reports_the_truncated_file(runtime_factory, tmp_path):
    copy_challenge(tmp_path / "drop")
    runtime = runtime_factory(watch=False)
    summary = runtime.run_once()
    users = load(runtime.settings.output_path)
    emails = [u["email"].casefold() for u in users]
    assert len(users) == COMPLETE_USERS
    assert len(set(emails)) == COMPLETE_USERS
    assert emails == sorted(emails, key=lambda e: (bucket_of(e), e)), "documented order: bucket, then merge key"
    assert summary.accepted == COMPLETE_USERS and summary.damaged == 1 and not summary.clean
    truncated = [r for r in runtime.store.reports() if r.get("damage")]
    assert [r["name"] for r in truncated] == ["6.json"]
    assert "truncated" in truncated[0]["damage"] and "record 978" in truncated[0]["damage"]
    error = json.loads((runtime.settings.data_dir / "quarantine" / "6.json.error.json").read_text())
    assert "truncated" in error["reason"]


def test_second_run_changes_nothing(runtime_factory, tmp_path):
    copy_challenge(tmp_path / "drop")
    runtime = runtime_factory(watch=False)
    runtime.run_once()
    first = runtime.settings.output_path.read_bytes()
    again = runtime.run_once()
    assert again.accepted == 0 and again.skipped == 10
    assert runtime.settings.output_path.read_bytes() == first


def test_same_users_from_two_files_and_a_renamed_copy_are_one_each(runtime_factory, tmp_path):
    drop = tmp_path / "drop"
    copy_challenge(drop, names={"1.json"})
    shutil.copy(CHALLENGE / "1.json", drop / "copy-of-1.json")
    runtime = runtime_factory(watch=False)
    runtime.run_once()
    assert runtime.store.count() == 1000
    assert len(load(runtime.settings.output_path)) == 1000


def test_latest_record_wins_and_email_case_is_one_identity(runtime_factory, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    base = {"id": 1, "first_name": "Ada", "last_name": "L", "email": "ada@example.com", "gender": "F",
            "ip_address": "1.2.3.4", "user_name": "ada", "agent": "x", "country": "UK"}
    (drop / "a.json").write_bytes(orjson.dumps([base]))
    runtime = runtime_factory(watch=False)
    runtime.run_once()
    changed = dict(base, email="  ADA@Example.com ", country="France")
    (drop / "b.json").write_bytes(orjson.dumps([changed]))
    runtime.run_once()
    users = load(runtime.settings.output_path)
    assert len(users) == 1 and users[0]["country"] == "France"


def test_later_record_in_one_file_wins_even_across_batches(runtime_factory, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    users = [{"id": i, "email": f"u{i}@x.org", "first_name": "first"} for i in range(50)]
    users.append({"id": 99, "email": "u3@x.org", "first_name": "last"})
    (drop / "dup.json").write_bytes(orjson.dumps(users))
    runtime = runtime_factory(watch=False, batch_size=7)
    runtime.run_once()
    merged = {u["email"]: u for u in load(runtime.settings.output_path)}
    assert len(merged) == 50 and merged["u3@x.org"]["first_name"] == "last"


def test_a_batch_merged_twice_counts_once(connection, namespace):
    store = Store(connection, namespace)
    users = [{"id": 1, "email": "a@b.c", "first_name": "A"}, {"id": 2, "email": "d@e.f", "first_name": "D"}]
    attempt = store.begin_attempt("f1", state="streaming")
    first = store.merge_batch("f1", attempt, "0:2", store.reserve_seq(2), users, "email")
    retry = store.merge_batch("f1", attempt, "0:2", store.reserve_seq(2), users, "email")
    assert first["new"] == 2 and retry["already_merged"]
    assert store.finish_report("f1", 1), "one batch sent, one counted: merged"
    report = store.report("f1")
    assert report["new"] == 2 and report["batches_done"] == 1 and store.count() == 2


def test_records_without_email_are_kept_by_fingerprint(runtime_factory, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    users = [{"id": 1, "first_name": "No", "last_name": "Mail"}, {"id": 2, "first_name": "No", "last_name": "Mail"},
             {"id": 3, "first_name": "Other", "email": None}]
    (drop / "nomail.json").write_bytes(orjson.dumps(users))
    runtime = runtime_factory(watch=False)
    runtime.run_once()
    assert runtime.store.count() == 2  # the first two differ only by the file-local id


def test_a_cancelled_stream_then_a_retry_of_it_leaves_each_user_once(runtime_factory, tmp_path):
    """A client that gives up mid-stream gets no answer (so is never told more was accepted than was);
    sending the same users again adds nothing twice."""
    import threading

    import grpc

    from protobufs import users_pb2, users_pb2_grpc
    from tests.conftest import make_users

    runtime = runtime_factory(watch=False)
    users = make_users(3000, "cancel")
    batches = [users_pb2.UserBatch(users_json=orjson.dumps(users[i:i + 500]), source="cancel.json",
                                   first_record=i) for i in range(0, 3000, 500)]
    halfway = threading.Event()
    release = threading.Event()

    def stalled():
        yield from batches[:3]
        halfway.set()
        release.wait(30)  # the client hangs here until it gives up
        yield from batches[3:]

    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        call = stub.SendUserBatches.future(stalled())
        assert halfway.wait(30)
        call.cancel()
        release.set()
        assert call.cancelled()
        report = stub.SendUserBatches(iter(batches), timeout=60)
    assert report.accepted == 3000
    wait_pipeline(runtime, lambda: runtime.store.count() == 3000 and len(runtime.queue) == 0, message="every user merged")
    merged = json.loads(Path(runtime.exporter.write()["path"]).read_text())
    assert len(merged) == len({u["email"] for u in merged}) == 3000


def test_export_never_repeats_a_user_when_merges_land_during_it(connection, namespace, tmp_path):
    store = Store(connection, namespace)
    attempt = store.begin_attempt("f", state="streaming")
    users = [{"id": i, "email": f"m{i}@x.org"} for i in range(10)]
    store.merge_batch("f", attempt, "0:10", store.reserve_seq(10), users, "email")
    walk = store.iter_users(chunk=5)
    first_half = [next(walk) for _ in range(5)]
    early = {"id": 99, "email": "a0@x.org"}  # sorts before everything already exported
    store.merge_batch("f", attempt, "10:1", store.reserve_seq(1), [early], "email")
    rest = list(walk)
    emails = [orjson.loads(v)["email"] for v in first_half + rest]
    assert len(emails) == len(set(emails)) == 10


def test_rpcs_answer_unavailable_when_the_store_is_gone(own_redis):
    import grpc

    from protobufs import users_pb2, users_pb2_grpc

    runtime = own_redis.start()
    own_redis.broker.stop()
    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        for call in (lambda: stub.SendUserInfo(users_pb2.UserRequest(id=1, email="a@b.c"), timeout=30),
                     lambda: stub.SendUserBatches(iter([users_pb2.UserBatch(users_json=b'[{"email":"a@b"}]')]),
                                                  timeout=30)):
            try:
                call()
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE and "unavailable" in error.details()
            else:
                raise AssertionError("a call without a store must fail")

def test_a_staged_batch_is_deleted_by_its_merge_and_a_retry_changes_nothing(connection, namespace):
    import pytest

    store = Store(connection, namespace)
    attempt = store.begin_attempt("f2", state="streaming")
    users = [{"id": 1, "email": "s@t.u"}, {"id": 2, "email": "v@w.x"}]
    seq, blob = store.stage_batch(users)
    assert connection.exists(blob)
    assert store.merge_staged("f2", attempt, "0:2", seq, blob, "email")["new"] == 2
    assert not connection.exists(blob), "the staged users go with the merge that applied them"
    retry = store.merge_staged("f2", attempt, "0:2", seq, blob, "email")
    assert retry["already_merged"] and store.count() == 2
    with pytest.raises(RuntimeError, match="missing"):
        store.merge_staged("f2", attempt, "2:5", seq, f"{namespace}:batch:gone", "email")


def test_a_record_too_large_for_any_message_is_rejected_and_its_batch_still_goes(runtime_factory, tmp_path,
                                                                               monkeypatch):
    import core.intake.client

    monkeypatch.setattr(core.intake.client, "MAX_BATCH_BYTES", 4000)  # stands in for the 8 MiB budget
    drop = tmp_path / "drop"
    drop.mkdir()
    users = [{"id": i, "email": f"z{i}@x.org"} for i in range(20)]
    users[7]["agent"] = "A" * 5000
    (drop / "huge.json").write_bytes(orjson.dumps(users))
    runtime = runtime_factory(watch=False)
    summary = runtime.run_once()
    report = runtime.store.reports()[0]
    assert summary.accepted == 19 and summary.rejected == 1
    assert report["reasons"] == ["record 7: record is over 4000 bytes, too large to send"]
