"""Counting what a real `swordsec-console` process leaves behind, by command line and by parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

# Nothing the console started may outlive it by more than this (issue 16).
LEFT_DEADLINE = 5.0


def program() -> list[str]:
    installed = Path(sys.executable).with_name("swordsec-console")
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "console.cli"]


def living(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def children_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def by_command_line(*markers: str, exclude: frozenset = frozenset()) -> list[psutil.Process]:
    """Every living process whose command line names one of the markers (a data folder, a namespace),
    but for the test's own: itself, tmux (its server keeps the first command line it was given) and
    the pids in `exclude` (the shell that ran the console)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "name"]):
        if process.pid == os.getpid() or process.pid in exclude or (process.info.get("name") or "").startswith("tmux"):
            continue
        line = " ".join(process.info.get("cmdline") or [])
        if any(marker in line for marker in markers) and living(process):
            found.append(process)
    return found


def describe(processes) -> str:
    rows = []
    for p in processes:
        try:
            rows.append(f"pid {p.pid} ppid {p.ppid()} {command_line(p)[:160]}")
        except psutil.NoSuchProcess:
            continue
    return "; ".join(rows)


def assert_nothing_left(started: list[psutil.Process], *markers: str, deadline: float = LEFT_DEADLINE,
                        exclude: frozenset = frozenset()) -> float:
    """Within `deadline` seconds, none of `started` (the console's children, taken while it ran) nor any
    process naming a marker is alive. Returns how long it took."""
    begun = time.monotonic()
    while True:
        left = [p for p in started if living(p)]
        left += [p for p in by_command_line(*markers, exclude=exclude) if p.pid not in {q.pid for q in left}]
        if not left:
            return time.monotonic() - begun
        if time.monotonic() - begun > deadline:
            pytest.fail(f"still running {deadline:g} s after the end: {describe(left)}")
        time.sleep(0.1)


def command_line(process: psutil.Process) -> str:
    """Its command line, or "" once it has ended: a short-lived child (a probe the console runs while it starts)
    can end, and become a zombie, between living() and this read."""
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:  # a ZombieProcess too
        return ""


def wait_children(pid: int, redis: bool, workers: int, timeout: float = 30.0) -> list[psutil.Process]:
    """The console's children once its redis-server (if embedded) and `workers` workers run."""
    deadline = time.monotonic() + timeout
    while True:
        kids = children_of(pid)
        lines = [command_line(k) for k in kids if living(k)]
        have_redis = any("redis-server" in line for line in lines)
        have_workers = sum("core.queue.worker_process" in line for line in lines)
        if have_redis == redis and have_workers >= workers:
            return kids
        if time.monotonic() > deadline:
            pytest.fail(f"the console did not start its children in {timeout:g} s: {lines}")
        time.sleep(0.1)


def wait_line(path: Path, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not in {path} after {timeout:g} s:\n{content[-2000:]}")
        time.sleep(0.1)


# Every console start_headless started, so a test that fails half-way does not leave it running (stop_started).
STARTED: list[subprocess.Popen] = []


def stop_started(grace: float = 15.0) -> None:
    """End the consoles started by the test that just ran and are still running, with their process groups:
    SIGTERM (the console stops its workers and Redis), then SIGKILL past `grace`."""
    while STARTED:
        process = STARTED.pop()
        if process.poll() is not None:
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break


def start_headless(tmp_path: Path, namespace: str, *extra: str, env: dict | None = None,
                   workers: int = 2) -> tuple[subprocess.Popen, Path]:
    """`swordsec-console --no-ui` in a session of its own (as a shell runs a job); output in a file."""
    out = tmp_path / "console.out"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SWORDSEC_") and k != "REDIS_URL"}
    environment.update({"SWORDSEC_NAMESPACE": namespace, **(env or {})})
    args = [*program(), "--no-ui", "--watch", str(tmp_path / "drop"), "--data-dir", str(tmp_path / "data"),
            "--grpc-listen", "127.0.0.1:0", "--workers", str(workers), "--quiet-period", "0.3", *extra]
    with open(out, "wb") as handle:
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=environment,
                                   start_new_session=True)
    STARTED.append(process)
    return process, out
