"""`attach` end to end in real terminals: a `--no-ui` pipeline process and two consoles attached to it, each in
tmux. Both follow the pipeline; `q` in one leaves the pipeline and the other console untouched."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import psutil
import pytest
import redis

from core.ops.owner import read_presence
from tests.console.test_tmux import descendants, program
from tests.console.test_tmux import tmux as shared_tmux
from tests.console.test_tmux import wait_screen as shared_wait_screen

from conftest import copy_challenge, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


# A tmux server of this test's own: sessions on the shared default server can take the size of other clients'.
SERVER = "swordsec-attach-" + uuid.uuid4().hex[:8]


def tmux(*args: str) -> str:
    return shared_tmux(*args, server=SERVER)


def wait_screen(session: str, predicate, timeout: float, message: str) -> str:
    return shared_wait_screen(session, predicate, timeout, message, server=SERVER)


@pytest.fixture
def pipeline(tmp_path, external_url):
    """`swordsec-console --no-ui` on the machine's Redis (an attached console needs a URL it can reach)."""
    if external_url is None:
        pytest.skip("no external Redis to attach through")
    namespace = "at" + uuid.uuid4().hex[:10]
    log = open(tmp_path / "pipeline.log", "wb")
    process = subprocess.Popen([*program(), "--no-ui", "--redis-url", external_url, "--namespace", namespace,
                                "--watch", str(tmp_path / "drop"), "--data-dir", str(tmp_path / "data"),
                                "--grpc-listen", "127.0.0.1:0", "--workers", "2", "--quiet-period", "0.3"],
                               stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(external_url)
    try:
        wait_for(lambda: read_presence(client, namespace), 60, message="the pipeline's presence in Redis")
        yield process, external_url, namespace
    finally:
        process.terminate()
        process.wait(60)
        log.close()
        client.close()


def test_two_attached_consoles_and_q_in_one_leaves_the_rest(pipeline, tmp_path):
    process, url, namespace = pipeline
    sessions = {name: "swordsec-" + uuid.uuid4().hex[:8] for name in ("a", "b")}
    command = " ".join([*program(), "attach", "--redis-url", url, "--namespace", namespace])
    try:
        for name, session in sessions.items():
            # A shell first, the console typed into it: the pane has its final size before the console starts
            # (a detached session is made at 80x24 and resized, which a starting app can miss).
            tmux("new-session", "-d", "-s", session, "-x", "140", "-y", "45", "bash --norc --noprofile")
            tmux("send-keys", "-t", session, f"{command}; echo $? > {tmp_path / ('status-' + name)}", "Enter")
        for session in sessions.values():
            wait_screen(session, lambda s: "● live" in s and f"attached to {namespace} on" in s and "2 alive / 2 desired" in s,
                        60, "an attached dashboard to go live")
        workers = [p for p in descendants(process.pid) if p.is_running()]
        copy_challenge(tmp_path / "drop", ["1.json"])
        for session in sessions.values():
            wait_screen(session, lambda s: "1,000 users" in s and "1.json: merged" in s, 60,
                        "the merge, in both attached consoles")

        tmux("send-keys", "-t", sessions["a"], "q")
        wait_for(lambda: (tmp_path / "status-a").exists(), 30, message="console a to exit")
        assert (tmp_path / "status-a").read_text().strip() == "0"
        # The pipeline, its workers and the other console go on: a new file reaches console b.
        assert process.poll() is None and all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
        copy_challenge(tmp_path / "drop", ["2.json"])
        wait_screen(sessions["b"], lambda s: "2,000 users" in s and "2 alive / 2 desired" in s and "2.json: merged" in s, 60,
                    "console b still following the pipeline")
        assert not (tmp_path / "status-b").exists()
        # The lines the attached consoles show are the --no-ui log's.
        log = (tmp_path / "pipeline.log").read_text()
        assert "1.json: merged: 1000 users accepted" in log and "2.json: merged: 1000 users accepted" in log
        tmux("send-keys", "-t", sessions["b"], "q")
        wait_for(lambda: (tmp_path / "status-b").exists(), 30, message="console b to exit")
        assert process.poll() is None
    finally:
        subprocess.run(["tmux", "-L", SERVER, "kill-server"], capture_output=True)
    started = time.monotonic()
    process.terminate()
    assert process.wait(60) == 0, (tmp_path / "pipeline.log").read_text()[-2000:]
    assert time.monotonic() - started < 30
