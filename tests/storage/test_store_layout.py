"""The compact user layout (core/storage/codec.py): buckets, the string dictionary, paging, and the upgrade of old data."""

from __future__ import annotations

import orjson
import redis

from core.storage import codec
from core.storage.store import Store
from tests.conftest import make_users


def merge(store: Store, report: str, users: list[dict]) -> dict:
    attempt = store.begin_attempt(report, state="streaming")
    return store.merge_batch(report, attempt, f"0:{len(users)}", store.reserve_seq(len(users)), users, "email")


def exported(store: Store) -> list[dict]:
    return [orjson.loads(raw) for raw in store.iter_users(chunk=1000)]


def test_users_come_back_exactly_as_merged(connection, namespace):
    store = Store(connection, namespace)
    users = make_users(300, "rt")
    users[5] |= {"agent": "", "country": "Türkiye ✓", "first_name": "tab\there"}
    assert merge(store, "f", users)["new"] == 300
    assert store.count() == 300
    by_email = {u["email"]: u for u in exported(store)}
    assert by_email == {u["email"]: u for u in users}
    # the repeated strings are stored once, not in every user
    assert connection.hlen(f"{namespace}:dict") == 5  # Male, Female, the agent, Turkey, Türkiye ✓
    stored = connection.hget(Store(connection, namespace).bucket_key(users[0]["email"]), users[0]["email"])
    assert b"Mozilla" not in stored and b"Turkey" not in stored


def test_strings_stay_literal_once_the_dictionary_is_full(connection, namespace, monkeypatch):
    monkeypatch.setattr(codec, "DICTIONARY_CAP", 3)
    store = Store(connection, namespace)
    users = make_users(40, "cap")
    for i, user in enumerate(users):
        user["agent"] = f"agent {i}"
    merge(store, "f", users)
    assert connection.llen(f"{namespace}:dict:list") == 3
    assert {u["email"]: u for u in exported(store)} == {u["email"]: u for u in users}


def test_a_cleared_dictionary_is_never_read_with_old_indexes(connection, namespace):
    """A process that cached indexes (a worker, the console) must not apply them to a new dictionary."""
    writer, reader = Store(connection, namespace), Store(connection, namespace)
    merge(writer, "a", make_users(10, "old"))
    assert len(exported(reader)) == 10
    reader.clear()
    fresh = make_users(10, "new")
    for user in fresh:
        user |= {"gender": "Agender", "agent": "Other/2.0", "country": "Chile"}
    merge(Store(connection, namespace), "b", fresh[:1])  # a new dictionary, built in another order
    merge(writer, "c", fresh)  # the writer's cached indexes belong to the cleared dictionary
    users = exported(reader)
    assert {(u["gender"], u["agent"], u["country"]) for u in users} == {("Agender", "Other/2.0", "Chile")}
    assert len(users) == 10


def test_a_writer_whose_every_string_is_cached_still_notices_a_cleared_dictionary(connection, namespace):
    writer = Store(connection, namespace)
    merge(writer, "a", make_users(10, "first"))
    writer.clear()
    other = Store(connection, namespace)
    tricky = make_users(1, "other")[0] | {"gender": "Turkey", "country": "Male"}  # new indexes, swapped
    merge(other, "b", [tricky])
    merge(writer, "c", make_users(10, "again"))  # every string cached: only merge.lua's epoch check saves it
    writer.push_unary(make_users(1, "unary")[0], "email")
    writer.drain_inbox()
    users = {u["email"]: u for u in exported(Store(connection, namespace))}
    expected = make_users(10, "again") + make_users(1, "unary") + [tricky]
    assert users == {u["email"]: u for u in expected}


def test_unary_users_are_encoded_the_same_way(connection, namespace):
    store = Store(connection, namespace)
    for user in make_users(5, "unary"):
        store.push_unary(user, "email")
    assert store.drain_inbox() == 5
    assert {u["email"]: u for u in exported(store)} == {u["email"]: u for u in make_users(5, "unary")}


def test_pages_walk_the_export_order(connection, namespace):
    store = Store(connection, namespace)
    merge(store, "f", make_users(95, "page"))
    whole = [u["email"] for u in exported(store)]
    paged = []
    for start in range(0, 100, 7):
        paged += [u["email"] for u in store.users_page(start, 7)]
    assert paged == whole and len(whole) == 95
    assert store.users_page(95, 7) == []


def test_latest_wins_even_when_the_older_batch_lands_last(connection, namespace):
    store = Store(connection, namespace)
    attempt = store.begin_attempt("f", state="streaming")
    old_seq, new_seq = store.reserve_seq(1), store.reserve_seq(1)
    user = make_users(1, "late")[0]
    store.merge_batch("f", attempt, "1:1", new_seq, [user | {"first_name": "Newer"}], "email")
    result = store.merge_batch("f", attempt, "0:1", old_seq, [user | {"first_name": "Older"}], "email")
    assert result["duplicate"] == 1
    assert exported(store)[0]["first_name"] == "Newer"


def test_users_of_the_first_layout_are_moved_on_start(connection, namespace):
    """Data written by the first release (one big hash, a rev hash and an order zset) is upgraded, not lost."""
    users = make_users(50, "legacy")
    connection.hset(f"{namespace}:users", mapping={u["email"]: orjson.dumps(u) for u in users})
    connection.hset(f"{namespace}:users:rev", mapping={u["email"]: i + 1 for i, u in enumerate(users)})
    connection.zadd(f"{namespace}:users:order", {u["email"]: 0 for u in users})
    store = Store(connection, namespace)
    assert store.upgrade_layout("email") == 50
    assert store.count() == 50
    assert {u["email"]: u for u in exported(store)} == {u["email"]: u for u in users}
    assert not connection.exists(f"{namespace}:users", f"{namespace}:users:rev", f"{namespace}:users:order")
    assert store.upgrade_layout("email") == 0


def test_the_embedded_redis_keeps_buckets_compact(embedded_broker, namespace):
    """The memory figure of bench/memory.py rests on buckets staying listpacks in the embedded Redis."""
    connection = redis.Redis.from_url(embedded_broker.url)
    try:
        store = Store(connection, namespace)
        merge(store, "f", make_users(2000, "compact"))
        buckets = {codec.bucket_of(u["email"]) for u in make_users(2000, "compact")}
        encodings = {connection.object("encoding", f"{namespace}:bucket:{b}") for b in buckets}
        assert encodings <= {b"listpack", b"ziplist"}
    finally:
        store.clear()
        connection.close()


def test_an_export_walk_stopped_early_leaves_no_fetch_thread(connection, namespace):
    """The console's filter stops reading at its match cap: the prefetching thread must end with it."""
    import threading

    store = Store(connection, namespace)
    merge(store, "f", make_users(60, "early"))
    walk = store.iter_users(chunk=5)
    assert len([next(walk) for _ in range(3)]) == 3
    walk.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("export-fetch")]


def test_users_of_the_16384_bucket_layout_are_moved_on_start_once(connection, namespace):
    """A store written before the buckets grew to 65,536 (users:<n>, n of 16,384) keeps every user, once."""
    import zlib

    store = Store(connection, namespace)
    users = make_users(500, "b16k")
    epoch, rows = store.codec.encode(users)
    for n, (user, row) in enumerate(zip(users, rows)):
        old = zlib.crc32(user["email"].encode()) % codec.LEGACY_BUCKETS
        connection.hset(f"{namespace}:users:{old}", user["email"], b"%d\t%s" % (n + 1, row))
    connection.set(f"{namespace}:users:count", 500)
    # a start interrupted half-way: some old buckets already moved, and one user merged anew since
    first = sorted(connection.scan_iter(match=f"{namespace}:users:[0-9]*", count=1000))[:40]
    for name in first:
        keys = connection.hkeys(name)
        store._rebucket(keys=[name, store.key("users", "count"), store.dirty_key],
                        args=[store.bucket_prefix, *[p for k in keys for p in (k, codec.bucket_of(k.decode()))]])
    newer = users[-1] | {"first_name": "Newer"}
    attempt = store.begin_attempt("f", state="streaming")
    store.merge_batch("f", attempt, "0:1", store.reserve_seq(1) + 1000, [newer], "email")
    assert store.upgrade_layout("email") > 0
    assert store.count() == 500
    assert {u["email"]: u for u in exported(store)} == {u["email"]: u for u in users[:-1] + [newer]}
    assert not list(connection.scan_iter(match=f"{namespace}:users:[0-9]*"))
    assert store.upgrade_layout("email") == 0


def test_an_email_equal_to_the_merge_key_is_stored_once(connection, namespace):
    """The bucket's field name is the merge key: the array marks the email instead of repeating it."""
    store = Store(connection, namespace)
    plain, mixed = make_users(1, "mark")[0], make_users(1, "Mark")[0] | {"email": " Mixed.Case@X.com"}
    merge(store, "f", [plain, mixed])
    stored = connection.hget(store.bucket_key(plain["email"]), plain["email"])
    assert plain["email"].encode() not in stored and b',0,' in stored
    from core.records import merge_key

    key = merge_key(mixed, "email")
    kept = connection.hget(store.bucket_key(key), key)
    assert b" Mixed.Case@X.com" in kept  # not the key: kept as sent
    assert {u["email"]: u for u in exported(store)} == {u["email"]: u for u in (plain, mixed)}
    assert store.users_page(0, 10) and all(isinstance(u["email"], str) for u in store.users_page(0, 10))
