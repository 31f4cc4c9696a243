"""The suite leaves the machine's Redis as it found it (tests/conftest.py Footprint)."""

from __future__ import annotations

import redis

from core.queue.taskqueue import make_queue
from tests.conftest import Footprint


def test_footprint_removes_new_keys_and_set_members_but_keeps_what_was_there(redis_url, namespace):
    client = redis.Redis.from_url(redis_url)
    before_key, shared = f"{namespace}:before", f"{namespace}:shared"
    client.set(before_key, "kept")
    client.sadd(shared, "old")
    try:
        footprint = Footprint(client)
        make_queue(client, namespace).enqueue("core.queue.jobs.drain_inbox", namespace)  # rq:queues gains a member
        client.sadd(shared, "new")
        client.set(f"{namespace}:after", "gone")
        keys, members = footprint.leftovers()
        assert f"{namespace}:after".encode() in keys and f"rq:queue:{namespace}".encode() in keys
        assert members[shared.encode()] == {b"new"}
        assert b"rq:queues" in members or b"rq:queues" in keys

        footprint.restore()

        assert footprint.leftovers() == (set(), {})
        assert client.get(before_key) == b"kept" and client.smembers(shared) == {b"old"}
        assert not client.sismember("rq:queues", f"rq:queue:{namespace}")
    finally:
        client.delete(before_key, shared)
        client.close()
