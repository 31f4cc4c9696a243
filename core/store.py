"""The store of record: one Redis hash of users keyed by merge key, and the all_users.json view of it.

Key layout (all under the namespace, default "swordsec"):
  users         hash  merge key -> user JSON (the input's field names)
  users:rev     hash  merge key -> ingest sequence of the stored record (latest wins)
  users:order   zset  merge keys, all score 0, so the export walks them in a stable byte order
  version       int   bumped whenever a merge changes the users hash
  seq           int   ingest sequence counter
  inbox         list  unary users waiting for a drain job; inbox:pending is set while one is queued
  batch:<uuid>  str   a batch's users staged for its merge job, deleted by the merge that applies them
  file:<id>     hash  one file's report; file:<id>:done holds the record ranges already merged,
                      file:<id>:seen:<attempt> the ranges the current ingest attempt has counted
  files         zset  file id -> last update time (the ledger index, newest first)
  export        hash  what the last all_users.json write held
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
import uuid
from importlib import resources
from pathlib import Path

import orjson
import redis

from core.records import merge_key

EXPORT_CHUNK = 5000
DRAIN_FLAG_TTL = 60


@functools.cache
def _lua(name: str) -> str:
    return resources.files("core.lua").joinpath(name).read_text()


class Store:
    def __init__(self, connection: redis.Redis, namespace: str = "swordsec"):
        self.redis = connection
        self.ns = namespace
        self._merge = connection.register_script(_lua("merge.lua"))
        self._push_unary = connection.register_script(_lua("push_unary.lua"))
        self._finish_file = connection.register_script(_lua("finish_file.lua"))

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def _merge_keys(self, report_id: str, attempt: str = "", blob: str | None = None) -> list[str]:
        return [
            self.key("users"), self.key("users", "rev"), self.key("users", "order"), self.key("version"),
            self.key("file", report_id), self.key("file", report_id, "done"), self.key("inbox"),
            self.key("file", report_id, "seen", attempt), blob or self.key("batch", "none"),
        ]

    # -- writing users -------------------------------------------------------------------------------
    def reserve_seq(self, count: int) -> int:
        """Reserve `count` ingest sequence numbers; return the first."""
        return int(self.redis.incrby(self.key("seq"), count)) - count + 1

    def stage_batch(self, users: list[dict]) -> tuple[int, str]:
        """Reserve ingest sequence numbers and park the users in Redis for a merge job, in one round trip.

        The job then carries a reference, not the users: RQ compresses and keeps a job's data for as long
        as its result lives, while a staged batch is deleted by the merge that applies it.
        """
        blob = self.key("batch", uuid.uuid4().hex)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.incrby(self.key("seq"), max(1, len(users)))
            pipe.set(blob, orjson.dumps(users))
            last, _ = pipe.execute()
        return int(last) - max(1, len(users)) + 1, blob

    def merge_staged(self, report_id: str, attempt: str, span: str, seq: int, blob: str, key_field: str) -> dict:
        """Merge a staged batch; a retry after it was applied (and its users deleted) changes nothing."""
        data = self.redis.get(blob)
        if data is None and not self.redis.sismember(self.key("file", report_id, "done"), span):
            raise RuntimeError(f"the users of batch {span} of {report_id} are missing from {blob}")
        users = orjson.loads(data) if data is not None else []
        return self.merge_batch(report_id, attempt, span, seq, users, key_field, blob=blob)

    def merge_batch(self, report_id: str, attempt: str, span: str, seq: int, users: list[dict], key_field: str,
                    blob: str | None = None) -> dict:
        """Merge one batch; idempotent for a given (report_id, span). Returns new/updated/duplicate counts."""
        args: list = ["batch", span, seq, attempt]
        for user in users:
            args.append(merge_key(user, key_field))
            args.append(orjson.dumps(user))
        new, updated, dup, skipped = self._merge(keys=self._merge_keys(report_id, attempt, blob), args=args)
        return {"new": new, "updated": updated, "duplicate": dup, "already_merged": bool(skipped)}

    def push_unary(self, user: dict, key_field: str) -> bool:
        """Hand one user to the inbox; True when the caller must enqueue a drain job."""
        keys = [self.key("inbox"), self.key("seq"), self.key("inbox", "pending")]
        return bool(self._push_unary(keys=keys, args=[merge_key(user, key_field), orjson.dumps(user), DRAIN_FLAG_TTL]))

    def drain_inbox(self, limit: int = 1000) -> int:
        """Merge up to `limit` inbox users atomically; returns how many were taken."""
        self.redis.delete(self.key("inbox", "pending"))
        return int(self._merge(keys=self._merge_keys("unary"), args=["drain", limit, 0, ""])[3])

    # -- file reports (the ledger) --------------------------------------------------------------------
    def update_report(self, report_id: str, **fields) -> None:
        mapping = {name: _field(value) for name, value in fields.items() if value is not None}
        with self.redis.pipeline() as pipe:
            pipe.hset(self.key("file", report_id), mapping=mapping)
            pipe.zadd(self.key("files"), {report_id: time.time()})
            pipe.execute()

    def begin_attempt(self, report_id: str, **fields) -> str:
        """Start a new ingest attempt of a file: batches of earlier attempts no longer count towards it."""
        attempt = uuid.uuid4().hex[:12]
        report = self.key("file", report_id)
        previous = self.redis.hget(report, "attempt")
        mapping = {name: _field(value) for name, value in fields.items() if value is not None}
        with self.redis.pipeline() as pipe:  # one transaction: no batch sees half a new attempt
            if previous:
                pipe.delete(self.key("file", report_id, "seen", previous.decode()))
            pipe.hset(report, mapping={**mapping, "attempt": attempt, "batches_done": 0})
            pipe.hdel(report, "batches_total")
            pipe.zadd(self.key("files"), {report_id: time.time()})
            pipe.execute()
        return attempt

    def attempt(self, report_id: str) -> str:
        """The report's current attempt; a stream for a report nobody began starts one."""
        report = self.key("file", report_id)
        self.redis.hsetnx(report, "attempt", uuid.uuid4().hex[:12])
        return self.redis.hget(report, "attempt").decode()

    def finish_report(self, report_id: str, batches: int, **fields) -> bool:
        """Record the batch count of a fully sent file; True when it is already merged."""
        args: list = [batches]
        for name, value in fields.items():
            if value is not None:
                args += [name, _field(value)]
        self.redis.zadd(self.key("files"), {report_id: time.time()})
        attempt = self.attempt(report_id)
        keys = [self.key("file", report_id), self.key("file", report_id, "seen", attempt)]
        return bool(self._finish_file(keys=keys, args=args))

    def report(self, report_id: str) -> dict:
        return _decode_report(report_id, self.redis.hgetall(self.key("file", report_id)))

    def reports(self, limit: int = 500) -> list[dict]:
        """The newest file reports first."""
        ids = [i.decode() for i in self.redis.zrevrange(self.key("files"), 0, limit - 1)]
        return [report for report in self.reports_for(ids) if len(report) > 1]

    def reports_for(self, ids: list[str]) -> list[dict]:
        """These reports, in one round trip (an unknown id gives just {"id": ...})."""
        with self.redis.pipeline(transaction=False) as pipe:
            for report_id in ids:
                pipe.hgetall(self.key("file", report_id))
            rows = pipe.execute()
        return [_decode_report(i, row) for i, row in zip(ids, rows)]

    def forget_report(self, report_id: str) -> None:
        attempt = self.redis.hget(self.key("file", report_id), "attempt")
        self.redis.delete(self.key("file", report_id), self.key("file", report_id, "done"),
                          self.key("file", report_id, "seen", attempt.decode() if attempt else ""))
        self.redis.zrem(self.key("files"), report_id)

    # -- reading users --------------------------------------------------------------------------------
    def count(self) -> int:
        return int(self.redis.zcard(self.key("users", "order")))

    def version(self) -> int:
        return int(self.redis.get(self.key("version")) or 0)

    def iter_users(self, chunk: int = EXPORT_CHUNK):
        """Yield raw user JSON (bytes) in merge-key byte order, a chunk at a time (flat memory)."""
        # Paged by key, not by position: a key merged meanwhile ahead of the cursor would shift positions
        # and repeat a user; one merged behind it is left for the next export (the version moved).
        order, users = self.key("users", "order"), self.key("users")
        after = b"-"
        while True:
            keys = self.redis.zrangebylex(order, after, b"+", start=0, num=chunk)
            if not keys:
                return
            for value in self.redis.hmget(users, keys):
                if value is not None:
                    yield value
            after = b"(" + keys[-1]

    def users_page(self, start: int, count: int) -> list[dict]:
        keys = self.redis.zrange(self.key("users", "order"), start, start + count - 1)
        if not keys:
            return []
        return [orjson.loads(v) for v in self.redis.hmget(self.key("users"), keys) if v is not None]

    def export(self, path: Path) -> dict:
        """Write all_users.json atomically from the store; returns what was written."""
        version = self.version()
        count = write_json_array(path, self.iter_users())
        info = {"path": str(path), "count": count, "version": version, "written_at": time.time()}
        self.redis.hset(self.key("export"), mapping={k: str(v) for k, v in info.items()})
        return info

    def last_export(self) -> dict:
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(self.key("export")).items()}
        if not raw:
            return {}
        return {"path": raw["path"], "count": int(raw["count"]), "version": int(raw["version"]),
                "written_at": float(raw["written_at"])}

    def clear(self) -> None:
        """Delete every key of this namespace (tests, and an operator's explicit reset)."""
        for batch in _chunks(self.redis.scan_iter(match=self.ns + ":*", count=1000), 500):
            self.redis.delete(*batch)


def write_json_array(path: Path, values) -> int:
    """Write pre-encoded JSON values as one array, one per line: temp file, flush, fsync, os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as out:
            out.write(b"[")
            for value in values:
                out.write(b"\n" if count == 0 else b",\n")
                out.write(value)
                count += 1
            out.write(b"\n]\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return count


INT_FIELDS = {"size", "read_bytes", "records", "accepted", "rejected", "new", "updated", "duplicate", "batches_total",
              "batches_done", "sent"}
FLOAT_FIELDS = {"started_at", "finished_at", "seconds", "updated_at"}


def _field(value) -> str:
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return str(value)


def _decode_report(report_id: str, raw: dict) -> dict:
    report: dict = {"id": report_id}
    for key, value in raw.items():
        name, text = key.decode(), value.decode()
        if name in INT_FIELDS:
            report[name] = int(text)
        elif name in FLOAT_FIELDS:
            report[name] = float(text)
        elif name == "reasons":
            report[name] = orjson.loads(text)
        else:
            report[name] = text
    return report


def _chunks(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
