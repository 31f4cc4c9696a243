"""The exporter waits on the store's wake list, not on a timer: a worker announces each merge job once RQ has
recorded it done, and the waiting exporter writes all_users.json at once (core/storage/exporter.py)."""

from __future__ import annotations

import json

from rq.job import JobStatus

from core.queue import taskqueue
from core.queue.taskqueue import enqueue_batch, make_queue, make_worker
from core.storage import exporter as exporter_module
from core.storage.exporter import Exporter
from core.storage.store import Store
from tests.conftest import make_users, wait_for
from tests.storage.test_viewfile import merge


def _batch(store: Store, users: list[dict], blob: str | None = None) -> dict:
    seq, staged = store.stage_batch(users)
    return {"namespace": store.ns, "report": "e" * 32, "attempt": "a", "span": f"{seq}:{len(users)}", "seq": seq,
            "key": "email", "source": "wake.json", "blob": blob or staged, "count": len(users)}


def test_a_worker_announces_a_merge_job_only_once_rq_has_recorded_it_done(connection, namespace, monkeypatch):
    store, queue = Store(connection, namespace), make_queue(connection, namespace)
    seen = []  # at each announcement: jobs still in the started registry, and the job's recorded status

    def recording(client, name):
        seen.append((name, queue.started_job_registry.count, job.get_status(refresh=True)))
        real(client, name)

    real = taskqueue.announce_change
    monkeypatch.setattr(taskqueue, "announce_change", recording)
    job = enqueue_batch(queue, _batch(store, make_users(3, "wake")))
    assert connection.exists(store.wake_key) == 0
    make_worker(connection, namespace).work(burst=True)
    assert seen == [(namespace, 0, JobStatus.FINISHED)], "announced after RQ recorded the job done"
    assert connection.lrange(store.wake_key, 0, -1) == [b"1"]
    assert 0 < connection.ttl(store.wake_key) <= 60, "the token expires when nobody waits for it"

    job = enqueue_batch(queue, _batch(store, [], blob=f"{namespace}:batch:gone"))  # fails on every try
    make_worker(connection, namespace).work(burst=True)
    assert len(seen) == 1, "a failed job announces nothing"


def test_a_waiting_exporter_writes_an_announced_merge_at_once_and_stops_at_once(connection, namespace, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(exporter_module, "WAKE_WAIT", 3600.0)  # only the token can end its wait
    store = Store(connection, namespace)
    merge(store, make_users(10, "before"))
    exporter = Exporter(store, tmp_path / "all_users.json", 0.05, idle=lambda: True)
    exporter.start()
    try:
        wait_for(lambda: exporter._written_version == store.version() and (tmp_path / "all_users.json").exists(),
                 message="the first export")
        merge(store, make_users(5, "after"), "g")
        store.announce_change()
        wait_for(lambda: len(json.loads((tmp_path / "all_users.json").read_bytes())) == 15,
                 message="the announced merge in all_users.json")
    finally:
        exporter.stop()
    assert not exporter._thread.is_alive(), "stop ended the wait on the wake list"


def test_an_exporter_that_never_ran_leaves_no_token(connection, namespace, tmp_path):
    """--once never starts the loop: its stop must not leave a key in Redis."""
    store = Store(connection, namespace)
    Exporter(store, tmp_path / "all_users.json", 0.05).stop()
    assert connection.exists(store.wake_key) == 0
