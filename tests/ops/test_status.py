"""core.ops.status, core.ops.doctor and core.ops.control against a real runtime (real Redis, gRPC, worker processes)."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from core.ops.control import Control, ControlError
from core.ops.doctor import diagnose
from core.ops.events import Event
from core.ops.snapshot import GrpcInfo, RedisInfo, Snapshot, WatcherInfo, WorkerInfo
from core.ops.status import History

from conftest import copy_challenge, wait_for


def test_status_and_control_import_without_textual():
    code = ("import sys, core.ops.status, core.ops.control, core.ops.doctor\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'textual']\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_snapshot_follows_an_ingest(runtime_factory, tmp_path):
    runtime = runtime_factory()
    copy_challenge(runtime.settings.watch, ["1.json", "6.json"])
    snap = wait_for(lambda: (s := runtime.snapshot()).users == 1977
                    and all(f["state"] == "merged" for f in s.files) and len(s.files) == 2
                    and s.queue["finished"] >= 2 and s.alive_workers == 2 and s,
                    message="1,977 users and two merged files in the snapshot")
    assert {f["name"] for f in snap.files} == {"1.json", "6.json"}
    partial = next(f for f in snap.files if f["name"] == "6.json")
    assert partial["damage"] and partial["accepted"] == 977
    assert snap.queue["finished"] >= 2 and snap.queue["failed"] == 0
    assert snap.alive_workers == 2 and snap.desired_workers == 2
    assert snap.redis.connected and snap.redis.version
    assert "password=" not in snap.redis.url or "password=***" in snap.redis.url
    assert snap.grpc.serving and snap.grpc.calls >= 2
    assert snap.watcher.folder_ok and not snap.watcher.paused
    assert not snap.problems, snap.problems
    wait_for(lambda: any("6.json" in e.text for e in runtime.snapshot().events), message="the 6.json event")
    assert snap.in_flight == 0


def test_failed_job_requeue_and_delete(runtime_factory):
    runtime = runtime_factory(watch=False)
    control = runtime.control
    # A forged function name: SafeJob refuses it without importing anything, so the job fails.
    forged = runtime.queue.enqueue("os.getcwd", job_id="forged-1", description="forged call")
    # A real job function with a malformed batch (no keys) fails inside the worker.
    broken = runtime.queue.enqueue("core.queue.jobs.merge_batch", {"nonsense": True}, job_id="broken-1")
    snap = wait_for(lambda: len((s := runtime.snapshot()).failed) == 2 and s, message="two failed jobs")
    by_id = {job.id: job for job in snap.failed}
    assert "not a swordsec job function" in by_id[forged.id].exc_info
    assert "KeyError" in by_id[broken.id].exc_info
    assert any("failed job" in p.what for p in snap.problems)

    assert "requeued" in control.requeue(broken.id)
    # It fails again (the batch is still malformed) and comes back to the failed registry.
    wait_for(lambda: broken.id in [j.id for j in runtime.snapshot().failed], message="requeued job failing again")
    assert control.requeue_all().startswith("2 failed job(s) requeued")
    wait_for(lambda: len(runtime.snapshot().failed) == 2, message="both jobs failing again")
    control.delete_job(forged.id)
    control.delete_job(broken.id)
    assert runtime.snapshot().failed == ()
    try:
        control.requeue(forged.id)
    except ControlError as error:
        assert "no longer" in str(error)
    else:
        raise AssertionError("requeueing a deleted job must fail")


def test_scale_and_stop_workers(runtime_factory):
    runtime = runtime_factory(watch=False)
    control: Control = runtime.control
    control.scale(3)
    wait_for(lambda: runtime.snapshot().alive_workers == 3 and
             all(w.state == "idle" for w in runtime.snapshot().workers), message="three idle workers")
    name = runtime.snapshot().workers[0].name
    control.stop_worker(name)
    wait_for(lambda: runtime.snapshot().desired_workers == 2 and
             name not in {w.name for w in runtime.snapshot().workers if w.state != "dead"},
             message="the stopped worker gone")
    control.scale(0)
    wait_for(lambda: runtime.snapshot().alive_workers == 0, message="no workers")


def test_watcher_pause_and_resume(runtime_factory):
    runtime = runtime_factory()
    assert runtime.control.toggle_watcher() == "watcher paused"
    assert runtime.snapshot().watcher.paused
    copy_challenge(runtime.settings.watch, ["2.json"])
    snap = wait_for(lambda: (s := runtime.snapshot()).watcher.waiting == 1 and s, message="a waiting file")
    assert snap.users == 0
    assert any("paused" in p.what for p in snap.problems)
    assert runtime.control.toggle_watcher() == "watcher resumed"
    wait_for(lambda: runtime.snapshot().users == 1000, message="1,000 users after resume")


def _snapshot(**overrides) -> Snapshot:
    values = dict(taken_at=1000.0, redis=RedisInfo("redis://h:6379/0", False, True, "7.2", "1M"),
                  grpc=GrpcInfo("127.0.0.1:1", True), watcher=WatcherInfo("drop", True, False, 0),
                  workers=(WorkerInfo("w1", 1, "idle"),), desired_workers=1)
    values.update(overrides)
    return Snapshot(**values)


def test_doctor_says_what_is_wrong_and_what_to_do():
    assert diagnose(_snapshot(), None) == []
    down = diagnose(_snapshot(redis=RedisInfo("redis://h:6379/0", False, False, error="refused")), None)
    assert "unreachable" in down[0].what and "--redis-url" in down[0].fix
    idle = diagnose(_snapshot(workers=(), desired_workers=0, backlog=5), None)
    assert "no worker" in idle[0].what and "+" in idle[0].fix
    dead = diagnose(_snapshot(workers=(WorkerInfo("w1", 1, "dead"),)), None)
    assert {p.what for p in dead} >= {"no worker is alive", "1 worker(s) died recently"}
    folder = diagnose(_snapshot(watcher=WatcherInfo("drop", True, False, 0, folder_ok=False,
                                                   folder_error="missing")), None)
    assert "missing" in folder[0].what
    growing = diagnose(_snapshot(backlog=100, backlog_trend=40), None)
    assert "backlog growing" in growing[0].what


def test_rates_come_from_successive_samples():
    history = History()
    worker = WorkerInfo("w1", 1, "busy", successful=0)
    history.add(0.0, 0, (worker,), 10)
    users_rate, jobs_rate, sparks, _ = history.add(5.0, 5000, (WorkerInfo("w1", 1, "busy", successful=5),), 5)
    assert users_rate == 1000.0 and jobs_rate == 1.0 and sparks[-1] == 1000.0
    # A restarted worker's counters start at zero again: throughput never goes negative.
    _, jobs_rate, _, trend = history.add(10.0, 5000, (WorkerInfo("w1", 2, "idle", successful=0),), 5)
    assert jobs_rate == 0.0 and trend == -5


def test_events_are_in_the_snapshot_in_order(runtime_factory):
    runtime = runtime_factory(watch=False)
    runtime.emit("warning", "first")
    runtime.emit("info", "second")
    texts = [e.text for e in runtime.snapshot().events if isinstance(e, Event)]
    assert texts.index("first") < texts.index("second")


def test_a_snapshot_reads_only_the_parts_it_is_given(tmp_path):
    """No runtime at all: settings, a broker that never started and an event log are a whole (if empty) picture."""
    from core.config import Settings
    from core.ops.events import EventLog
    from core.ops.status import Sources, collect
    from core.storage.broker import Broker

    settings = Settings(watch=tmp_path / "drop", data_dir=tmp_path / "data")
    events = EventLog()
    events.emit("info", "hello")
    snap = collect(Sources(settings=settings, broker=Broker(None, settings.data_dir), events=events,
                           history=History()))
    assert not snap.redis.connected and snap.redis.error == "not started"
    assert snap.grpc is None and snap.watcher is None and snap.workers == ()
    assert [e.text for e in snap.events] == ["hello"]
    assert any("unreachable" in p.what for p in snap.problems)


def test_waiting_names_are_read_from_copies_while_the_watcher_changes_them():
    """The watcher's threads add and drop candidates and queue files while the console polls: every read is
    a whole, consistent copy, and never an exception."""
    import queue
    import threading
    from pathlib import Path
    from types import SimpleNamespace

    from core.ops.status import waiting_names

    watcher = SimpleNamespace(candidates={}, ready=queue.Queue())
    stop = threading.Event()

    def churn():
        n = 0
        while not stop.is_set():
            n += 1
            watcher.candidates[Path(f"drop/{n}.json")] = (n, n)
            watcher.ready.put(Path(f"drop/q{n}.json"))
            if n > 50:
                watcher.candidates.pop(Path(f"drop/{n - 50}.json"), None)
                watcher.ready.get_nowait()

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(20_000):
            names = waiting_names(watcher)
            assert list(names) == sorted(set(names))
    finally:
        stop.set()
        thread.join()
    watcher.ready.put(None)  # a reader's stop sentinel is not a file
    assert waiting_names(watcher) == tuple(sorted({p.name for p in [*watcher.candidates,
                                                                   *list(watcher.ready.queue)[:-1]]}))


@given(waiting=st.lists(st.sampled_from(["a.json", "b.json", "c.json", "d.json"]), unique=True),
       reports=st.lists(st.tuples(st.sampled_from(["a.json", "b.json", "c.json"]), st.floats(0, 200)), max_size=6),
       said_at=st.sampled_from([0.0, 100.0]))
def test_a_file_read_since_the_owner_spoke_is_no_longer_shown_waiting(waiting, reports, said_at):
    """An attached console's watcher is the owner's word of up to seconds ago: a name whose report began after it
    leaves the waiting names (and count); any other stays; the live watcher (said_at 0) is taken as it is."""
    from core.ops.status import _still_waiting

    watcher = WatcherInfo(folder="drop", active=True, paused=False, waiting=len(waiting) + 1,
                          waiting_names=tuple(waiting))
    files = [{"name": name, "started_at": at} for name, at in reports]
    shown = _still_waiting(watcher, files, said_at)
    read_since = {name for name, at in reports if at > said_at} if said_at else set()
    assert shown.waiting_names == tuple(name for name in waiting if name not in read_since)
    assert shown.waiting == watcher.waiting - (len(waiting) - len(shown.waiting_names))


def test_control_without_its_parts_says_so_in_one_line(tmp_path):
    said = []
    control = Control(emit=lambda level, text: said.append(text), data_dir=tmp_path / "data", watch=tmp_path / "drop")
    for command in (control.add_worker, control.toggle_watcher, control.requeue_all):
        try:
            command()
        except ControlError as error:
            assert "\n" not in str(error)
        else:
            raise AssertionError(f"{command.__name__} without its part must fail")
    assert said == []
