"""Batches that ride one job (merge_batches): grouped only while jobs wait, each batch merged exactly once,
through a crash of the worker that held the group and through a retry that finds part of it merged."""

from __future__ import annotations

import os
import signal

import pytest
from rq.job import Job

from core.queue.jobs import merge_batches
from core.queue.taskqueue import JSONSerializer, SafeJob
from core.service.server import Intake
from core.storage.store import Store
from tests.conftest import copy_challenge, make_users, stream_in_background, wait_for, wait_pipeline
from tests.queue import test_workers
from tests.queue.test_workers import assert_exactly_once, started_pid

gated = test_workers.gated  # the fixture: every merge job waits at a gate the test opens


def queued_jobs(runtime) -> list[Job]:
    queue = runtime.queue
    ids = [i.decode() for i in queue.connection.lrange(queue.key, 0, -1)]
    return [job for job in SafeJob.fetch_many(ids, connection=queue.connection, serializer=JSONSerializer) if job]


def batches_of(job: Job) -> int:
    return len(job.args[0]) if job.func_name.endswith("merge_batches") else 1


def test_a_stream_behind_waiting_jobs_is_grouped_and_every_user_is_merged_once(runtime_factory, tmp_path, gated):
    runtime = runtime_factory(watch=False, workers=1, batch_size=50, max_batch_users=50)
    [path] = copy_challenge(tmp_path / "drop", {"4.json"})
    report_id, _ = runtime.watcher.ingest(path)  # 1,000 users: 20 batches, the first held at the gate
    wait_for(lambda: started_pid(gated), message="the first batch to start")
    jobs = queued_jobs(runtime)
    sizes = [batches_of(job) for job in jobs]
    # While fewer than GROUP_WHEN_QUEUED jobs waited, each batch went alone (the worker would otherwise idle);
    # behind them, the stream's batches rode jobs of up to GROUP_BATCHES, the rest at the stream's end.
    assert 1 + sum(sizes) == 20, sizes  # the one at the gate, and every other batch once
    assert max(sizes) == Intake.GROUP_BATCHES and len(jobs) <= 5, sizes
    grouped = next(job for job in jobs if batches_of(job) > 1)
    assert grouped.description.startswith(f"merge {50 * batches_of(grouped)} users in {batches_of(grouped)} batches")
    # What the console's queue view counts and what the stop waits for: every queued user, grouped or not.
    assert runtime.pending_users() == 1000
    gated.unlink()
    runtime.wait_merged([report_id], timeout=60)
    assert_exactly_once(runtime, 1000)
    report = runtime.store.report(report_id)
    assert report["state"] == "merged" and report["batches_done"] == report["batches_total"] == 20, report


@pytest.mark.parametrize("mode", ["inline", "fork"])
def test_a_worker_killed_holding_a_group_loses_and_doubles_nothing(runtime_factory, tmp_path, gated, mode,
                                                                   monkeypatch):
    monkeypatch.setattr(Intake, "GROUP_WHEN_QUEUED", 0)  # group from the first batch: the first job is a group
    runtime = runtime_factory(watch=False, workers=1, worker_mode=mode, batch_size=50, max_batch_users=50)
    [path] = copy_challenge(tmp_path / "drop", {"5.json"})
    report_id, _ = runtime.watcher.ingest(path)
    horse = wait_for(lambda: started_pid(gated), message="the first group to start")
    assert [batches_of(job) for job in queued_jobs(runtime)] == [8, 4]  # and the one at the gate: 8
    [worker] = runtime.supervisor.processes()
    os.kill(worker["pid"], signal.SIGKILL)
    if horse != worker["pid"]:
        os.kill(horse, signal.SIGKILL)
    wait_for(lambda: started_pid(gated) not in (None, horse), timeout=120, message="the group to run again")
    gated.unlink()
    runtime.wait_merged([report_id], timeout=60)
    assert_exactly_once(runtime, 1000)


def stage(store: Store, count: int, tag: str, first: int, attempt: str) -> dict:
    seq, blob = store.stage_batch(make_users(count, tag, first))
    return {"namespace": store.ns, "report": "f" * 32, "attempt": attempt, "span": f"{first}:{count}", "seq": seq,
            "key": "email", "source": "t.json", "blob": blob, "count": count}


class CurrentJob:
    def __init__(self, connection):
        self.connection = connection


def test_a_retry_finds_part_of_the_group_merged_and_merges_only_the_rest(connection, namespace, monkeypatch):
    store = Store(connection, namespace)
    monkeypatch.setattr("core.queue.jobs.get_current_job", lambda: CurrentJob(connection))
    attempt = store.begin_attempt("f" * 32, name="t.json")
    batches = [stage(store, 10, "g", first, attempt) for first in (0, 10, 20)]
    one = batches[0]
    store.merge_staged(one["report"], attempt, one["span"], one["seq"], one["blob"], "email")  # the crashed try
    assert merge_batches(batches) == {"new": 20, "updated": 0, "duplicate": 0, "batches": 2, "already_merged": 1}
    assert store.count() == 30
    assert merge_batches(batches) == {"new": 0, "updated": 0, "duplicate": 0, "batches": 0, "already_merged": 3}
    assert store.count() == 30


def test_a_batch_that_fails_does_not_keep_the_rest_of_its_group_from_merging(connection, namespace, monkeypatch):
    store = Store(connection, namespace)
    monkeypatch.setattr("core.queue.jobs.get_current_job", lambda: CurrentJob(connection))
    attempt = store.begin_attempt("f" * 32, name="t.json")
    batches = [stage(store, 10, "h", first, attempt) for first in (0, 10, 20)]
    connection.delete(batches[1]["blob"])  # its users gone before it was merged: the job must fail, loudly
    with pytest.raises(RuntimeError, match="are missing"):
        merge_batches(batches)
    assert store.count() == 20  # the two others are in


def test_the_backlog_bound_counts_the_batches_of_grouped_jobs_not_the_jobs(runtime_factory):
    # No worker and no byte bound in reach: only --max-backlog can hold the stream, at 10 batches, whereas 10 jobs
    # of up to 8 batches would let 80 through.
    runtime = runtime_factory(watch=False, workers=0, max_backlog=10, batch_size=50, max_batch_users=50)
    batches = [make_users(50, f"k{n}-") for n in range(40)]
    sender, result = stream_in_background(runtime, batches, "backlog")
    staged = runtime.store.key("staged")
    wait_for(lambda: runtime.store.redis.zcard(staged) >= 10, message="the backlog to fill")
    for _ in range(10):  # held, with the batches it held for a group sent to the queue for the workers
        sender.join(0.2)
        waiting = runtime.store.redis.zcard(staged)
        assert waiting <= 11 and runtime.pending_users() == 50 * waiting
    assert sender.is_alive()
    assert any(batches_of(job) > 1 for job in queued_jobs(runtime))
    runtime.supervisor.scale(1)
    sender.join(120)
    assert result["reply"].accepted == 50 * len(batches)
    wait_pipeline(runtime, lambda: runtime.store.count() == 50 * len(batches), 120, message="every batch merged")
