"""Real worker processes: crashes mid-batch lose and duplicate nothing; foreign jobs never run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq import Callback
from rq.job import Job, JobStatus

from core.queue.jobs import FAILPOINT
from core.queue.taskqueue import JSONSerializer, make_queue
from tests.conftest import copy_challenge, wait_for


def started_pid(gate: Path) -> int | None:
    marker = Path(str(gate) + ".started")
    try:
        return int(marker.read_text())
    except (OSError, ValueError):
        return None


def assert_exactly_once(runtime, expected: int) -> None:
    users = json.loads(Path(runtime.exporter.write()["path"]).read_text())
    emails = [u["email"].casefold() for u in users]
    assert len(users) == expected and len(set(emails)) == expected


@pytest.fixture
def gated(tmp_path, monkeypatch) -> Path:
    """Every merge job blocks at this gate (after writing its pid) until the test removes it."""
    gate = tmp_path / "gate"
    gate.write_text("")
    monkeypatch.setenv(FAILPOINT, str(gate))
    return gate


def test_work_horse_killed_mid_batch_is_retried(runtime_factory, tmp_path, gated):
    runtime = runtime_factory(watch=False, workers=1, worker_mode="fork")
    [path] = copy_challenge(tmp_path / "drop", {"1.json"})
    report_id, _ = runtime.watcher.ingest(path)
    horse = wait_for(lambda: started_pid(gated), message="the batch to start")
    os.kill(horse, signal.SIGKILL)
    wait_for(lambda: started_pid(gated) not in (None, horse), message="RQ to retry the batch in a new work-horse")
    gated.unlink()
    runtime.wait_merged([report_id], timeout=60)
    assert_exactly_once(runtime, 1000)


@pytest.mark.parametrize("mode", ["inline", "fork"])
def test_whole_worker_killed_mid_batch_is_recovered_by_the_supervisor(runtime_factory, tmp_path, gated, mode):
    runtime = runtime_factory(watch=False, workers=1, worker_mode=mode)
    [path] = copy_challenge(tmp_path / "drop", {"2.json"})
    report_id, _ = runtime.watcher.ingest(path)
    horse = wait_for(lambda: started_pid(gated), message="the batch to start")
    [worker] = runtime.supervisor.processes()
    killed_at = time.monotonic()
    os.kill(worker["pid"], signal.SIGKILL)
    if horse != worker["pid"]:
        os.kill(horse, signal.SIGKILL)  # the machine is gone: its work-horse with it
    wait_for(lambda: started_pid(gated) not in (None, horse), timeout=120,
             message="the abandoned batch to run again within 2 minutes")
    print(f"recovered in {time.monotonic() - killed_at:.1f} s")
    gated.unlink()
    runtime.wait_merged([report_id], timeout=60)
    assert_exactly_once(runtime, 1000)


def test_worker_on_another_machine_dying_is_recovered_by_rq_maintenance(runtime_factory, tmp_path, gated, redis_url):
    """No supervisor sees this death (as with a worker on another host): RQ's own registry maintenance in
    a surviving worker must recover the batch, within 2 minutes thanks to our TTL and interval choices."""
    runtime = runtime_factory(watch=False, workers=0)
    env = dict(os.environ, REDIS_URL=redis_url)
    command = [sys.executable, "-m", "console.cli", "worker", "--count", "1", "--namespace", runtime.settings.namespace]
    doomed = subprocess.Popen(command, env=env, start_new_session=True)
    survivor = None
    try:
        [path] = copy_challenge(tmp_path / "drop", {"3.json"})
        report_id, _ = runtime.watcher.ingest(path)
        horse = wait_for(lambda: started_pid(gated), message="the batch to start on the doomed host")
        survivor = subprocess.Popen(command, env=env, start_new_session=True)
        killed_at = time.monotonic()
        os.killpg(doomed.pid, signal.SIGKILL)  # with inline workers this is where the batch runs
        try:
            os.killpg(os.getpgid(horse), signal.SIGKILL)  # a forking worker's horse has its own group
        except ProcessLookupError:
            pass
        wait_for(lambda: started_pid(gated) not in (None, horse), timeout=120,
                 message="a surviving worker's maintenance to recover the batch within 2 minutes")
        print(f"recovered by RQ maintenance in {time.monotonic() - killed_at:.1f} s")
        gated.unlink()
        runtime.wait_merged([report_id], timeout=60)
        assert_exactly_once(runtime, 1000)
    finally:
        for process in (doomed, survivor):
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)


def test_forged_job_naming_a_foreign_function_is_refused(runtime_factory, tmp_path, connection):
    runtime = runtime_factory(watch=False, workers=1)
    marker = tmp_path / "pwned"
    queue = make_queue(connection, runtime.settings.namespace)
    forged = queue.enqueue("os.system", f"touch {marker}")
    callback = queue.enqueue("core.queue.jobs.drain_inbox", runtime.settings.namespace,
                             on_success=Callback("os.system"), on_failure=Callback("os.system"))
    wait_for(lambda: forged.get_status(refresh=True) == JobStatus.FAILED, message="the forged job to fail")
    failure = Job.fetch(forged.id, connection=connection, serializer=JSONSerializer).latest_result()
    assert "is not a swordsec job function" in failure.exc_string
    assert not marker.exists()
    wait_for(lambda: callback.get_status(refresh=True) == JobStatus.FINISHED, message="our job to run")
    assert not marker.exists(), "callbacks named in a job are never resolved"


def test_a_busy_worker_that_loses_redis_waits_for_it_and_its_batch_is_not_lost(own_redis, tmp_path, gated):
    """Its own embedded Redis, stopped and started again under the runtime while a batch is mid-flight.
    The worker neither exits nor is restarted (no crash loop): it waits, then hands its batch back."""
    runtime = own_redis.start(workers=1)
    [path] = copy_challenge(tmp_path / "drop", {"5.json"})
    report_id, _ = runtime.watcher.ingest(path)
    busy = wait_for(lambda: started_pid(gated), message="the batch to start")
    own_redis.broker.stop()  # Redis goes away under a worker in the middle of a batch
    gated.unlink()
    log = runtime.supervisor.log_path(runtime.supervisor.processes()[0]["name"])
    wait_for(lambda: "waiting for it" in log.read_text(), message="the worker to say it waits for Redis")
    own_redis.restart_redis()
    runtime.wait_merged([report_id], timeout=60)
    assert runtime.store.count() == 1000
    assert runtime.supervisor.dead == [] and runtime.supervisor.processes()[0]["pid"] == busy
    assert log.read_text().count("waiting for it") == 1, "one line per change of state"

def test_a_dead_workers_output_is_kept_in_its_log(runtime_factory):
    runtime = runtime_factory(watch=False, workers=1)
    [worker] = runtime.supervisor.processes()
    log = runtime.supervisor.log_path(worker["name"])
    os.kill(worker["pid"], signal.SIGKILL)
    event = wait_for(lambda: [e for e in runtime.events.recent() if worker["name"] in e.text and "exited" in e.text],
                     message="the death to be reported")
    assert str(log) in event[0].text and log.exists()


def test_once_stops_with_a_clear_reason_when_batches_fail_for_good(runtime_factory, tmp_path, monkeypatch):
    """A batch job that fails every retry (here its gate file is a folder, so the failpoint raises)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    (tmp_path / "gate.started").mkdir()  # writing the pid there fails: the job raises, every retry
    monkeypatch.setenv(FAILPOINT, str(gate))
    runtime = runtime_factory(watch=False, workers=1)
    copy_challenge(tmp_path / "drop", {"9.json"})
    with pytest.raises(RuntimeError, match="batch job\\(s\\) failed for good"):
        runtime.run_once()
