"""One contract for batch identity (protobufs/users.proto, UserBatch): a batch is its file_id and the record
range it covers; the server refuses what breaks it, and never deduplicates a batch without a file_id."""

from __future__ import annotations

import uuid

import grpc
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.service.server import BadBatch, Ranges
from protobufs import users_pb2, users_pb2_grpc
from tests.conftest import make_users, wait_for, wait_pipeline

FILE_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def send(runtime_factory):
    runtime = runtime_factory(watch=False)
    channel = grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}")
    stub = users_pb2_grpc.UsersStub(channel)

    def call(batches):
        return stub.SendUserBatches(iter(batches), timeout=60)

    call.runtime = runtime
    yield call
    channel.close()


def batch(users, **fields):
    return users_pb2.UserBatch(users_json=orjson.dumps(users), source="t.json", **fields)


def test_batches_that_leave_first_record_at_zero_without_a_file_id_are_all_merged(send):
    """The issue's case: three batches of 2 users, index 0, 1, 2, first_record 0 -> 6 users, report merged."""
    users = make_users(6, "zero")
    report = send([batch(users[i:i + 2], index=i // 2) for i in range(0, 6, 2)])
    assert report.accepted == 6 and report.batches == 3
    runtime = send.runtime
    wait_pipeline(runtime, lambda: runtime.store.count() == 6, message="six users merged")
    adhoc = [r for r in runtime.store.reports() if r.get("name") == "send"][0]
    wait_for(lambda: runtime.store.report(adhoc["id"]).get("state") == "merged", message="ad-hoc report merged")
    assert runtime.store.report(adhoc["id"])["batches_done"] == 3


def test_overlapping_ranges_of_one_file_are_invalid_argument(send):
    users = make_users(6, "over")
    with pytest.raises(grpc.RpcError) as refused:
        send([batch(users[i:i + 2], index=i // 2, file_id=FILE_ID) for i in range(0, 6, 2)])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch 1" in refused.value.details() and "overlaps" in refused.value.details()


@pytest.mark.parametrize("file_id", [FILE_ID + ":done", FILE_ID.upper(), FILE_ID[:31], "../../etc", "a\tb"])
def test_a_file_id_that_is_not_ours_is_invalid_argument(send, file_id):
    with pytest.raises(grpc.RpcError) as refused:
        send([batch(make_users(2, "id"), file_id=file_id)])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "fingerprint" in refused.value.details()
    assert send.runtime.store.report(file_id) == {"id": file_id}
    assert not send.runtime.store.redis.exists(send.runtime.store.key("file", file_id))


def test_a_record_count_below_the_records_held_is_invalid_argument(send):
    with pytest.raises(grpc.RpcError) as refused:
        send([batch(make_users(3, "short"), file_id=FILE_ID, record_count=2)])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "record_count 2" in refused.value.details()


def test_a_range_past_the_limit_is_invalid_argument(send):
    with pytest.raises(grpc.RpcError) as refused:
        send([batch(make_users(1, "far"), file_id=FILE_ID, first_record=2**64 - 1)])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_resend_skips_ranges_already_merged_and_counts_rejected_records_in_the_range(send):
    """Records 0-9 of a file: batch [0, 5) holds 4 users (the client dropped one), batch [5, 10) 5 users."""
    store = send.runtime.store
    users = make_users(9, "resend")
    first = [batch(users[:4], file_id=FILE_ID, first_record=0, record_count=5),
             batch(users[4:], file_id=FILE_ID, first_record=5, index=1)]
    assert send(first).accepted == 9
    store.finish_report(FILE_ID, 2, state="queued")
    wait_for(lambda: store.report(FILE_ID)["state"] == "merged", message="first send merged")
    assert store.count() == 9
    assert sorted(m.decode() for m in store.redis.smembers(store.key("file", FILE_ID, "done"))) == ["0:5", "5:5"]
    store.begin_attempt(FILE_ID, state="streaming")
    changed = [dict(u, first_name="Changed") for u in users]
    assert send([batch(changed[:4], file_id=FILE_ID, first_record=0, record_count=5),
                 batch(changed[4:], file_id=FILE_ID, first_record=5)]).accepted == 9
    store.finish_report(FILE_ID, 2, state="queued")
    wait_for(lambda: store.report(FILE_ID)["state"] == "merged", message="resend counted")
    report = store.report(FILE_ID)
    assert report["state"] == "merged" and report["batches_done"] == 2
    assert {u["first_name"] for u in store.users_page(0, 20)} == {f"First{i}" for i in range(9)}
    assert report["updated"] == 0, "an applied range is the same records: not merged again"


def test_a_batch_whose_users_json_is_not_an_array_is_invalid_argument(send):
    with pytest.raises(grpc.RpcError) as refused:
        send([users_pb2.UserBatch(users_json=b'{"email": "a@b.c"}')])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "array" in refused.value.details()


def test_a_record_that_does_not_decode_is_rejected_alone(send):
    """1e400 is JSON that neither orjson nor msgspec decodes (out of a double's range): that record is rejected
    with the reason, the records beside it are merged, and the stream goes on."""
    users = make_users(2, "range")
    body = b"[" + b",".join([orjson.dumps(users[0]), b'{"id": 1e400, "email": "x@y.z"}', orjson.dumps(users[1])]) + b"]"
    report = send([users_pb2.UserBatch(users_json=body, source="t.json")])
    assert report.accepted == 2 and report.rejected == 1
    assert report.rejections[0].record == 1 and "not valid JSON" in report.rejections[0].reason
    wait_for(lambda: send.runtime.store.count() == 2, message="the two good users merged")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 8)), max_size=30))
def test_ranges_refuse_exactly_the_overlaps(spans):
    ranges, taken, empties = Ranges(), set(), set()
    for start, count in spans:
        records = set(range(start, start + count))
        clash = bool(records & taken) if count else start in empties
        if clash:
            with pytest.raises(BadBatch):
                ranges.add(start, start + count)
        else:
            ranges.add(start, start + count)
            taken |= records
            if not count:
                empties.add(start)
    assert all(a < b for a, b in zip(ranges.ends, ranges.starts[1:])), "disjoint, sorted, merged when touching"
    assert sum(e - s for s, e in zip(ranges.starts, ranges.ends)) == len(taken)


def _union(spans) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted((s, s + c) for s, c in spans if c):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [tuple(m) for m in merged]


def test_a_range_covered_by_the_union_of_merged_ranges_is_skipped_whatever_the_batch_size(connection, namespace):
    """A resume with another batch size: 0:100 and 100:100 were merged, 0:200 and 50:100 are not merged again,
    100:150 (partly merged) is merged whole, and changes nothing but the duplicate count."""
    from core.storage.store import Store

    store = Store(connection, namespace)
    users = make_users(250, "cover")
    attempt = store.begin_attempt(FILE_ID, state="streaming")
    for start in (0, 100):
        store.merge_batch(FILE_ID, attempt, f"{start}:100", store.reserve_seq(100), users[start:start + 100], "email")
    assert store.applied_ranges(FILE_ID) == [(0, 200)]
    for span, part in (("0:200", users[:200]), ("50:100", users[50:150])):
        assert store.merge_batch(FILE_ID, attempt, span, store.reserve_seq(len(part)), part, "email")["already_merged"]
    partly = store.merge_batch(FILE_ID, attempt, "100:150", store.reserve_seq(150), users[100:], "email")
    assert (partly["already_merged"], partly["new"], partly["duplicate"]) == (False, 50, 100)
    assert store.applied_ranges(FILE_ID) == [(0, 250)] and store.count() == 250


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 12)), max_size=12),
       st.tuples(st.integers(0, 60), st.integers(1, 30)))
def test_merged_ranges_keep_their_union_and_skip_exactly_what_it_covers(connection, namespace, spans, query):
    from core.storage.store import Store

    store = Store(connection, namespace)
    report = uuid.uuid4().hex
    attempt = store.begin_attempt(report, state="streaming")
    for start, count in spans:
        store.merge_batch(report, attempt, f"{start}:{count}", store.reserve_seq(1), [], "email")
    union = _union(spans)
    assert store.applied_ranges(report) == union
    start, count = query
    covered = any(a <= start and start + count <= b for a, b in union) or (start, count) in spans
    result = store.merge_batch(report, attempt, f"{start}:{count}", store.reserve_seq(1), [], "email")
    assert result["already_merged"] == covered
    store.forget_report(report)


def test_a_notice_records_an_unreadable_source_under_its_name(send):
    """A header without a fingerprint plus a trailer with the damage: what the watcher sends for a FIFO, a
    folder or a link out of the drop folder. The server is the one writer of that report too."""
    notice = users_pb2.UserBatch(source="pipe.json", header=users_pb2.SourceHeader(name="some/where/pipe.json"),
                                 trailer=users_pb2.SourceTrailer(records=0, damage="a FIFO, not a regular file\nmore"))
    report = send([notice])
    assert report.state == "rejected" and not report.status and report.file_id == "refused-pipe.json"
    stored = send.runtime.store.report("refused-pipe.json")
    assert stored["state"] == "rejected" and stored["name"] == "pipe.json"
    assert stored["damage"] == "a FIFO, not a regular file"


@pytest.mark.parametrize("fields", [dict(users_json=orjson.dumps(make_users(1, "n"))),
                                    dict(trailer=users_pb2.SourceTrailer(records=3, damage="cut")),
                                    dict(trailer=users_pb2.SourceTrailer(records=0, damage="  "))])
def test_a_notice_that_carries_records_or_no_reason_is_invalid_argument(send, fields):
    fields.setdefault("trailer", users_pb2.SourceTrailer(records=0, damage="unreadable"))
    with pytest.raises(grpc.RpcError) as refused:
        send([users_pb2.UserBatch(source="n.json", header=users_pb2.SourceHeader(name="n.json"), **fields)])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "notice" in refused.value.details()
    assert send.runtime.store.reports() == []


def test_a_source_given_up_by_its_sender_is_rejected_and_kept_in_quarantine(send):
    """send_rejected: header, a trailer with the reason and no records, then the bytes for the copy."""
    import hashlib
    import io

    from core.intake.client import Source, UsersClient

    data = orjson.dumps(make_users(3, "given-up"))
    runtime = send.runtime
    source = Source(io.BytesIO(data), len(data), hashlib.blake2b(data, digest_size=16).hexdigest(), data)
    with UsersClient(f"127.0.0.1:{runtime.server.port}", timeout=60) as client:
        result = client.send_rejected("given-up.json", source, "set aside after 3 failed attempts: a bug")
        again = client.send_rejected("copy.json", source, "set aside after 3 failed attempts: a bug")
    assert result.state == "rejected" and again.state == "already ingested"
    report = runtime.store.report(source.fingerprint)
    assert report["state"] == "rejected" and report["damage"].startswith("set aside after 3")
    assert (runtime.settings.data_dir / "quarantine" / "given-up.json").read_bytes() == data
    assert runtime.store.count() == 0


BATCHES = 5


@pytest.fixture
def held_runtime(runtime_factory):
    """No workers, batches of 2: a test merges each stream's jobs itself, in the order it chooses."""
    return runtime_factory(watch=False, workers=0, batch_size=2)


def _merge_in_order(runtime, order: list[int], legacy: bool = False) -> str:
    """Merge the queued batches in this order (an index twice: a retry); the report's id. legacy: the client
    stream's batches as a release before 2026-12-03 named them ("<ordinal>:<first record>")."""
    jobs = runtime.queue.get_jobs()
    runtime.queue.empty()
    # a job carries one batch, or several of one stream (merge_batches): each is merged on its own here
    batches = [batch for job in jobs for batch in (job.args[0] if isinstance(job.args[0], list) else [job.args[0]])]
    assert len(batches) == BATCHES, [job.id for job in jobs]
    if legacy:
        batches = [dict(batch, span=":".join(batch["span"].split(":")[:2])) for batch in batches]
    done: set[int] = set()
    for index in order:
        batch = batches[index]
        result = runtime.store.merge_staged(batch["report"], batch["attempt"], batch["span"], batch["seq"],
                                            batch["blob"], batch["key"])
        assert result["already_merged"] == (index in done), f"batch {batch['span']} in order {order}"
        done.add(index)
    return batches[0]["report"]


@pytest.mark.parametrize("rpc", ["SendUserInfoClientStream", "SendUserInfoClientStream queued by an older release",
                                 "SendUserBatches", "SendUserBatches with a file"])
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None, max_examples=25)
@given(order=st.permutations(range(BATCHES)), retries=st.lists(st.integers(0, BATCHES - 1), max_size=3),
       data=st.data())
def test_a_streams_batches_merged_in_any_order_are_all_stored(held_runtime, rpc, order, retries, data):
    """Workers finish batches out of order, and RQ may run one again. A client stream's batch was once named
    "<ordinal>:<first record>", which the merge read as a record range: batch 3 ("3:6", records 3-8) was taken
    for merged once batches 2 and 4 were (records 2-11), and its users were lost (seen as 8,000 of the seed
    client's 9,000 users). Every batch is merged once, a retry changes nothing, and the report completes."""
    runtime = held_runtime
    order = list(order)
    for again in retries:  # a retry comes after the batch's first run, anywhere later
        order.insert(data.draw(st.integers(order.index(again) + 1, len(order))), again)
    before = runtime.store.count()
    users = make_users(2 * BATCHES, uuid.uuid4().hex[:12])
    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        if rpc.startswith("SendUserInfoClientStream"):
            reply = stub.SendUserInfoClientStream(iter(users_pb2.UserRequest(**u) for u in users), timeout=60)
            assert reply.message == f"accepted {2 * BATCHES}, rejected 0"
        else:
            file = dict(file_id=uuid.uuid4().hex) if rpc.endswith("file") else {}
            reply = stub.SendUserBatches(iter(batch(users[i:i + 2], index=i // 2, first_record=i, **file)
                                              for i in range(0, 2 * BATCHES, 2)), timeout=60)
            assert reply.accepted == 2 * BATCHES
    report = _merge_in_order(runtime, order, legacy=rpc.endswith("older release"))
    assert runtime.store.count() == before + 2 * BATCHES
    final = runtime.store.report(report)
    assert (final["batches_done"], final["new"]) == (BATCHES, 2 * BATCHES), final
    if not rpc.endswith("file"):  # a file's report completes with its sender's trailer, not sent here
        assert final["state"] == "merged", final
