"""Integrity of the store (issue 9): no in-band separators, scripts that check before they write, an
exporter that cannot die quietly, a recorded merge key, staged batches that go with their job, bounded
caches, and an export that notices a namespace reset."""

from __future__ import annotations

import json
import threading

import grpc
import orjson
import pytest
import redis

from core.config import ConfigError
from core.ops.doctor import diagnose
from core.queue.taskqueue import enqueue_batch, make_queue
from core.storage import codec
from core.storage.codec import StaleDictionary, bucket_of
from core.storage.exporter import Exporter
from core.storage.staging import sweep_staged
from core.storage.store import MergeKeyMismatch, Store
from protobufs import users_pb2, users_pb2_grpc
from tests.conftest import make_users, wait_for, wait_pipeline


def merge(store: Store, report: str, users: list[dict], span: str | None = None) -> dict:
    attempt = store.begin_attempt(report, state="streaming")
    return store.merge_batch(report, attempt, span or f"0:{len(users)}", store.reserve_seq(len(users)), users,
                             "email")


def exported(store: Store) -> list[dict]:
    return [orjson.loads(raw) for raw in store.iter_users(chunk=1000)]


# -- item 1: a TAB (or any character) in a field ---------------------------------------------------
def test_a_tab_in_a_unary_email_round_trips_and_export_goes_on(runtime_factory):
    runtime = runtime_factory(watch=False)
    user = dict(make_users(1, "tab")[0], email="tab\tbed@x.com", first_name="a\tb\nc\x00d\u2028e")
    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        assert stub.SendUserInfo(users_pb2.UserRequest(**user), timeout=30).status
        assert stub.SendUserInfo(users_pb2.UserRequest(**make_users(1, "other")[0]), timeout=30).status
    wait_pipeline(runtime, lambda: runtime.store.count() == 2 and len(runtime.queue) == 0, message="both unary users merged")
    info = runtime.exporter.write()
    users = {u["email"]: u for u in json.loads(runtime.settings.output_path.read_text())}
    assert info["undecodable"] == 0
    assert users["tab\tbed@x.com"] == user
    key = runtime.store.bucket_key("tab\tbed@x.com")
    assert runtime.store.redis.hexists(key, "tab\tbed@x.com"), "stored under its whole key, not the part before TAB"


def test_an_inbox_left_by_the_previous_release_still_drains(connection, namespace):
    """Old items were "<seq>\\t<bucket>\\t<key>\\t<array>"; a key holding TABs is read up to the last TAB."""
    store = Store(connection, namespace)
    users = [dict(make_users(1, "old")[0], email="old\ttab\t@x.org"), make_users(1, "plain")[0]]
    inbox = store.key("inbox")
    for user in users:
        key = user["email"].casefold()
        _, (row,) = store.codec.encode([user])
        connection.rpush(inbox, b"%d\t%d\t%s\t%s" % (store.reserve_seq(1), bucket_of(key), key.encode(), row))
    store.push_unary(make_users(1, "new")[0], "email")  # the new format beside the old
    assert store.drain_inbox() == 3
    assert {u["email"]: u for u in exported(store)} == {u["email"]: u for u in users + make_users(1, "new")}


def test_an_inbox_item_no_release_wrote_is_set_aside_not_merged_and_not_blocking(connection, namespace):
    store = Store(connection, namespace)
    connection.rpush(store.key("inbox"), b"garbage without separators", b"\x94\xc1")
    store.push_unary(make_users(1, "fine")[0], "email")
    assert store.drain_inbox() == 3
    assert [u["email"] for u in exported(store)] == ["fine0@example.org"]
    assert connection.llen(store.key("inbox", "unreadable")) == 2 == store.unreadable_inbox()
    from core.ops.snapshot import RedisInfo, Snapshot

    snap = Snapshot(taken_at=0, redis=RedisInfo("x", True, True), grpc=None, watcher=None, unreadable_inbox=2)
    assert [p for p in diagnose(snap, None) if "2 inbox item(s)" in p.what]


# -- the exporter cannot die quietly ---------------------------------------------------------------------
def test_an_undecodable_value_is_skipped_counted_logged_once_and_shown(connection, namespace, tmp_path):
    store = Store(connection, namespace)
    merge(store, "f", make_users(20, "ok"))
    # what the old unary path stored for email "tab\tbed@x.com": the value holds part of the key
    bad_key = "tab"
    connection.hset(store.bucket_key(bad_key), bad_key, b'7\tbed@x.com\t[0,"a"]')
    connection.incr(store.key("version"))
    events = []
    exporter = Exporter(store, tmp_path / "all_users.json", 0.05, on_event=lambda level, text: events.append(text))
    info = exporter.write()
    assert info["count"] == 20 and info["undecodable"] == 1
    assert len(json.loads((tmp_path / "all_users.json").read_text())) == 20
    connection.incr(store.key("version"))
    assert exporter.write()["undecodable"] == 1
    assert len([e for e in events if "cannot be decoded" in e]) == 1, events
    assert store.last_export()["undecodable"] == 1
    from core.ops.snapshot import RedisInfo, Snapshot

    snap = Snapshot(taken_at=0, redis=RedisInfo("x", True, True), grpc=None, watcher=None,
                    export=store.last_export())
    problems = [p for p in diagnose(snap, None) if "cannot be decoded" in p.what]
    assert problems and "'tab'" in problems[0].what


def test_the_undecodable_count_is_in_metrics(runtime_factory):
    import urllib.request

    runtime = runtime_factory(watch=False, metrics_listen="127.0.0.1:0")
    store = runtime.store
    connection = store.redis
    connection.hset(store.bucket_prefix + "3", "broken", b"not a value")
    runtime.exporter.write()
    body = urllib.request.urlopen(f"http://{runtime.metrics.address}/metrics", timeout=10).read().decode()
    assert "swordsec_users_undecodable 1.0" in body


def test_the_exporter_thread_survives_any_exception_with_one_line(connection, namespace, tmp_path, monkeypatch):
    store = Store(connection, namespace)
    merge(store, "f", make_users(3, "live"))
    events = []
    exporter = Exporter(store, tmp_path / "all_users.json", 0.05, on_event=lambda level, text: events.append(text))
    real, failures = exporter.view.write, []

    def flaky():
        if len(failures) < 3:
            failures.append(1)
            raise KeyError("a bug")
        return real()

    monkeypatch.setattr(exporter.view, "write", flaky)
    exporter.start()
    try:
        wait_for(lambda: (tmp_path / "all_users.json").exists(), message="the export after the failures")
    finally:
        exporter.stop()
    assert len(json.loads((tmp_path / "all_users.json").read_text())) == 3
    assert [e for e in events if "a bug" in e] == ["exporter: KeyError: 'a bug'"]


# -- item 7: scripts check before they write ----------------------------------------------------------------
def test_a_merge_that_cannot_finish_writes_nothing_and_a_retry_applies_it(connection, namespace):
    store = Store(connection, namespace)
    attempt = store.begin_attempt("f", state="streaming")
    connection.hset(store.key("file", "f"), "batches_total", 1)
    users = make_users(5, "half")
    seq = store.reserve_seq(5)
    connection.set(store.key("file", "f", "seen", attempt), "in the way")  # WRONGTYPE after the users
    with pytest.raises(redis.ResponseError, match="expected a set"):
        store.merge_batch("f", attempt, "0:5", seq, users, "email")
    assert store.count() == 0 and not connection.exists(store.key("file", "f", "done"))
    assert not connection.exists(*(store.bucket_key(u["email"]) for u in users))
    connection.delete(store.key("file", "f", "seen", attempt))
    again = store.merge_batch("f", attempt, "0:5", seq, users, "email")
    assert again["new"] == 5 and not again["already_merged"]
    report = store.report("f")
    assert report["batches_done"] == 1 and report["state"] == "merged" and report["new"] == 5


@pytest.mark.parametrize("key, value", [("version", "not a number"), ("users:count", "x")])
def test_a_merge_refuses_a_counter_it_cannot_increment_before_any_write(connection, namespace, key, value):
    store = Store(connection, namespace)
    attempt = store.begin_attempt("f", state="streaming")
    connection.set(f"{namespace}:{key}", value)
    with pytest.raises(redis.ResponseError, match="not an integer"):
        store.merge_batch("f", attempt, "0:2", store.reserve_seq(2), make_users(2, "c"), "email")
    assert not connection.exists(store.key("file", "f", "done"))
    assert store.report("f").get("new") is None


def test_finish_and_unary_push_refuse_wrong_types_without_writing(connection, namespace):
    store = Store(connection, namespace)
    connection.set(store.key("file", "g", "seen", store.attempt("g")), "x")
    with pytest.raises(redis.ResponseError, match="expected a set"):
        store.finish_report("g", 3, state="queued")
    assert store.report("g").get("batches_total") is None
    connection.set(store.key("seq"), "abc")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        store.push_unary(make_users(1, "p")[0], "email")
    assert not connection.exists(store.key("inbox"), store.key("inbox", "pending"))


# -- item 6: the store records its merge key ------------------------------------------------------------------
def test_the_store_refuses_another_merge_key(connection, namespace):
    store = Store(connection, namespace)
    store.upgrade_layout("email")
    store.upgrade_layout("email")
    with pytest.raises(MergeKeyMismatch) as refused:
        Store(connection, namespace).upgrade_layout("id")
    assert isinstance(refused.value, ConfigError)
    text = str(refused.value)
    assert "\n" not in text and "'email'" in text and "--merge-key email" in text and "--namespace" in text


def test_the_cli_exits_2_with_one_line_for_another_merge_key(redis_url, namespace, connection, tmp_path,
                                                              monkeypatch, capsys):
    from console.cli import main

    Store(connection, namespace).claim_merge_key("email")
    monkeypatch.setenv("SWORDSEC_NAMESPACE", namespace)
    code = main(["--no-ui", "--once", "--watch", str(tmp_path / "drop"), "--data-dir", str(tmp_path / "data"),
                 "--redis-url", redis_url, "--grpc-listen", "127.0.0.1:0", "--workers", "0", "--merge-key", "id"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "merges users by 'email', not 'id'" in err[0]


# -- item 8: staged batches leave with their job; bounded caches ------------------------------------------
def test_a_staged_batch_whose_job_is_gone_is_swept_and_others_stay(connection, namespace):
    store = Store(connection, namespace)
    queue = make_queue(connection, namespace)
    blobs = {}
    for name in ("deleted", "kept"):
        seq, blob = store.stage_batch(make_users(3, name))
        job = enqueue_batch(queue, {"namespace": namespace, "report": name, "attempt": "a", "span": "0:3",
                                    "seq": seq, "key": "email", "source": name, "blob": blob, "count": 3})
        store.track_staged(blob, job.id)
        blobs[name] = (blob, job)
    _, orphan = store.stage_batch(make_users(1, "never-enqueued"))
    assert sweep_staged(store, grace=60) == 0, "young blobs are left alone"
    blobs["deleted"][1].delete()
    assert sweep_staged(store, grace=0) == 2
    assert not connection.exists(blobs["deleted"][0], orphan)
    assert connection.exists(blobs["kept"][0])
    assert connection.zcard(store.key("staged")) == 1 and connection.hlen(store.key("staged", "jobs")) == 1
    queue.delete(delete_jobs=True)


def test_a_merge_forgets_the_staged_batch_it_applied(connection, namespace):
    store = Store(connection, namespace)
    attempt = store.begin_attempt("f", state="streaming")
    seq, blob = store.stage_batch(make_users(2, "gone"))
    store.track_staged(blob, "job-1")
    store.merge_staged("f", attempt, "0:2", seq, blob, "email")
    assert not connection.exists(blob, store.key("staged"), store.key("staged", "jobs"))


def test_the_dictionary_cache_is_bounded_by_its_cap(connection, namespace, monkeypatch):
    monkeypatch.setattr(codec, "DICTIONARY_CAP", 50)
    store, other = Store(connection, namespace), Store(connection, namespace)
    users = make_users(2000, "cap")
    for i, user in enumerate(users):
        user["agent"] = f"agent {i}"
    for start in range(0, 2000, 100):
        merge(store, f"f{start}", users[start:start + 100], span="0:100")
    merge(other, "o", make_users(10, "other"))
    assert store.codec.dictionary.cached() <= 50 and other.codec.dictionary.cached() <= 50
    assert connection.llen(f"{namespace}:dict:list") == 50
    reader = Store(connection, namespace)
    assert {u["email"]: u for u in exported(reader)} == {u["email"]: u for u in users + make_users(10, "other")}
    assert reader.codec.dictionary.cached() <= 50


# -- item 9: a namespace reset during an export -------------------------------------------------------------
def test_an_export_that_sees_the_namespace_reset_stops_instead_of_mixing_strings(connection, namespace):
    reader = Store(connection, namespace)
    merge(reader, "a", make_users(300, "before"))
    version = reader.version()
    walk = reader.iter_users(chunk=10)
    next(walk)
    reader.clear()
    fresh = make_users(300, "after")
    for user in fresh:
        user |= {"gender": "Agender", "agent": "Other/2.0", "country": "Chile"}
    merge(Store(connection, namespace), "b", fresh)
    with pytest.raises(StaleDictionary):
        list(walk)
    assert reader.version() > version, "a reset never makes the version count again from where it was"
    users = exported(reader)
    assert {(u["gender"], u["agent"], u["country"]) for u in users} == {("Agender", "Other/2.0", "Chile")}


def test_the_exporter_rewrites_after_a_reset_even_at_the_same_number_of_merges(connection, namespace, tmp_path):
    store = Store(connection, namespace)
    merge(store, "a", make_users(3, "first"))
    exporter = Exporter(store, tmp_path / "all_users.json", 0.05)
    exporter.write()
    store.clear()
    merge(store, "b", make_users(2, "second"))  # one merge again, as before the reset
    exporter.write()
    users = json.loads((tmp_path / "all_users.json").read_text())
    assert sorted(u["email"] for u in users) == ["second0@example.org", "second1@example.org"]


def test_export_threads_end_with_the_walk(connection, namespace):
    store = Store(connection, namespace)
    merge(store, "f", make_users(30, "t"))
    walk = store.iter_users(chunk=5)
    next(walk)
    walk.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("export-fetch")]


def test_a_report_id_made_from_a_file_name_cannot_name_another_reports_keys(connection, namespace):
    """A refused entry is filed as "refused-<name>" (Ledger.refuse): a name like "x:done" must stay its own report."""
    store = Store(connection, namespace)
    store.update_report("refused-x", name="x", state="rejected")
    store.update_report("refused-x:done", name="x:done", state="rejected")
    assert store.report("refused-x")["name"] == "x" and store.report("refused-x:done")["name"] == "x:done"
    assert connection.type(store.key("file", "refused-x", "done")) == b"none"
    assert {r["id"] for r in store.reports()} == {"refused-x", "refused-x:done"}
    store.forget_report("refused-x:done")
    assert [r["id"] for r in store.reports()] == ["refused-x"]


@pytest.mark.parametrize("key", ["staged", "staged:jobs", "file:f:done", "file:f", "users:count"])
def test_any_key_of_the_wrong_type_stops_a_merge_before_its_first_write(connection, namespace, key):
    store = Store(connection, namespace)
    attempt = store.begin_attempt("f", state="streaming")
    seq, blob = store.stage_batch(make_users(3, "typed"))
    connection.delete(f"{namespace}:{key}")
    connection.rpush(f"{namespace}:{key}", "wrong type")
    with pytest.raises(redis.ResponseError):
        store.merge_staged("f", attempt, "0:3", seq, blob, "email")
    assert connection.exists(blob), "the staged users stay for the retry"
    assert key == "users:count" or store.count() == 0
    assert connection.type(store.key("file", "f", "done")) in (b"none", b"list")
    assert not connection.exists(store.key("version"))


def test_a_file_is_counted_rejected_or_damaged_once_per_attempt(connection, namespace):
    """files:rejected counts a report's transition, not every write that repeats it (a notice sent again)."""
    store = Store(connection, namespace)
    for _ in range(3):
        store.update_report("refused-pipe.json", name="pipe.json", state="rejected", damage="a FIFO")
    assert store.counters() == {"files:rejected": 1.0, "files:damaged": 1.0}
    assert "counted:rejected" not in store.report("refused-pipe.json")
    store.begin_attempt("refused-pipe.json", name="pipe.json", state="streaming")
    store.finish_report("refused-pipe.json", 0, state="rejected", damage="a FIFO again")
    assert store.counters() == {"files:rejected": 2.0, "files:damaged": 2.0}
