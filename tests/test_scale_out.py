"""Scale-out for real: a server with no local workers, and `swordsec-console worker` processes standing in for
other machines, all on one Redis. Workers join and leave (SIGTERM, and SIGKILL of the whole process group,
as when a machine or container dies) in the middle of an ingest, and no user is lost or duplicated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job

from core.records import merge_key
from core.taskqueue import JSONSerializer
from tests.conftest import copy_challenge, wait_for

EXPECTED_USERS = 9977  # ten files of 1,000; 6.json is cut inside record 978
# A job orphaned by a SIGKILLed machine is recovered only by RQ's maintenance on a surviving worker: after
# its heartbeat lapses when it had started, or by the intermediate-queue cleanup when it had just been
# dequeued. Measured here: 135-185 s for the latter. Allow for that.
RECOVERY_TIMEOUT = 330


def worker_command() -> list[str]:
    script = Path(sys.executable).with_name("swordsec-console")
    return [str(script), "worker"] if script.exists() else [sys.executable, "-m", "console.cli", "worker"]


class RemoteWorker:
    """One `swordsec-console worker` in its own session, like a process on another host."""

    def __init__(self, redis_url: str, namespace: str, log: Path):
        self.log = log
        # The URL goes in the environment: a password in argv would show in `ps` on that machine.
        env = dict(os.environ, REDIS_URL=redis_url)
        self.process = subprocess.Popen([*worker_command(), "--count", "1", "--namespace", namespace],
                                        env=env, stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill_machine(self) -> None:
        """SIGKILL every process of the group: supervisor, RQ worker and its work-horse mid-job."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def rq_worker(self, runtime) -> Worker | None:
        for worker in Worker.all(queue=runtime.queue, serializer=JSONSerializer):
            try:
                if os.getpgid(worker.pid) == self.process.pid:
                    return worker
            except ProcessLookupError:
                continue
        return None

    def kill_machine_mid_job(self, runtime) -> str:
        """Freeze the group until it is caught holding a job, then SIGKILL it: the job is surely orphaned."""
        worker = wait_for(lambda: self.rq_worker(runtime), 30, message="the doomed worker in Redis")

        def frozen_with_job():
            os.killpg(self.process.pid, signal.SIGSTOP)
            worker.refresh()
            job_id = worker.get_current_job_id()
            if job_id is not None and not unmerged(runtime, job_id):
                job_id = None  # caught after its merge: killing it now would orphan nothing
            if job_id is None:
                os.killpg(self.process.pid, signal.SIGCONT)
            return job_id

        job_id = wait_for(frozen_with_job, 60, interval=0.001, message="the worker to be caught mid-job")
        self.kill_machine()
        return job_id

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def remote_workers(redis_url, namespace, tmp_path):
    started: list[RemoteWorker] = []

    def start() -> RemoteWorker:
        worker = RemoteWorker(redis_url, namespace, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
    # A SIGKILLed machine leaves its work-horse's children nowhere; make sure none outlives the test.
    for worker in started:
        try:
            os.killpg(worker.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def unmerged(runtime, job_id: str) -> bool:
    """True while some user of a merge job's batch is not yet in the users hash (the store of record).

    Read from the job's own arguments and the users hash, not from job-id or bookkeeping layouts.
    """
    try:
        job = Job.fetch(job_id, connection=runtime.store.redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    batch = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    keys = [merge_key(user, batch.get("key", "email")) for user in batch.get("users", [])]
    return bool(keys) and None in runtime.store.redis.hmget(runtime.store.key("users"), keys)


def alive_workers(runtime) -> int:
    return len(Worker.all(queue=runtime.queue, serializer=JSONSerializer))


def read_users(path: Path) -> list[dict]:
    return orjson.loads(path.read_bytes())


def assert_every_user(runtime) -> None:
    users = read_users(runtime.settings.output_path)
    assert len(users) == EXPECTED_USERS
    assert len({u["email"].strip().lower() for u in users}) == EXPECTED_USERS
    assert runtime.store.count() == EXPECTED_USERS


def test_server_without_workers_and_two_remote_workers_get_every_user(runtime_factory, remote_workers, redis_url):
    runtime = runtime_factory(watch=False, workers=0)
    assert runtime.supervisor.alive_count() == 0
    first, second = remote_workers(), remote_workers()
    wait_for(lambda: alive_workers(runtime) == 2, 30, message="two remote workers to register")
    copy_challenge(runtime.settings.watch)
    summary = runtime.run_once()
    assert summary.files == 10 and summary.accepted == EXPECTED_USERS and summary.users == EXPECTED_USERS
    assert_every_user(runtime)
    # Both machines did work: each RQ worker records how many jobs it finished.
    counts = [w.successful_job_count for w in Worker.all(queue=runtime.queue, serializer=JSONSerializer)]
    assert len(counts) == 2 and all(c > 0 for c in counts), counts
    assert first.terminate() == 0 and second.terminate() == 0
    wait_for(lambda: alive_workers(runtime) == 0, 30, message="stopped workers to deregister")
    for worker in (first, second):
        log = worker.log.read_text(errors="replace")
        assert "redis" in log.lower()
        password = redis_url.partition("password=")[2]
        assert not password or password not in log


@pytest.mark.timeout(RECOVERY_TIMEOUT + 90)
def test_workers_joining_and_leaving_mid_ingest_lose_nothing(runtime_factory, remote_workers):
    # Small batches: 200 jobs, so workers come and go while most of the ingest is still queued.
    runtime = runtime_factory(watch=False, workers=0, batch_size=50)
    doomed = remote_workers()
    wait_for(lambda: alive_workers(runtime) == 1, 30, message="the first worker")
    copy_challenge(runtime.settings.watch)
    outcome: dict = {}

    def ingest():
        try:
            outcome["summary"] = runtime.run_once()
        except BaseException as error:  # reported by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=ingest, daemon=True)
    started = time.monotonic()
    thread.start()

    wait_for(lambda: runtime.store.count() > 0, 60, interval=0.01, message="merging to begin")
    joiner = remote_workers()  # joins mid-ingest
    wait_for(lambda: alive_workers(runtime) == 2, 30, message="the joining worker")
    wait_for(lambda: runtime.store.count() > 1000, 60, interval=0.01, message="a tenth of the users")
    orphan = doomed.kill_machine_mid_job(runtime)  # leaves without warning, holding a job
    orphan_state = Job.fetch(orphan, connection=runtime.store.redis, serializer=JSONSerializer).get_status()
    killed_at_count = runtime.store.count()
    killed_at = time.monotonic()
    third = remote_workers()
    wait_for(lambda: runtime.store.count() > killed_at_count + 1000, 60, interval=0.01,
             message="progress after the kill")
    assert joiner.terminate() == 0  # leaves politely: its current job finishes first

    thread.join(RECOVERY_TIMEOUT)
    assert not thread.is_alive(), (f"ingest did not finish in {RECOVERY_TIMEOUT} s; "
                                   f"{runtime.store.count()} users merged, {len(runtime.queue)} jobs queued")
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary.accepted == EXPECTED_USERS and summary.users == EXPECTED_USERS
    assert_every_user(runtime)
    print(f"\nscale-out churn: all {EXPECTED_USERS} users in {time.monotonic() - started:.1f} s; a worker was "
          f"SIGKILLed holding job {orphan} ({orphan_state.value}) at {killed_at_count} users; "
          f"done {time.monotonic() - killed_at:.1f} s after the kill")
    assert third.terminate() == 0
