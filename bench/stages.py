"""CPU per user per stage of one user's path, in microseconds: where the time of an ingest goes.

Run from the repository root with the project's venv:

    .venv/bin/python bench/stages.py                 # 200,000 users in one file, batches of 1,000
    .venv/bin/python bench/stages.py --users 100000 --batch-size 500

Each stage runs alone, in this process, on the same generated file, against a redis-server of its own
(started here, so its CPU time is ours alone): the figure is this process's CPU plus Redis's CPU for the
stage, divided by the users. The stages are the ones a user goes through in `--no-ui --once`:

  read            the client's reader over the file (core SourceReader), records or batches out
  client encode   the rest of the client's batch generator: batch payloads, UserBatch messages
  gRPC            the messages through a real loopback stream (serialise, HTTP/2, parse) to a servicer
                  that only counts them
  validate        the server's decode of users_json and its validation of each user (the typed pass where
                  there is one, else Intake.validate)
  stage           Store.stage_batch: sequence numbers and the staged blob, one round trip a batch
  RQ              enqueue_batch + track_staged, and the worker's job handling around the merge (an
                  inline worker in burst mode over the jobs, minus the merge measured alone); printed
                  again below the total with Intake.GROUP_BATCHES batches a job (merge_batches), where
                  the build has it: what a stream pays while jobs wait in the queue
  merge (worker)  the job's Python in the worker: fetch the blob, decode, codec encode, merge keys
  merge (script)  merge.lua in Redis
  export          Store.export: walk.lua, decode, encode and write of all_users.json

Figures are printed, never asserted; the machine's load average is printed beside them.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid
from concurrent import futures
from pathlib import Path

import grpc
import machine
import orjson

from core.intake.client import Source, UsersClient
from core.intake.ingest import SourceReader
from core.queue.taskqueue import enqueue_batch, make_queue, make_worker
from core.service.server import Intake, Tally
from core.storage.broker import Broker
from core.storage.store import Store
from protobufs import users_pb2, users_pb2_grpc

from benchredis import redis_cpu

try:
    from core.queue.taskqueue import enqueue_batches
except ImportError:  # one job per batch only (main as it was)
    enqueue_batches = None
try:
    from core.records import normalise_json
except ImportError:  # before the typed pass (main as it was)
    normalise_json = None

import datagen


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000, help="users in the one generated file (default 200000)")
    parser.add_argument("--batch-size", type=int, default=1000, help="users per batch (default 1000)")
    return parser.parse_args(argv)


class Meter:
    """CPU seconds of this process (all threads) and of the Redis server, between two readings."""

    def __init__(self, connection):
        self.redis = connection

    def redis_cpu(self) -> float:
        return redis_cpu(self.redis, children=True)

    def __enter__(self):
        self.ours, self.theirs = time.process_time(), self.redis_cpu()
        return self

    def __exit__(self, *exc):
        self.ours = time.process_time() - self.ours
        self.theirs = self.redis_cpu() - self.theirs


class CountingServicer(users_pb2_grpc.UsersServicer):
    """Parses and counts the messages: the transport's cost without the pipeline's."""

    def SendUserBatches(self, request_iterator, context):
        count = sum(1 for _ in request_iterator)
        return users_pb2.IngestReport(status=True, batches=count)


def read_stage(path: Path, batch_size: int):
    """The reader alone: what the client's batch generator consumes."""
    with open(path, "rb") as handle:
        source = Source.read(handle)
        reader = SourceReader(path, handle=source.parse())
        if hasattr(reader, "parts"):  # a reader that hands over whole batches as read (RawBatch)
            return sum(1 for _ in reader.parts(batch_size))
        return sum(1 for _ in reader)


def client_messages(path: Path, batch_size: int) -> list:
    """The client's batch generator, run to the end: every UserBatch it would send."""
    client = UsersClient.__new__(UsersClient)
    with open(path, "rb") as handle:
        source = Source.read(handle)
        reader = SourceReader(path, handle=source.parse())
        header = users_pb2.SourceHeader(name=path.name, size=source.size, fingerprint=source.fingerprint)
        from core.intake.client import SendResult
        result = SendResult(source=path.name)
        return list(client._batches(reader, result, header, batch_size, None, source))


def server_users(intake: Intake, payload: bytes, first: int, tally: Tally) -> list[dict]:
    """What UsersService._batch does with users_json: the typed pass where the server has one, else (and for a
    batch it cannot vouch for) decode and normalise record by record."""
    if normalise_json is not None and (users := normalise_json(payload)) is not None:
        return users
    return intake.validate(orjson.loads(payload), first, tally)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.getLogger("rq").setLevel(logging.WARNING)
    rows: list[tuple[str, float, float]] = []
    grouped_rq = None
    with tempfile.TemporaryDirectory(prefix="swordsec-stages-") as scratch:
        scratch = Path(scratch)
        path = scratch / "users.json"
        print(f"generating {args.users:,} users in one file ...", flush=True)
        datagen.write_array(path, datagen.users(args.users))
        broker = Broker(None, scratch / "redis")
        connection = broker.start()
        meter = Meter(connection)
        users = args.users
        try:
            def record(name: str, m: Meter):
                rows.append((name, m.ours * 1e6 / users, m.theirs * 1e6 / users))

            read_stage(path, args.batch_size)  # once unmeasured: imports, the file in the page cache
            with meter as m:
                read_stage(path, args.batch_size)
            record("read", m)
            with meter as m:
                messages = client_messages(path, args.batch_size)
            read_cpu = rows[-1][1]
            rows.append(("client encode", m.ours * 1e6 / users - read_cpu, 0.0))

            server = grpc.server(futures.ThreadPoolExecutor(4), options=[
                ("grpc.max_receive_message_length", 16 << 20)])
            users_pb2_grpc.add_UsersServicer_to_server(CountingServicer(), server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
                ("grpc.max_send_message_length", 16 << 20)])
            stub = users_pb2_grpc.UsersStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)
            with meter as m:
                stub.SendUserBatches(iter(messages))
            record("gRPC", m)
            channel.close()
            server.stop(0).wait()

            payloads = [(msg.users_json, msg.first_record) for msg in messages if msg.users_json]
            names = {"direct": f"benchstages-{uuid.uuid4().hex[:8]}", "rq": f"benchstages-{uuid.uuid4().hex[:8]}"}
            if enqueue_batches is not None:
                names["grouped"] = f"benchstages-{uuid.uuid4().hex[:8]}"
            intakes = {}
            for kind, ns in names.items():
                store = Store(connection, ns)
                intakes[kind] = Intake(store, make_queue(connection, ns), "email", args.batch_size)
            validated = {}
            for kind, intake in intakes.items():
                tally = Tally()
                with meter as m:
                    validated[kind] = [(server_users(intake, p, first, tally), first) for p, first in payloads]
                if kind == "direct":
                    record("validate", m)
            staged = {}
            for kind, intake in intakes.items():
                with meter as m:
                    staged[kind] = [(intake.store.stage_batch(batch), first, len(batch))
                                    for batch, first in validated[kind]]
                if kind == "direct":
                    record("stage", m)
            direct = intakes["direct"].store
            attempt = direct.begin_attempt("0" * 32, name="bench")
            with meter as m:
                for (seq, blob), first, count in staged["direct"]:
                    direct.merge_staged("0" * 32, attempt, f"{first}:{count}", seq, blob, "email")
            merge_ours, merge_redis = m.ours, m.theirs
            rows.append(("merge (worker)", merge_ours * 1e6 / users, 0.0))
            rows.append(("merge (script)", 0.0, merge_redis * 1e6 / users))

            queued = intakes["rq"]
            rq_attempt = queued.store.begin_attempt("1" * 32, name="bench")
            with meter as m:
                for (seq, blob), first, count in staged["rq"]:
                    job = enqueue_batch(queued.queue, {"namespace": queued.store.ns, "report": "1" * 32,
                                                       "attempt": rq_attempt, "span": f"{first}:{count}",
                                                       "seq": seq, "key": "email", "source": "bench",
                                                       "blob": blob, "count": count})
                    queued.store.track_staged(blob, job.id)
            enqueue_ours, enqueue_redis = m.ours, m.theirs
            worker = make_worker(connection, queued.queue.name, name=f"bench-{uuid.uuid4().hex[:8]}")
            with meter as m:
                worker.work(burst=True, logging_level="WARNING")  # as core/queue/worker_process.py runs it
            rows.append(("RQ", (enqueue_ours + m.ours - merge_ours) * 1e6 / users,
                         (enqueue_redis + m.theirs - merge_redis) * 1e6 / users))
            stored = [direct.count(), queued.store.count()]
            if "grouped" in intakes:
                grouped = intakes["grouped"]
                attempt = grouped.store.begin_attempt("2" * 32, name="bench")
                size = grouped.GROUP_BATCHES
                batches = [{"namespace": grouped.store.ns, "report": "2" * 32, "attempt": attempt,
                            "span": f"{first}:{count}", "seq": seq, "key": "email", "source": "bench",
                            "blob": blob, "count": count} for (seq, blob), first, count in staged["grouped"]]
                with meter as m:
                    for start in range(0, len(batches), size):
                        grouped.flush(batches[start:start + size])
                enqueue_ours, enqueue_redis = m.ours, m.theirs
                worker = make_worker(connection, grouped.queue.name, name=f"bench-{uuid.uuid4().hex[:8]}")
                with meter as m:
                    worker.work(burst=True, logging_level="WARNING")
                grouped_rq = ((enqueue_ours + m.ours - merge_ours) * 1e6 / users,
                              (enqueue_redis + m.theirs - merge_redis) * 1e6 / users)
                stored.append(grouped.store.count())
            if any(count != users for count in stored):
                print(f"WARNING: stored {stored} users, expected {users} each")

            with meter as m:
                direct.export(scratch / "all_users.json")
            record("export", m)
        finally:
            broker.stop()
    for line in machine.describe("redis-server of its own"):
        print(line)
    print(f"CPU per user per stage, {users:,} users in one file, batches of {args.batch_size:,} (µs):")
    print(f"  {'stage':<16} {'ours':>7} {'redis':>7} {'total':>7}")
    for name, ours, theirs in rows:
        print(f"  {name:<16} {ours:7.2f} {theirs:7.2f} {ours + theirs:7.2f}")
    total_ours = sum(r[1] for r in rows)
    total_redis = sum(r[2] for r in rows)
    print(f"  {'total':<16} {total_ours:7.2f} {total_redis:7.2f} {total_ours + total_redis:7.2f}")
    if grouped_rq is not None:
        rq_row = next(row for row in rows if row[0] == "RQ")
        ours, theirs = grouped_rq
        print(f"  {'RQ, grouped':<16} {ours:7.2f} {theirs:7.2f} {ours + theirs:7.2f}   "
              f"({Intake.GROUP_BATCHES} batches a job, merge_batches; the total with it: "
              f"{total_ours + total_redis - sum(rq_row[1:]) + ours + theirs:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
