"""A fixed system for snapshot tests: the live dashboard has clocks, pids and rates that never repeat,
so these screens are drawn from one hand-made core.ops.snapshot Snapshot and a tiny in-memory store."""

from __future__ import annotations

import orjson

from core.ops.doctor import Problem
from core.ops.events import Event
from core.ops.snapshot import FailedJob, GrpcInfo, RedisInfo, Snapshot, WatcherInfo, WorkerInfo

NOW = 1_800_000_000.0
FIRST = ["Andrus", "Ingar", "Amalee", "Bette", "Cyril", "Dora", "Egon", "Fenna"]
USERS = [{"id": i + 1, "first_name": FIRST[i % 8], "last_name": f"Lastname{i:03d}",
          "email": f"user{i:03d}@example.com", "gender": "Female" if i % 2 else "Male",
          "ip_address": f"10.0.{i // 250}.{i % 250}", "user_name": f"user{i:03d}", "agent": "Mozilla/5.0",
          "country": "Sweden"} for i in range(250)]

REPORTS = (
    {"id": "a" * 32, "name": "7.json", "path": "drop/7.json", "size": 301_000, "state": "streaming", "records": 400,
     "read_bytes": 120_400,
     "accepted": 0, "rejected": 0, "batches_total": 0, "batches_done": 0, "started_at": NOW - 1},
    {"id": "b" * 32, "name": "6.json", "path": "drop/6.json", "size": 292_353, "state": "merged", "records": 977,
     "accepted": 977, "rejected": 0, "new": 977, "updated": 0, "duplicate": 0, "batches_total": 1, "batches_done": 1,
     "damage": "truncated: the file ends inside record 978 (at byte 292353)", "reasons": [], "seconds": 0.05,
     "started_at": NOW - 20, "finished_at": NOW - 19},
    {"id": "c" * 32, "name": "5.json", "path": "drop/5.json", "size": 298_000, "state": "queued", "records": 1000,
     "accepted": 998, "rejected": 2, "new": 0, "updated": 0, "duplicate": 0, "batches_total": 4,
     "batches_done": 1, "damage": "", "seconds": 0.04, "started_at": NOW - 5, "finished_at": NOW - 4,
     "reasons": ["record 17: email is not an email address", "record 802: id does not fit in int32"]},
    {"id": "d" * 32, "name": "1.json", "path": "drop/1.json", "size": 297_844, "state": "merged", "records": 1000,
     "accepted": 1000, "rejected": 0, "new": 1000, "updated": 0, "duplicate": 0, "batches_total": 1,
     "batches_done": 1, "damage": "", "reasons": [], "seconds": 0.03, "started_at": NOW - 30, "finished_at": NOW - 29},
)

SNAPSHOT = Snapshot(
    taken_at=NOW,
    redis=RedisInfo("unix:/srv/swordsec/data/redis/redis.sock?password=***", True, True, "7.2.4", "3.21M"),
    grpc=GrpcInfo("127.0.0.1:50051", True, open_streams=1, calls=4),
    watcher=WatcherInfo("/srv/swordsec/drop", True, False, 1, current="7.json", waiting_names=("8.json",)),
    workers=(WorkerInfo("swordsec-host-1", 101, "busy", "batch-c-1-1", 12, 1, NOW - 2),
             WorkerInfo("swordsec-host-2", 102, "idle", "", 10, 0, NOW - 4),
             WorkerInfo("swordsec-host-3", 103, "dead", local=False)),
    desired_workers=2,
    queue={"queued": 2, "started": 1, "finished": 22, "failed": 1, "deferred": 0, "scheduled": 0, "canceled": 0},
    users=2977, users_rate=1500.0, rate_history=(0, 0, 200, 900, 1500, 1400, 1500, 1600, 1500),
    jobs_rate=1.5, backlog=3, backlog_trend=1, eta=2.0, files=REPORTS,
    export={"path": "/srv/swordsec/data/all_users.json", "count": 1977, "version": 7, "written_at": NOW - 3},
    output_path="/srv/swordsec/data/all_users.json",
    failed=(FailedJob("broken-1", "merge 0 users of 9.json",
                      "Traceback (most recent call last):\n  File \"core/queue/jobs.py\", line 29, in merge_batch\n"
                      "KeyError: 'namespace'\n", NOW - 60),),
    problems=(Problem("warning", "1 worker(s) died recently",
                      "the supervisor restarts them and requeues their jobs; see the event log"),
              Problem("warning", "1 failed job(s)",
                      "open Failed jobs, read the traceback (enter), then requeue (r) or delete (d)")),
    events=(Event("info", "redis: embedded at unix:/srv/swordsec/data/redis/redis.sock?password=***", NOW - 40),
            Event("info", "1.json: queued: 1000 records, 1000 accepted, 0 rejected in 0.03 s", NOW - 29),
            Event("warning", "6.json: queued: 977 records, 977 accepted; truncated: the file ends inside record 978",
                  NOW - 19),
            Event("warning", "worker swordsec-host-3 (pid 103) exited with -9; restarting in 0.5 s", NOW - 10)),
)


class FakeStore:
    def users_page(self, start: int, count: int) -> list[dict]:
        return USERS[start:start + count]

    def iter_users(self):
        for user in USERS:
            yield orjson.dumps(user)


class FakeRuntime:
    """Enough of core.runtime.Runtime for the console: a fixed snapshot, a store, no-op lifecycle."""

    def __init__(self, snapshot: Snapshot = SNAPSHOT):
        self._snapshot = snapshot
        self.store = FakeStore()
        self.control = None

    def start(self):
        return self

    def stop(self) -> None:
        pass

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def emit(self, level: str, text: str) -> None:
        pass
