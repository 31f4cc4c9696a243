"""The export's two ways of reading every bucket (Store.iter_buckets): walk.lua, and native HGETALLs pipelined
(_fetch_buckets, from NATIVE_FROM users). Both must yield the same buckets and users in the same order, leave out
the same damaged values, stop on a namespace reset, and leave the connection usable when a read fails half-way.
"""

from __future__ import annotations

import orjson
import pytest
import redis

from core.storage import store as store_module
from core.storage.codec import StaleDictionary, bucket_of
from core.storage.store import Store
from tests.conftest import make_users
from tests.storage.test_store_integrity import merge

PATHS = pytest.mark.parametrize("native", [False, True], ids=["walk.lua", "native"])


def walked(store: Store, native: bool, chunk: int = 50) -> tuple[list, list]:
    bad: list = []
    buckets = list(store.iter_buckets(chunk, lambda key, reason: bad.append(key), native=native))
    return buckets, bad


def test_both_reads_yield_the_same_buckets_users_and_damaged_values(connection, namespace):
    store = Store(connection, namespace)
    merge(store, "a", make_users(700, "same"))
    damaged = "damaged@example.org"
    connection.hset(store.bucket_key(damaged), damaged, b'7\t[0,"a"]')
    walk, native = walked(store, False), walked(store, True)
    assert walk == native
    buckets, bad = native
    assert bad == [damaged.encode()]
    assert [number for number, _ in buckets] == sorted({bucket_of(u["email"]) for u in make_users(700, "same")}
                                                       | {bucket_of(damaged)})
    assert sorted(orjson.loads(user)["email"] for _, users in buckets for user in users) == sorted(
        u["email"] for u in make_users(700, "same"))


def test_the_native_read_is_the_default_from_native_from_users(connection, namespace, monkeypatch):
    store = Store(connection, namespace)
    merge(store, "a", make_users(40, "size"))
    reads: list = []
    real = store._fetch_buckets
    monkeypatch.setattr(store, "_fetch_buckets", lambda numbers: reads.append(numbers) or real(numbers))
    monkeypatch.setattr(store_module, "NATIVE_FROM", 41)
    assert len(list(store.iter_users())) == 40 and reads == []
    monkeypatch.setattr(store_module, "NATIVE_FROM", 40)
    assert len(list(store.iter_users())) == 40 and reads


@PATHS
def test_a_reset_during_either_read_stops_it(connection, namespace, native):
    reader = Store(connection, namespace)
    merge(reader, "a", make_users(3000, "before"))
    walk = reader.iter_buckets(chunk=10, native=native)
    next(walk)
    reader.clear()
    fresh = [u | {"gender": "Agender", "agent": "Other/2.0", "country": "Chile"} for u in make_users(3000, "after")]
    merge(Store(connection, namespace), "b", fresh)
    with pytest.raises(StaleDictionary):
        list(walk)


def test_a_native_read_that_fails_half_way_leaves_the_connection_usable(connection, namespace):
    store = Store(connection, namespace)
    merge(store, "a", make_users(200, "typed"))
    connection.delete(store.bucket_prefix + "5")
    connection.set(store.bucket_prefix + "5", "not a hash")  # every reply after it is still to be read
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store._fetch_buckets(range(0, 64))
    # the pool hands the same connection out again: left with unread replies, it would answer with those
    assert connection.type(store.bucket_prefix + "5") == b"string"
    assert connection.get(store.bucket_prefix + "5") == b"not a hash"
    connection.delete(store.bucket_prefix + "5")
    assert list(store.iter_users(native=True)) == list(store.iter_users(native=False))
