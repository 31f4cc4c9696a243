"""Jobs read from Redis are data, never instructions.

Whoever can write to Redis can forge a job hash with every field RQ knows. Each kind is forged here with
plain RQ (as an attacker would), a real worker of ours runs the queue, and the test asserts nothing named in
a job was imported or called, no HTTP request left the worker, and no other job was released onto any queue.
"""

from __future__ import annotations

import http.server
import sys
import threading

import pytest
from rq import Callback, Queue, Repeat, Retry
from rq.job import Dependency, Job, JobStatus
from rq.registry import DeferredJobRegistry, FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry
from rq.webhook import Webhook

from core.queue.taskqueue import RETRY, JSONSerializer, SafeJob, make_worker

CANARY = "tests.job_canary"


class Listener:
    """A local HTTP server that counts every request (webhooks would land here)."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self):
                outer.requests.append((self.command, self.path, dict(self.headers)))
                self.send_response(200)
                self.end_headers()

            do_GET = do_POST = _any

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener():
    served = Listener()
    yield served
    served.close()


@pytest.fixture
def rq_cleanup(connection, namespace):
    """RQ keys carry the namespace (queue name, job ids, worker name): delete them all afterwards."""
    yield
    for key in list(connection.scan_iter(match=f"*{namespace}*", count=1000)):
        connection.delete(key)


def hooks(url: str) -> list[Webhook]:
    headers = {"X-Attacker": "chosen", "Authorization": "Bearer stolen"}
    return [Webhook(f"{url}/finished", "finished", method="POST", headers=headers),
            Webhook(f"{url}/finished-get", "finished", method="GET"),
            Webhook(f"{url}/failed", "failed", method="POST", headers=headers),
            Webhook(f"{url}/failed-get", "failed", method="GET")]


def callbacks() -> dict:
    return {"on_success": Callback(f"{CANARY}.callback"), "on_failure": Callback(f"{CANARY}.callback"),
            "on_stopped": Callback(f"{CANARY}.callback")}


@pytest.mark.parametrize("mode", ["inline", "fork"])
def test_forged_jobs_are_never_acted_on(connection, namespace, tmp_path, monkeypatch, listener, rq_cleanup, mode):
    canary = tmp_path / "canary"
    monkeypatch.setenv("SWORDSEC_CANARY", str(canary))
    forger = Queue(namespace, connection=connection, serializer=JSONSerializer)
    victim = Queue(f"{namespace}-victim", connection=connection, serializer=JSONSerializer)
    every = dict(webhooks=hooks(listener.url), meta={"py/object": f"{CANARY}.run", "__reduce__": "os.system"},
                 **callbacks())

    # A function outside ours, with everything RQ can hang on a job, and many retries.
    foreign = forger.enqueue(f"{CANARY}.run", job_id=f"{namespace}-foreign", retry=Retry(max=50), **every)
    # `os.system` itself: refused by name, so nothing is imported or run.
    system = forger.enqueue("os.system", f"touch {canary}-system", job_id=f"{namespace}-system", **every)
    # Our own function, succeeding: success callback, finished webhooks, a repeat and delayed retries.
    ours = forger.enqueue("core.queue.jobs.drain_inbox", namespace, job_id=f"{namespace}-ours", repeat=Repeat(times=5),
                          retry=Retry(max=50, interval=[60]), **every)
    # Our own function, failing (its batch is malformed): failure callback, failed webhooks, 50 retries.
    failing = forger.enqueue("core.queue.jobs.merge_batch", {"namespace": namespace}, job_id=f"{namespace}-failing",
                             retry=Retry(max=50), **every)
    # Dependents parked on other queues, which a finished or failed job would release.
    after_ours = victim.enqueue(f"{CANARY}.run", job_id=f"{namespace}-after-ours", depends_on=ours)
    after_failing = victim.enqueue(f"{CANARY}.run", job_id=f"{namespace}-after-failing",
                                   depends_on=Dependency([failing], allow_failure=True))
    # A job of ours that depends on a job never done: it is data too, and runs as what it is.
    worker = make_worker(connection, namespace, name=f"{namespace}-worker", mode=mode)
    worker.work(burst=True)

    assert not canary.exists(), f"something named in a job was imported or called: {sorted(canary.iterdir())}"
    assert not (tmp_path / "canary-system").exists()
    assert CANARY not in sys.modules
    assert listener.requests == [], "a worker sent a webhook"
    # Nothing was released onto another queue; the dependents are still parked, never run.
    assert len(victim) == 0
    for job in (after_ours, after_failing):
        assert Job.fetch(job.id, connection=connection, serializer=JSONSerializer).get_status() == JobStatus.DEFERRED
    assert set(DeferredJobRegistry(victim.name, connection=connection).get_job_ids()) == {after_ours.id,
                                                                                        after_failing.id}
    # Refused jobs fail once, with the reason, and are not retried; ours ran once (no repeat, no scheduler).
    failed = FailedJobRegistry(namespace, connection=connection, serializer=JSONSerializer, job_class=SafeJob)
    assert {foreign.id, system.id, failing.id} <= set(failed.get_job_ids())
    for job in (foreign, system):
        fetched = SafeJob.fetch(job.id, connection=connection, serializer=JSONSerializer)
        assert "is not a swordsec job function" in (fetched.latest_result().exc_string or "")
        assert len(fetched.results()) == 1
    # Failures: the two refused jobs once each, ours at most 1 + RETRY.max times whatever the job asked.
    worker.refresh()
    assert worker.failed_job_count == 2 + 1 + RETRY.max
    assert ours.id in FinishedJobRegistry(namespace, connection=connection).get_job_ids()
    assert len(SafeJob.fetch(ours.id, connection=connection, serializer=JSONSerializer).results()) == 1
    assert ScheduledJobRegistry(namespace, connection=connection).count == 0
    assert len(forger) == 0


def test_a_forged_job_reads_as_plain_data(connection, namespace, listener, rq_cleanup):
    """Fetching a forged job (the console does, to show it) resolves nothing and exposes no action."""
    forger = Queue(namespace, connection=connection, serializer=JSONSerializer)
    forged = forger.enqueue(f"{CANARY}.run", job_id=f"{namespace}-forged", webhooks=hooks(listener.url),
                            retry=Retry(max=1000, interval=[5]), repeat=Repeat(times=9), **callbacks())
    job = SafeJob.fetch(forged.id, connection=connection, serializer=JSONSerializer)
    assert job.webhooks == [] and job.success_callback is None and job.failure_callback is None
    assert job.stopped_callback is None and job.repeats_left is None and job.retry_intervals is None
    assert job.retries_left == RETRY.max and not job.should_retry  # refused jobs are never retried
    assert job.dependent_ids == [] and job.rate_limit_key is None
    with pytest.raises(RuntimeError, match="is not a swordsec job function"):
        job.func  # noqa: B018
    job.send_webhooks(JobStatus.FAILED, exc_string="x")
    assert listener.requests == [] and CANARY not in sys.modules


def test_a_job_queued_before_the_role_packages_still_runs(connection, namespace, rq_cleanup):
    """A job queued by a version whose job functions lived in `core.jobs` resolves to today's functions."""
    from core.queue import jobs

    forger = Queue(namespace, connection=connection, serializer=JSONSerializer)
    for old, function in (("core.jobs.merge_batch", jobs.merge_batch), ("core.jobs.drain_inbox", jobs.drain_inbox)):
        queued = forger.enqueue(old, namespace, job_id=f"{namespace}-{old.rsplit('.', 1)[1]}")
        job = SafeJob.fetch(queued.id, connection=connection, serializer=JSONSerializer)
        assert job.refusal() is None and job.func is function
