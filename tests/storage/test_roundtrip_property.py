"""Property tests: any Unicode text in any field comes out of all_users.json byte-exact (as normalised),
through the codec and the store, and through every RPC of the wire; any UserRequest gets an answer.

Lone surrogates are left out: they cannot be encoded in UTF-8, so no JSON file or protobuf holds one.
"""

from __future__ import annotations

import json
import uuid

import grpc
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import USER_FIELDS
from core.records import RecordError, merge_key, normalise
from core.storage.store import Store
from protobufs import users_pb2, users_pb2_grpc
from tests.conftest import wait_for

NASTY = list("\t\n\r\x00\x1f\x7f\u2028\u2029\"\\'/{}[],:\ufeff\u00a0 😀")
PIECES = ["\\u0000", "\\t", "\r\n", "tab\tbed@x.com", "\t\t\t"]
TEXT = st.lists(st.one_of(st.text(st.one_of(st.characters(codec="utf-8"), st.sampled_from(NASTY)), max_size=12),
                          st.sampled_from(PIECES)), max_size=3).map("".join)
INT32 = st.integers(-(2**31), 2**31 - 1)
USER = st.fixed_dictionaries({"id": INT32, **{name: TEXT for name in USER_FIELDS[1:]}})
FIXTURES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                    deadline=None)


def lines(path) -> set[bytes]:
    """all_users.json is "[", then one user per line (a bucket's last one followed by spaces), then "]"."""
    return {line.rstrip(b", ") for line in path.read_bytes().split(b"\n")[1:-2]}


def expected(records: list[dict]) -> dict[str, bytes]:
    """Latest wins by merge key, in the order sent; each user as the export must write it."""
    users: dict[str, bytes] = {}
    for record in records:
        user = normalise(record)
        users[merge_key(user)] = orjson.dumps(user)
    return users


@pytest.mark.slow
@FIXTURES
@given(batch=st.lists(USER, max_size=6), unary=st.lists(USER, max_size=4))
def test_any_text_round_trips_through_codec_store_and_export(connection, namespace, tmp_path, batch, unary):
    store = Store(connection, namespace)
    store.clear()
    attempt = store.begin_attempt("f", state="streaming")
    store.merge_batch("f", attempt, f"0:{len(batch)}", store.reserve_seq(max(1, len(batch))),
                      [normalise(u) for u in batch], "email")
    for user in unary:
        store.push_unary(normalise(user), "email")
    store.drain_inbox()
    info = store.export(tmp_path / "all_users.json")
    want = expected(batch + unary)
    assert info["undecodable"] == 0 and info["count"] == len(want)
    assert lines(tmp_path / "all_users.json") == set(want.values())
    json.loads((tmp_path / "all_users.json").read_text())  # and the whole file is valid JSON


@settings(FIXTURES, max_examples=12)
@given(users=st.lists(USER, min_size=4, max_size=12))
def test_any_text_round_trips_through_every_rpc(runtime_factory, users):
    runtime = _runtime(runtime_factory)
    tag = uuid.uuid4().hex
    # every user distinct across examples (the store is shared); the email keeps its arbitrary text
    users = [dict(u, email=f"{u['email']}#{tag}{n}") for n, u in enumerate(users)]
    quarter = max(1, len(users) // 4)
    unary, stream, as_json, as_pb = (users[:quarter], users[quarter:2 * quarter], users[2 * quarter:3 * quarter],
                                     users[3 * quarter:])
    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
        stub = users_pb2_grpc.UsersStub(channel)
        for user in unary:
            assert stub.SendUserInfo(users_pb2.UserRequest(**user), timeout=30).status
        assert stub.SendUserInfoClientStream(iter([users_pb2.UserRequest(**u) for u in stream]), timeout=30).status
        report = stub.SendUserBatches(iter([
            users_pb2.UserBatch(users_json=orjson.dumps(as_json), source="p.json"),
            users_pb2.UserBatch(users=[users_pb2.UserRequest(**u) for u in as_pb], first_record=len(as_json)),
        ]), timeout=30)
        assert report.accepted == len(as_json) + len(as_pb)
    want = set(expected(users).values())

    def all_there():
        runtime.exporter.write()
        return want <= lines(runtime.settings.output_path)

    wait_for(all_there, message="every user of the example in all_users.json")
    assert runtime.exporter.last["undecodable"] == 0


@settings(FIXTURES, max_examples=40)
@given(user=USER, oversize=st.sampled_from([None] * 8 + list(USER_FIELDS[1:])))
def test_any_user_request_gets_an_answer_and_an_accepted_one_is_exported(runtime_factory, user, oversize):
    if oversize:  # now and then one field over the record limit: a clear refusal, not an error
        user = dict(user, **{oversize: "x" * 70000})
    runtime = _runtime(runtime_factory)
    user = dict(user, email=f"{user['email']}#{uuid.uuid4().hex}")
    with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
        answer = users_pb2_grpc.UsersStub(channel).SendUserInfo(users_pb2.UserRequest(**user), timeout=30)
    try:
        line = orjson.dumps(normalise(user))
    except RecordError as error:
        assert not answer.status and answer.message == str(error) and "\n" not in answer.message
        return
    assert answer.status and answer.message == "ok"

    def there():
        runtime.exporter.write()
        return line in lines(runtime.settings.output_path)

    wait_for(there, message="the accepted user in all_users.json")


_RUNTIMES: dict = {}


def _runtime(factory):
    """One runtime per test function: Hypothesis runs many examples on one set of fixtures."""
    runtime = _RUNTIMES.get(id(factory))
    if runtime is None:
        _RUNTIMES.clear()
        runtime = _RUNTIMES[id(factory)] = factory(watch=False, workers=1)
    return runtime
