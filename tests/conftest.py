"""Real services for tests: Redis (embedded and external), gRPC on a loopback port, worker processes.

Every test gets its own key namespace (which is also its RQ queue name), so no test sees another's keys.
The machine's Redis is used in a database of the suite's own: the highest-numbered empty one, claimed
with a marker key for the session (so two suites at once never share one), unless SWORDSEC_TEST_REDIS_URL
names it. It is left exactly as the suite found it: every key a test creates is deleted after it, RQ's
global keys included (rq:queues, rq:workers, jobs, registries), and the session ends by checking that.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import grpc
import orjson
import pytest
import redis

from core.config import Settings
from core.runtime import Runtime
from core.storage.broker import Broker
from protobufs import users_pb2, users_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
CHALLENGE = ROOT / "tests" / "data" / "challenge"  # copied from the project's public challenge data
EXTERNAL_REDIS = "redis://127.0.0.1:6379"
CLAIM_KEY = "swordsec-test-suite"


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition", explain=None):
    """Poll until predicate() is truthy; fail the test with `message` at the deadline, and with what
    explain() says about the state then (for example pipeline_state(runtime)) when it is given."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            said = ""
            if explain is not None:
                try:
                    said = "\n" + explain()
                except Exception as error:  # the explanation must never hide the timeout itself
                    said = f"\n(no state: {error!r})"
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {message}{said}")
        time.sleep(interval)


def wait_pipeline(runtime, predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "condition"):
    """wait_for on a runtime's pipeline: a timeout says where its jobs are (pipeline_state)."""
    return wait_for(predicate, timeout, interval, message, explain=lambda: pipeline_state(runtime))


def pipeline_state(runtime) -> str:
    """Where a runtime's jobs are, for a test that timed out waiting on them: the queue, RQ's registries
    with each job's status and worker, the workers as RQ and as the supervisor see them, and their logs."""
    from rq import Worker
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

    queue, connection = runtime.queue, runtime.store.redis
    lines = [f"queue {queue.name}: {queue.count} waiting {queue.get_job_ids()[:10]}"]
    for registry in (StartedJobRegistry(queue=queue), FailedJobRegistry(queue=queue)):
        ids = registry.get_job_ids()
        lines.append(f"{type(registry).__name__}: {ids[:10]}")
        for job_id in ids[:5]:
            job = queue.fetch_job(job_id)
            if job is not None:
                lines.append(f"  {job_id}: {job.get_status()} worker={job.worker_name} started={job.started_at}"
                             f" retries_left={job.retries_left} exc={(job.exc_info or '')[-300:]!r}")
    now = time.time()
    for worker in Worker.all(queue=queue):
        beat = worker.last_heartbeat.timestamp() if worker.last_heartbeat else None
        lines.append(f"rq worker {worker.name}: {worker.get_state()} job={worker.get_current_job_id()}"
                     f" heartbeat {now - beat:.1f} s ago" if beat else f"rq worker {worker.name}: no heartbeat")
    for process in runtime.supervisor.processes():
        lines.append(f"process {process}")
        log = runtime.supervisor.log_path(process["name"])
        if log is not None and log.exists():
            lines.append("  log: " + log.read_text(errors="replace")[-800:].replace("\n", "\n       "))
    finished = FinishedJobRegistry(queue=queue).get_job_ids()
    lines.append(f"FinishedJobRegistry: {len(finished)} jobs")
    for job_id in finished[:12]:
        job = queue.fetch_job(job_id)
        if job is not None:
            lines.append(f"  {job_id}: worker={job.worker_name} result={job.return_value()}")
    store = runtime.store
    lines.append(f"users stored: {store.count()}; staged: {connection.zrange(store.key('staged'), 0, -1)}")
    lines.append(f"staged jobs: {connection.hgetall(store.key('staged', 'jobs'))}")
    for report in store.reports()[:5]:
        lines.append(f"report {report}")
    return "\n".join(lines)


def claim_external_database() -> str | None:
    """The URL of the machine's Redis database this session uses, or None when no Redis answers."""
    given = os.environ.get("SWORDSEC_TEST_REDIS_URL")
    try:
        if given:
            redis.Redis.from_url(given, socket_connect_timeout=1).ping()
            return given
        for db in range(15, 0, -1):
            client = redis.Redis.from_url(f"{EXTERNAL_REDIS}/{db}", socket_connect_timeout=1)
            # Empty, then ours: the marker is set only where nothing else is (a crashed suite's expires).
            if client.dbsize() == 0 and client.set(CLAIM_KEY, os.getpid(), nx=True, ex=6 * 3600):
                if client.dbsize() == 1:
                    return f"{EXTERNAL_REDIS}/{db}"
                client.delete(CLAIM_KEY)
        return None
    except redis.RedisError:
        return None


# Fixtures that start a whole pipeline (Redis, gRPC server, worker processes): a test that takes one is an
# end-to-end case, marked slow automatically, so `pytest -m "not slow"` is the quick unit and component layer.
PIPELINE_FIXTURES = {"runtime_factory", "own_redis", "make_runtime"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if PIPELINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


class Footprint:
    """What a Redis database held when the suite began: its keys and the members of its sets.

    RQ keeps global sets (rq:queues, rq:workers) that every test's queue and workers join; restoring
    removes what joined them as well as every key that was not there.
    """

    def __init__(self, client: redis.Redis):
        self.client = client
        self.keys = set(client.scan_iter(count=1000))
        self.sets = {key: client.smembers(key) for key in self.keys if client.type(key) == b"set"}

    def leftovers(self) -> tuple[set, dict]:
        now = set(self.client.scan_iter(count=1000))
        extra_members = {key: self.client.smembers(key) - members for key, members in self.sets.items()
                         if key in now}
        return now - self.keys, {key: members for key, members in extra_members.items() if members}

    def restore(self) -> None:
        keys, members = self.leftovers()
        for chunk in _chunks(sorted(keys), 500):
            self.client.delete(*chunk)
        for key, extra in members.items():
            self.client.srem(key, *extra)


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@pytest.fixture(scope="session")
def external_url():
    """The claimed database of the machine's Redis (None without one); released when the suite ends."""
    url = claim_external_database()
    yield url
    if url and not os.environ.get("SWORDSEC_TEST_REDIS_URL"):
        redis.Redis.from_url(url).delete(CLAIM_KEY)


@pytest.fixture(scope="session")
def external_footprint(external_url):
    """The machine's Redis as the suite found it; checked once more when the suite ends."""
    if external_url is None:
        yield None
        return
    client = redis.Redis.from_url(external_url)
    footprint = Footprint(client)
    yield footprint
    # Workers of the last test may still be writing their final heartbeat: give them a moment, not forever.
    deadline = time.monotonic() + 10
    while any(footprint.leftovers()) and time.monotonic() < deadline:
        footprint.restore()
        time.sleep(0.2)
    keys, members = footprint.leftovers()
    client.close()
    assert not keys and not members, f"the suite left keys in {external_url}: {sorted(keys)[:5]} {members}"


@pytest.fixture(autouse=True)
def external_left_as_found(external_footprint):
    """Every test leaves the machine's Redis as the suite found it, whatever it did there."""
    yield
    if external_footprint is not None:
        external_footprint.restore()


@pytest.fixture(scope="session")
def embedded_broker(tmp_path_factory):
    broker = Broker(None, tmp_path_factory.mktemp("embedded-redis"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(params=["embedded", "external"])
def redis_url(request, embedded_broker, external_url) -> str:
    """Each test that takes this runs twice: on the embedded Redis and on the machine's Redis."""
    if request.param == "embedded":
        return embedded_broker.url
    if external_url is None:
        pytest.skip(f"no external Redis answers at {EXTERNAL_REDIS} with a free database "
                    f"(set SWORDSEC_TEST_REDIS_URL to test one)")
    return external_url


@pytest.fixture
def namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def connection(redis_url, namespace):
    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter(match=f"{namespace}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def make_settings(tmp_path, redis_url, namespace):
    def build(**overrides) -> Settings:
        values = dict(watch=tmp_path / "drop", data_dir=tmp_path / "data", redis_url=redis_url,
                      grpc_listen="127.0.0.1:0", workers=2, namespace=namespace, quiet_period=0.3)
        values.update(overrides)
        return Settings.build(values, environ={})

    return build


@pytest.fixture
def runtime_factory(make_settings, connection):
    started: list[Runtime] = []

    def start(watch: bool = True, **overrides) -> Runtime:
        runtime = Runtime(make_settings(**overrides), watch=watch)
        started.append(runtime)
        return runtime.start()

    yield start
    for runtime in started:
        runtime.stop()


class OwnRedis:
    """A runtime on an embedded Redis of its own, for tests that stop and restart Redis under it."""

    def __init__(self, tmp_path: Path, namespace: str):
        self.tmp_path, self.namespace = tmp_path, namespace
        self.broker = Broker(None, tmp_path / "redis-data")
        self.runtime: Runtime | None = None

    def start(self, **overrides) -> Runtime:
        self.broker.start()
        values = dict(watch=self.tmp_path / "drop", data_dir=self.tmp_path / "data", redis_url=self.broker.url,
                      grpc_listen="127.0.0.1:0", workers=0, namespace=self.namespace)
        values.update(overrides)
        self.runtime = Runtime(Settings.build(values, environ={}), watch=False).start()
        return self.runtime

    def restart_redis(self) -> None:
        """A new redis-server on the same data folder: same socket, password and AOF."""
        self.broker = Broker(None, self.tmp_path / "redis-data")
        self.broker.start()


@pytest.fixture
def own_redis(tmp_path, namespace):
    own = OwnRedis(tmp_path, namespace)
    yield own
    if own.runtime is not None:
        own.runtime.stop()
    own.broker.stop()


@pytest.fixture(autouse=True)
def _no_console_left_running():
    """A test that fails before it stops a console it started (lifecycle_helpers.start_headless) leaves nothing
    running for the next ones."""
    yield
    from lifecycle_helpers import stop_started

    stop_started()


def copy_challenge(folder: Path, names=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    assert len(list(CHALLENGE.glob("*.json"))) == 10, f"the ten challenge files are missing from {CHALLENGE}"
    copied = []
    for source in sorted(CHALLENGE.glob("*.json")):
        if names is None or source.name in names:
            copied.append(Path(shutil.copy(source, folder / source.name)))
    return copied


def stream_in_background(runtime, batches: list[list[dict]], source: str) -> tuple[threading.Thread, dict]:
    """Send these batches as one SendUserBatches stream (distinct record ranges) from a thread: (thread, result),
    result["reply"] the server's answer once the thread ends."""
    result: dict = {}
    size = len(batches[0]) if batches else 0

    def send():
        with grpc.insecure_channel(f"127.0.0.1:{runtime.server.port}") as channel:
            stub = users_pb2_grpc.UsersStub(channel)
            # Distinct record ranges: a range already applied is recognised as a retry and skipped.
            requests = (users_pb2.UserBatch(users_json=orjson.dumps(b), source=source, index=i,
                                            first_record=size * i) for i, b in enumerate(batches))
            result["reply"] = stub.SendUserBatches(requests, timeout=120)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender, result


def make_users(count: int, tag: str = "u", start: int = 0) -> list[dict]:
    """Users in the challenge files' shape; ids restart at 1 like every real file, emails are unique per tag."""
    return [{"id": i + 1, "first_name": f"First{i}", "last_name": f"Last{i}", "email": f"{tag}{start + i}@example.org",
             "gender": "Female" if i % 2 else "Male", "ip_address": f"10.{i % 250}.{i % 7}.{i % 9}",
             "user_name": f"{tag}{start + i}", "agent": "Mozilla/5.0 (X11; Linux x86_64) Test/1.0",
             "country": "Turkey"} for i in range(count)]


def reports_by_name(store) -> dict:
    return {r["name"]: r for r in store.reports()}
