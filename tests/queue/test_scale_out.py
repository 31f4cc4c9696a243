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

from core.queue.jobs import FAILPOINT
from core.queue.taskqueue import JSONSerializer
from tests.conftest import copy_challenge, wait_for

EXPECTED_USERS = 9977  # ten files of 1,000; 6.json is cut inside record 978
# A job orphaned by a SIGKILLed machine is recovered only by RQ's maintenance on a surviving worker, once
# its heartbeat lapses (about 75 s with our settings). Allow generously for a loaded machine.
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
def test_workers_joining_and_leaving_mid_ingest_lose_nothing(runtime_factory, remote_workers, tmp_path, monkeypatch):
    """Deterministic churn: every merge job waits at a gate (core.queue.jobs failpoint) until the test opens it, so
    the doomed machine is surely killed holding an unmerged batch, and the others join and leave mid-ingest."""
    gate = tmp_path / "gate"
    gate.write_text("")
    monkeypatch.setenv(FAILPOINT, str(gate))
    runtime = runtime_factory(watch=False, workers=0, batch_size=200)
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
    marker = Path(str(gate) + ".started")
    horse = wait_for(lambda: marker.exists() and int(marker.read_text() or 0), 60, message="a batch held at the gate")
    joiner = remote_workers()  # joins mid-ingest
    wait_for(lambda: alive_workers(runtime) == 2, 30, message="the joining worker")
    killed_at = time.monotonic()
    doomed.kill_machine()  # leaves without warning, holding a batch: supervisor, worker and work-horse
    os.killpg(os.getpgid(horse), signal.SIGKILL) if _alive(horse) else None
    third = remote_workers()
    gate.unlink()  # the rest may now merge
    wait_for(lambda: runtime.store.count() > 3000, 60, message="progress after the kill")
    assert joiner.terminate() == 0  # leaves politely: its current job finishes first

    thread.join(RECOVERY_TIMEOUT)
    assert not thread.is_alive(), (f"ingest did not finish in {RECOVERY_TIMEOUT} s; "
                                   f"{runtime.store.count()} users merged, {len(runtime.queue)} jobs queued")
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary.accepted == EXPECTED_USERS and summary.users == EXPECTED_USERS
    assert_every_user(runtime)
    print(f"\nscale-out churn: all {EXPECTED_USERS} users in {time.monotonic() - started:.1f} s; "
          f"done {time.monotonic() - killed_at:.1f} s after a machine was killed holding a batch")
    assert third.terminate() == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
