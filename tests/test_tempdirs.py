"""Private socket folders in the temp folder (core/tempdirs.py): a console killed with SIGKILL leaves them, the
next one to start removes them, and nothing else (a live process's folder, a link, a name not ours)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from core.storage.broker import Broker
from core.tempdirs import prefix, sweep_stale

GRPC = prefix("grpc")
MAKE_AND_WAIT = ("import sys, tempfile; tempfile.tempdir = sys.argv[1]\n"
                 "from core.tempdirs import make_private_dir\n"
                 "folder = make_private_dir(sys.argv[2]); (folder / 'a.sock').write_text('')\n"
                 "print(folder, flush=True); sys.stdin.read()")


@pytest.fixture
def temp_root(monkeypatch):
    """A temporary folder of the test's own as the temp dir (short: a unix socket path has 107 bytes at most)."""
    root = Path(tempfile.mkdtemp(prefix="sw-"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _console_like(root: Path, kind: str = "grpc") -> tuple[subprocess.Popen, Path]:
    child = subprocess.Popen([sys.executable, "-c", MAKE_AND_WAIT, str(root), kind], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    return child, Path(child.stdout.readline().strip())


def test_a_killed_consoles_folder_is_removed_by_the_next_and_a_live_ones_is_kept(runtime_factory, temp_root):
    killed, left = _console_like(temp_root)
    alive, kept = _console_like(temp_root)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert left.is_dir() and kept.is_dir() and left.name.startswith(f"{GRPC}{killed.pid}-")
        runtime = runtime_factory(watch=False)  # a console starting: its gRPC server makes its own folder
        assert not left.exists()
        assert (kept / "a.sock").exists()
        assert runtime.server.private_dir.parent == temp_root and runtime.server.private_dir.is_dir()
    finally:
        alive.kill()
        alive.wait()
        killed.stdout.close()
        alive.stdout.close()


def test_the_sweep_leaves_what_is_not_a_dead_processs_own_folder(temp_root):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    target = temp_root / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("")
    (temp_root / f"{GRPC}{pid}-link").symlink_to(target)  # a link: never followed, never removed
    (temp_root / f"{GRPC}{pid}-file").write_text("")  # not a folder
    (temp_root / f"{GRPC}x{pid}-abc").mkdir()  # not our name
    (temp_root / f"{GRPC}{os.getpid()}-mine").mkdir()  # this process's
    (temp_root / f"{GRPC}{pid}-gone").mkdir()
    assert sweep_stale("redis", temp_root) == []  # another kind's sweep leaves them all
    assert sweep_stale("grpc", temp_root) == [temp_root / f"{GRPC}{pid}-gone"]
    assert (target / "keep").exists() and (temp_root / f"{GRPC}{pid}-link").is_symlink()
    assert sorted(p.name for p in temp_root.iterdir()) == sorted(
        ["elsewhere", f"{GRPC}{pid}-link", f"{GRPC}{pid}-file", f"{GRPC}x{pid}-abc", f"{GRPC}{os.getpid()}-mine"])


def test_a_killed_consoles_redis_socket_folder_is_removed_by_the_next_embedded_redis(temp_root, tmp_path):
    """Only a data folder whose path is too long for a unix socket puts the embedded Redis's socket here."""
    killed, left = _console_like(temp_root, "redis")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed.stdout.close()
    broker = Broker(None, tmp_path / ("d" * 60) / ("e" * 60))
    try:
        broker.start()
        assert not left.exists()
        made = broker._socket_dir
        assert made.parent == temp_root and made.name.startswith(f"{prefix('redis')}{os.getpid()}-")
    finally:
        broker.stop()
