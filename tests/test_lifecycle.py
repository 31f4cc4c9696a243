"""Issue 16: however `swordsec-console --no-ui` or a hand-started `worker` ends, nothing it started outlives it.

Each test runs the real program, takes its children while it runs, ends it one way, and then counts the
processes left: by parent (the children taken before) and by command line (the test's data folder and
namespace). The terminal cases (tmux) are in tests/console/test_tmux.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import uuid

import psutil
import pytest
import redis

from core.queue.jobs import FAILPOINT

from conftest import wait_for
from lifecycle_helpers import (
    assert_nothing_left,
    by_command_line,
    children_of,
    living,
    program,
    start_headless,
    wait_children,
    wait_line,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def namespace() -> str:
    return "lc" + uuid.uuid4().hex[:10]


def end_and_count(process, out, tmp_path, namespace, how) -> tuple[int, float, str]:
    wait_line(out, "watching")
    children = wait_children(process.pid, redis=True, workers=2)
    how(process)
    code = process.wait(timeout=30)
    took = assert_nothing_left(children, str(tmp_path), namespace)
    return code, took, out.read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_everything_cleanly_and_redis_syncs_its_aof(tmp_path, namespace, signum):
    process, out = start_headless(tmp_path, namespace)
    code, took, text = end_and_count(process, out, tmp_path, namespace, lambda p: p.send_signal(signum))
    print(f"{signal.Signals(signum).name}: nothing left {took:.2f} s after the console exited")
    assert code == 0, text
    assert "stopped: every accepted user is merged" in text
    # redis-server's own words for a clean shutdown: the AOF was fsynced before it exited.
    log = (tmp_path / "data" / "redis" / "redis.log").read_text()
    assert "ready to exit, bye bye" in log


def test_ctrl_c_reaches_the_console_only_which_stops_its_children(tmp_path, namespace):
    """A terminal's ctrl+c signals the whole foreground process group; children have groups of their own,
    so the console, not the signal, decides the order (workers finish, then Redis)."""
    process, out = start_headless(tmp_path, namespace)
    code, _, text = end_and_count(process, out, tmp_path, namespace, lambda p: os.killpg(p.pid, signal.SIGINT))
    assert code == 0, text
    assert "ready to exit, bye bye" in (tmp_path / "data" / "redis" / "redis.log").read_text()


def test_sigkill_of_the_console_takes_its_children_down_and_the_next_start_recovers(tmp_path, namespace):
    process, out = start_headless(tmp_path, namespace)
    code, took, _ = end_and_count(process, out, tmp_path, namespace, lambda p: p.kill())
    print(f"SIGKILL: nothing left {took:.2f} s after the console died")
    assert code == -signal.SIGKILL
    # The parent-death SIGTERM is redis-server's clean shutdown: its AOF is synced even now.
    assert "ready to exit, bye bye" in (tmp_path / "data" / "redis" / "redis.log").read_text()
    done = subprocess.run([*program(), "--no-ui", "--once", "--watch", str(tmp_path / "drop"), "--data-dir",
                           str(tmp_path / "data"), "--grpc-listen", "127.0.0.1:0", "--workers", "1"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SWORDSEC_NAMESPACE": namespace})
    assert done.returncode == 0, done.stderr
    assert_nothing_left([], str(tmp_path), namespace)


def test_an_unexpected_exception_stops_everything_with_one_line(tmp_path, namespace):
    """A fault injected in the real program's main loop (sitecustomize): exit 3, one line, no orphan."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent("""
        import core.runtime

        def check(self):
            raise ZeroDivisionError("injected by the test")

        core.runtime.Runtime.check = check
    """))
    process, out = start_headless(tmp_path, namespace, env={"PYTHONPATH": str(hook)})
    children = wait_children(process.pid, redis=True, workers=0)
    code = process.wait(timeout=30)
    assert_nothing_left(children, str(tmp_path), namespace)
    text = out.read_text()
    assert code == 3, text
    assert "unexpected error: ZeroDivisionError: injected by the test" in text and "Traceback" not in text


def test_an_external_redis_and_remote_workers_are_never_stopped(tmp_path, namespace, external_url):
    if external_url is None:
        pytest.skip("no external Redis answers (set SWORDSEC_TEST_REDIS_URL to test one)")
    EXTERNAL_URL = external_url
    connection = redis.Redis.from_url(EXTERNAL_URL)
    remote_out = tmp_path / "remote.out"
    env = {**os.environ, "SWORDSEC_NAMESPACE": namespace}
    with open(remote_out, "wb") as handle:
        remote = subprocess.Popen([*program(), "worker", "--redis-url", EXTERNAL_URL, "--count", "1",
                                   "--namespace", namespace], stdout=handle, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    try:
        remote_children = wait_children(remote.pid, redis=False, workers=1)
        process, out = start_headless(tmp_path, namespace, "--redis-url", EXTERNAL_URL)
        wait_line(out, "watching")
        children = wait_children(process.pid, redis=False, workers=2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, out.read_text()
        assert_nothing_left(children, str(tmp_path))
        assert connection.ping()
        assert living(psutil.Process(remote.pid)) and all(living(c) for c in remote_children)
    finally:
        remote.send_signal(signal.SIGTERM)
        remote.wait(timeout=30)
        for key in connection.scan_iter(match=f"{namespace}:*"):
            connection.delete(key)
        connection.close()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "SIGKILL"])
def test_a_hand_started_worker_command_leaves_nothing(tmp_path, namespace, own_redis_url, how):
    out = tmp_path / "worker.out"
    with open(out, "wb") as handle:
        process = subprocess.Popen([*program(), "worker", "--redis-url", own_redis_url, "--count", "2",
                                    "--namespace", namespace], stdout=handle, stderr=subprocess.STDOUT,
                                   env={**os.environ, "SWORDSEC_NAMESPACE": namespace}, start_new_session=True)
    children = wait_children(process.pid, redis=False, workers=2)
    process.send_signal(getattr(signal, how))
    code = process.wait(timeout=30)
    assert code == (-signal.SIGKILL if how == "SIGKILL" else 0), out.read_text()
    assert_nothing_left(children, namespace)


@pytest.fixture
def own_redis_url(tmp_path):
    from core.storage.broker import Broker

    broker = Broker(None, tmp_path / "own-redis")
    broker.start()
    yield broker.url
    broker.stop()


def test_nothing_is_left_when_the_console_dies_during_start(tmp_path, namespace):
    """SIGKILL while the embedded Redis and the workers are still coming up."""
    process, out = start_headless(tmp_path, namespace)
    children = wait_children(process.pid, redis=True, workers=0)
    children += children_of(process.pid)
    process.kill()
    process.wait(timeout=10)
    assert_nothing_left(children, str(tmp_path), namespace)
    assert not by_command_line(str(tmp_path))


@pytest.mark.parametrize("mode", ["inline", "fork"])
def test_sigkill_while_a_job_runs_leaves_nothing(tmp_path, namespace, mode):
    """A batch held mid-merge (core.queue.jobs failpoint) when the console dies: the worker, and a fork-mode
    work-horse with it, leave within the deadline even though their job never finishes."""
    gate = tmp_path / "gate"
    gate.write_text("")
    process, out = start_headless(tmp_path, namespace, "--worker-mode", mode, workers=1,
                                  env={FAILPOINT: str(gate)})
    wait_line(out, "watching")
    (tmp_path / "drop" / "held.json").write_text(json.dumps([{"email": f"h{i}@x.org"} for i in range(10)]))
    wait_for(lambda: (tmp_path / "gate.started").exists(), message="the batch to be held at the gate")
    children = children_of(process.pid)
    process.kill()
    process.wait(timeout=10)
    took = assert_nothing_left(children, str(tmp_path), namespace)
    print(f"SIGKILL mid-job ({mode}): nothing left after {took:.2f} s")
