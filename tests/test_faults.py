"""Issue 9, faults the product must survive on its own: its Redis killed -9, an external Redis going away,
SIGTERM with work in flight, a frozen worker, a full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from core.config import Settings
from core.queue.jobs import FAILPOINT
from core.queue.supervisor import FROZEN_HANDBACK
from core.runtime import Runtime
from core.service.backpressure import batches_of

from conftest import make_users, wait_for, wait_pipeline
from lifecycle_helpers import (
    assert_nothing_left,
    command_line,
    program,
    start_headless,
    wait_children,
    wait_line,
)

pytestmark = pytest.mark.slow


def write_users(folder: Path, name: str, count: int, tag: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(json.dumps(make_users(count, tag)).encode())
    return path


def embedded_runtime(tmp_path: Path, **overrides) -> Runtime:
    values = dict(watch=tmp_path / "drop", data_dir=tmp_path / "data", redis_url=None, grpc_listen="127.0.0.1:0",
                  workers=2, namespace="f" + uuid.uuid4().hex[:8], quiet_period=0.3, batch_size=500)
    values.update(overrides)
    return Runtime(Settings.build(values, environ={}))


def texts(runtime, words: str) -> list[str]:
    return [e.text for e in runtime.events.recent(2000) if words in e.text]


def exported_emails(runtime) -> list[str]:
    path = Path(runtime.exporter.write()["path"])
    return [u["email"] for u in json.loads(path.read_text())]


# -- 9.10: the embedded Redis killed -9 mid-ingest -------------------------------------------------------------

def test_the_embedded_redis_killed_mid_ingest_is_restarted_and_every_user_is_merged(tmp_path):
    runtime = embedded_runtime(tmp_path).start()
    try:
        write_users(tmp_path / "drop", "big.json", 40_000, "k")
        wait_for(lambda: runtime.store.count() > 2_000, message="the ingest to be under way")
        killed = runtime.broker.process.pid
        os.kill(killed, signal.SIGKILL)
        began = time.monotonic()
        wait_for(lambda: runtime.guard.restarts == 1 and runtime.broker.process.pid != killed, timeout=15,
                 message="the embedded redis-server to be started again")
        restarted_in = time.monotonic() - began
        assert restarted_in < 5, f"restarted after {restarted_in:.1f} s"
        wait_for(lambda: _count(runtime) == 40_000, timeout=60, message="every user to be merged")
        print(f"redis killed -9: running again after {restarted_in:.2f} s, all 40,000 users merged "
              f"{time.monotonic() - began:.1f} s after the kill")
        wait_for(lambda: runtime.backlog() == 0, message="an empty queue")
        emails = exported_emails(runtime)
        assert len(emails) == 40_000 == len(set(emails))
        assert len(texts(runtime, "starting it again from its AOF")) == 1
        assert not runtime.supervisor.dead, "no worker crash-looped"
        assert not os.path.exists(f"/proc/{killed}"), "the dead redis-server was reaped, not left a zombie"
    finally:
        runtime.stop()


def _count(runtime) -> int:
    try:
        return runtime.store.count()
    except redis.RedisError:
        return -1


def test_an_embedded_redis_that_cannot_start_again_ends_the_program_with_exit_3(tmp_path):
    namespace = "f" + uuid.uuid4().hex[:8]
    process, out = start_headless(tmp_path, namespace, workers=1)
    wait_line(out, "watching")
    children = wait_children(process.pid, redis=True, workers=1)
    server = next(c for c in children if "redis-server" in command_line(c))
    # Its AOF manifest made unreadable: a restart of this redis-server can only fail.
    for manifest in (tmp_path / "data" / "redis").rglob("*.manifest"):
        manifest.write_text("garbage\n")
    server.kill()
    assert process.wait(timeout=30) == 3
    text = out.read_text()
    errors = [line for line in text.splitlines() if line.startswith("swordsec-console:")]
    assert len(errors) == 1 and "cannot be started again" in errors[0], text
    assert "Traceback" not in text
    assert_nothing_left(children, str(tmp_path), namespace)


# -- 9.10: an external Redis that goes away ---------------------------------------------------------------------

def test_an_external_redis_going_away_is_one_line_each_way_and_no_worker_restarts(own_redis, tmp_path):
    runtime = own_redis.start(workers=2)
    wait_for(lambda: runtime.supervisor.alive_count() == 2 and runtime.snapshot().alive_workers == 2,
             message="two workers")
    own_redis.broker.stop()
    wait_for(lambda: texts(runtime, "unreachable"), timeout=10, message="the down line")
    problems = [p.what for p in runtime.snapshot().problems]
    assert any("unreachable" in p for p in problems), problems
    time.sleep(6)  # long enough for a crash loop to show (the old workers exited and restarted within 2 s)
    own_redis.restart_redis()
    wait_for(lambda: texts(runtime, "redis: back after"), timeout=15, message="the back line")
    write_users(tmp_path / "drop", "after.json", 1_000, "x")
    report_id, _ = runtime.watcher.ingest(tmp_path / "drop" / "after.json")
    runtime.wait_merged([report_id], timeout=30)
    assert runtime.store.count() == 1_000
    assert len(texts(runtime, "unreachable")) == 1 and len(texts(runtime, "redis: back after")) == 1
    assert not runtime.supervisor.dead, "workers waited for Redis instead of exiting"
    assert not any(p.level == "error" for p in runtime.snapshot().problems)


# -- 9.11: SIGTERM exits 0 only once accepted work is merged --------------------------------------------------

def accepted(tmp_path: Path, namespace: str, batches: int) -> None:
    """Wait until `batches` batches are in queued or running jobs in the program's embedded Redis (a job may
    carry several)."""
    folder = tmp_path / "data" / "redis"
    client = redis.Redis(unix_socket_path=(folder / "socket").read_text().strip(),
                         password=(folder / "password").read_text().strip())

    def carried() -> int:
        ids = client.lrange(f"rq:queue:{namespace}", 0, -1)
        ids += [member.split(b":")[0] for member in client.zrange(f"rq:wip:{namespace}", 0, -1)]
        return sum(len(batches_of(client.hget(b"rq:job:" + job_id, "data"))) for job_id in ids)

    try:
        wait_for(lambda: carried() == batches, message=f"{batches} batches accepted")
    finally:
        client.close()


def test_sigterm_waits_for_accepted_users_to_be_merged_then_exits_0(tmp_path):
    gate = tmp_path / "gate"
    gate.write_text("")
    namespace = "f" + uuid.uuid4().hex[:8]
    process, out = start_headless(tmp_path, namespace, "--batch-size", "500", "--stop-grace", "20",
                                  env={FAILPOINT: str(gate)})
    wait_line(out, "watching")
    write_users(tmp_path / "drop", "held.json", 5_000, "h")
    wait_for(lambda: Path(str(gate) + ".started").exists(), message="a batch to be held at the gate")
    accepted(tmp_path, namespace, batches=10)  # the whole file is accepted: every batch is in Redis
    process.send_signal(signal.SIGTERM)
    wait_line(out, "stopping: finishing accepted work (up to 20 s")
    time.sleep(1)
    assert process.poll() is None, "it must not leave while accepted work waits"
    gate.unlink()
    assert process.wait(timeout=30) == 0, out.read_text()
    assert "every accepted user is merged; all_users.json holds 5000 users" in out.read_text()
    assert len(json.loads((tmp_path / "data" / "all_users.json").read_text())) == 5_000


def test_sigterm_past_the_grace_says_how_many_users_remain_and_exits_non_zero(tmp_path):
    namespace = "f" + uuid.uuid4().hex[:8]
    process, out = start_headless(tmp_path, namespace, "--batch-size", "500", "--stop-grace", "1", workers=0)
    wait_line(out, "watching")
    write_users(tmp_path / "drop", "nobody.json", 3_000, "n")
    accepted(tmp_path, namespace, batches=6)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 4, out.read_text()
    assert ("swordsec-console: stopped with 3000 accepted user(s) not merged yet; they are safe in Redis and "
            "finish at the next start") in out.read_text()
    done = subprocess.run([*program(), "--no-ui", "--once", "--watch",
                           str(tmp_path / "drop"), "--data-dir", str(tmp_path / "data"), "--grpc-listen",
                           "127.0.0.1:0", "--workers", "1"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SWORDSEC_NAMESPACE": namespace})
    assert done.returncode == 0, done.stderr
    assert len(json.loads((tmp_path / "data" / "all_users.json").read_text())) == 3_000


def test_stop_grace_is_a_setting_with_an_environment_variable():
    assert Settings.build({}, environ={}).stop_grace == 30.0
    assert Settings.build({}, environ={"SWORDSEC_STOP_GRACE": "5"}).stop_grace == 5.0
    assert Settings.build({"stop_grace": 2.5}, environ={"SWORDSEC_STOP_GRACE": "5"}).stop_grace == 2.5
    with pytest.raises(ValueError, match="stop grace"):
        Settings.build({"stop_grace": -1}, environ={})


# -- 9.12: a frozen local worker ----------------------------------------------------------------------------

def test_a_frozen_worker_is_flagged_at_once_and_its_job_handed_back(runtime_factory, tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    gate.write_text("")
    monkeypatch.setenv(FAILPOINT, str(gate))
    runtime = runtime_factory(watch=False, workers=1)
    path = write_users(tmp_path / "drop", "frozen.json", 800, "z")
    report_id, _ = runtime.watcher.ingest(path)
    busy = wait_for(lambda: _pid(Path(str(gate) + ".started")), message="the batch to start")
    os.kill(busy, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        snap = wait_for(lambda: _frozen(runtime), timeout=10, message="the worker flagged as frozen")
        flagged_in = time.monotonic() - frozen_at
        assert flagged_in < 10
        assert any("frozen" in p.what for p in snap.problems)
        assert len(texts(runtime, "is frozen")) == 1
        gate.unlink()
        runtime.wait_merged([report_id], timeout=FROZEN_HANDBACK + 20)
        handed_back_in = time.monotonic() - frozen_at
        print(f"frozen worker: flagged after {flagged_in:.2f} s, its file merged {handed_back_in:.1f} s after SIGSTOP")
        assert runtime.store.count() == 800
        assert FROZEN_HANDBACK <= handed_back_in < FROZEN_HANDBACK + 10
        assert texts(runtime, "frozen for") and texts(runtime, "requeued 1 job(s)")
    finally:
        try:
            os.kill(busy, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _frozen(runtime):
    snap = runtime.snapshot()
    return snap if any(w.state == "frozen" for w in snap.workers) else None


# -- 9.13: a full disk ------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs, when this user may mount one (root in the test container)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_clear_line_no_restart_loop_and_recovers_by_itself(tmp_path, small_disk):
    runtime = embedded_runtime(tmp_path, data_dir=small_disk / "data", workers=1).start()
    try:
        write_users(tmp_path / "drop", "first.json", 1_000, "a")
        wait_for(lambda: _count(runtime) == 1_000, message="the first file merged")
        filler = small_disk / "filler"
        with open(filler, "wb") as handle:  # fill the disk to the last byte
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        for chunk in (4096, 512, 1):
            try:
                with open(filler, "ab") as handle:
                    while True:
                        handle.write(b"\0" * chunk)
                        handle.flush()
            except OSError:
                continue
        write_users(tmp_path / "drop", "second.json", 1_000, "b")
        data = str(small_disk / "data")
        # Redis refuses writes once its append-only file cannot grow. all_users.json fails too only when a
        # change reached Redis before that (second.json may or may not have): when it does, it is one line too.
        snap = wait_for(lambda: _disk_problem(runtime, 1), timeout=20, message="the doctor to name the full disk")
        assert all(data in p.what for p in snap.problems if p.level == "error"), [p.what for p in snap.problems]
        time.sleep(4)  # attempts go on meanwhile; the lines must not
        lines = [e.text for e in runtime.events.recent(2000) if e.level == "error"]
        # One line per thing that cannot write, not one per attempt. (The watcher's own "ingest failed, will
        # retry" lines are core/intake/watcher.py's, bounded by issue 9 item 4.)
        assert len([t for t in lines if "cannot write" in t and data in t]) <= 1, lines
        assert len([t for t in lines if t.startswith("redis:") and "refuses writes" in t and data in t]) == 1, lines
        assert not runtime.supervisor.dead, "no worker restart loop"
        filler.unlink()  # space returns: everything resumes without a restart
        wait_for(lambda: _count(runtime) == 2_000, timeout=30, message="the second file merged after space returned")
        wait_for(lambda: not _disk_problem(runtime, 1), timeout=15, message="the doctor to clear")
        # The export follows the merges (a wake-up a worker pushed while Redis refused writes was lost; the
        # exporter's own look every WAKE_WAIT finds the change anyway).
        wait_for(lambda: len(json.loads((small_disk / "data" / "all_users.json").read_text())) == 2_000, timeout=15,
                 message="all_users.json with both files after space returned")
    finally:
        runtime.stop()


def _disk_problem(runtime, at_least: int):
    snap = runtime.snapshot()
    found = [p for p in snap.problems if "no space left" in p.what.lower()]
    return snap if len(found) >= at_least else None


def test_a_frozen_worker_does_not_hold_up_the_stop(tmp_path):
    runtime = embedded_runtime(tmp_path, workers=1).start()
    [worker] = wait_for(lambda: runtime.supervisor.processes(), message="a worker")
    wait_for(lambda: runtime.snapshot().alive_workers == 1, message="the worker registered")
    os.kill(worker["pid"], signal.SIGSTOP)
    wait_for(lambda: _frozen(runtime), timeout=10, message="the worker flagged as frozen")
    began = time.monotonic()
    runtime.stop()
    assert time.monotonic() - began < 5
    assert not os.path.exists(f"/proc/{worker['pid']}")


def test_a_second_sigterm_stops_waiting_at_once(tmp_path):
    namespace = "f" + uuid.uuid4().hex[:8]
    process, out = start_headless(tmp_path, namespace, "--batch-size", "500", "--stop-grace", "600", workers=0)
    wait_line(out, "watching")
    write_users(tmp_path / "drop", "wait.json", 1_000, "w")
    accepted(tmp_path, namespace, batches=2)
    process.send_signal(signal.SIGTERM)
    wait_line(out, "stopping: finishing accepted work (up to 600 s")
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 4
    assert time.monotonic() - began < 5
    assert "stopped with 1000 accepted user(s) not merged yet" in out.read_text()


def test_a_second_signal_gives_up_a_long_final_export_and_the_outcome_says_so(runtime_factory, monkeypatch):
    """A final write of all_users.json takes a minute at ten million users: a second signal ends it (the file
    keeps the export before, never a half-written one), and the stop says the file is behind."""
    from core.storage import viewfile

    runtime = runtime_factory(watch=False, workers=1)
    runtime.server.service.intake.enqueue("f" * 32, runtime.store.attempt("f" * 32), "t", "0:50",
                                          make_users(50, "late"))
    wait_pipeline(runtime, lambda: runtime.store.count() == 50, message="the batch merged")
    before = runtime.exporter.path.read_bytes() if runtime.exporter.path.exists() else None
    monkeypatch.setattr(viewfile, "STOP_AFTER", 0.0)  # as if the write had already run long
    runtime.abort_drain()
    outcome = runtime.stop(grace=5)
    assert not outcome.exported and not outcome.complete
    assert (runtime.exporter.path.read_bytes() if runtime.exporter.path.exists() else None) == before
    said = [e.text for e in runtime.events.recent() if "not brought up to date" in e.text]
    assert len(said) == 1 and "a second signal" in said[0] and "the next start writes it" in said[0]
