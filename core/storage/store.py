"""The store of record: users in Redis, bucketed and compact (core/storage/codec.py), and the all_users.json view of it.

Key layout (all under the namespace, default "swordsec"):
  bucket:<n>    hash  bucket n of BUCKETS: merge key -> "<seq>\t<JSON array>" (latest seq wins); users:<n>
                      held them in 16,384 buckets before, moved on start (upgrade_layout)
  users:count   int   how many users the buckets hold
  export:dirty  set   buckets changed since all_users.json last showed them (merge.lua adds, the exporter takes)
  export:wake   list  one token, pushed by a worker once a merge job is done: a waiting exporter wakes on it
                      (a hint that expires; the version says what changed)
  dict          hash  repeated string -> index; dict:list the strings by index; dict:epoch its token
  version       int   bumped whenever a merge changes a user
  seq           int   ingest sequence counter
  inbox         list  unary users waiting for a drain job, each a msgpack array (push_unary.lua);
                      inbox:pending is set while one is queued; inbox:unreadable holds items no drain
                      could parse (none are ever written by this release)
  batch:<uuid>  str   a batch's users staged for its merge job, deleted by the merge that applies them;
                      staged (zset: blob -> staged at) and staged:jobs (hash: blob -> job id) let a
                      sweep delete the blobs whose job is gone (core/storage/staging.py)
  merge-key     str   the user field this store merges by; another one is refused (MergeKeyMismatch)
  file:<id>     hash  one file's report (id: a 32-hex content fingerprint, or one the server made); file:<id>:done holds the record ranges already merged,
                      file:<id>:cover their union as disjoint intervals (zset "start:end" by start, merge.lua),
                      file:<id>:seen:<attempt> the ranges the current ingest attempt has counted.
                      Only the gRPC server writes a file's report (core/service/ledger.py); the watcher reads it
  files         zset  file id -> last update time (the ledger index, newest first)
  export        hash  what the last all_users.json write held
  counters      hash  Prometheus counters (core/storage/lua/counters.lua, core/ops/metrics.py): monotonic, every process adds

all_users.json lists the users bucket by bucket, by merge key inside a bucket: the same users always
give the same bytes, and an export never holds more than a few buckets in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import redis

from core.config import ConfigError
from core.records import merge_key
from core.storage.codec import BUCKETS, LEGACY_BUCKETS, Codec, Dictionary, StaleDictionary, bucket_of, lua

EXPORT_USERS = 5000  # users fetched per round trip while exporting, about; memory stays flat at any size
NATIVE_FROM = 4 * BUCKETS  # an export reads the buckets by native commands from this many users (_fetch_buckets)
DRAIN_FLAG_TTL = 60
STALE = -1  # what merge.lua and push_unary.lua answer for values encoded against a cleared dictionary
# Fingerprints, adhoc-<hex>, refused-<plain file name>: used as they are (":" separates key parts).
SAFE_REPORT_ID = re.compile(r"[0-9A-Za-z_][0-9A-Za-z._-]{0,199}")
MAX_BAD_SAMPLES = 20  # undecodable values named in the export record
LEGACY_ADHOC_SPAN = re.compile(r"\d+:\d+")  # see Store.merge_staged


class MergeKeyMismatch(ConfigError):
    """The store was built with another merge key; merging by this one would duplicate users."""


def announce_change(connection: redis.Redis, namespace: str) -> None:
    """Wake an exporter waiting in Store.wait_change: a worker calls it once a merge job is recorded done
    (core/queue/taskqueue.py). A hint only: a lost token costs a waiting exporter its WAKE_WAIT at most, and
    what is written is decided by the version and the changed buckets."""
    key = f"{namespace}:export:wake"
    with connection.pipeline(transaction=False) as pipe:
        pipe.lpush(key, 1)
        pipe.ltrim(key, 0, 0)  # one token is as good as many
        pipe.expire(key, 60)  # nothing left behind once nobody waits
        pipe.execute()


class Store:
    def __init__(self, connection: redis.Redis, namespace: str = "swordsec"):
        self.redis = connection
        self.ns = namespace
        self._merge = connection.register_script(lua("merge.lua", with_counters=True))
        self._push_unary = connection.register_script(lua("push_unary.lua"))
        self._finish_file = connection.register_script(lua("finish_file.lua", with_counters=True))
        self._walk = connection.register_script(lua("walk.lua"))
        self._read = connection.register_script(lua("read.lua"))
        self._rebucket = connection.register_script(lua("rebucket.lua"))
        self.codec = Codec(Dictionary(connection, namespace))
        self.bucket_prefix = self.key("bucket") + ":"
        self.dirty_key = self.key("export", "dirty")
        self.count_key = self.key("users", "count")  # users stored (merge.lua keeps it)
        self.wake_key = self.key("export", "wake")
        self.counters_key = self.key("counters")

    def key(self, *parts: str) -> str:
        return ":".join((self.ns, *parts))

    def bucket_key(self, merge_key: str) -> str:
        """The hash that holds the user with this merge key."""
        return self.bucket_prefix + str(bucket_of(merge_key))

    def report_key(self, report_id: str, *parts: str) -> str:
        """The key of a file report (or of its range sets). An id we did not make ourselves (a file name
        in "refused-<name>", say) never reaches a key as text: "x:done" must not name another report's set."""
        if not SAFE_REPORT_ID.fullmatch(report_id):
            report_id = "h-" + hashlib.blake2b(report_id.encode(errors="surrogatepass"), digest_size=16).hexdigest()
        return self.key("file", report_id, *parts)

    def _merge_keys(self, report_id: str, attempt: str = "", blob: str | None = None) -> list[str]:
        return [
            self.key("version"), self.report_key(report_id), self.report_key(report_id, "done"),
            self.key("inbox"), self.report_key(report_id, "seen", attempt), blob or self.key("batch", "none"),
            self.count_key, self.codec.dictionary.keys[2], self.key("inbox", "unreadable"),
            self.key("staged"), self.key("staged", "jobs"), self.counters_key, self.report_key(report_id, "cover"),
            self.dirty_key,
        ]

    # -- writing users -------------------------------------------------------------------------------
    def reserve_seq(self, count: int) -> int:
        """Reserve `count` ingest sequence numbers; return the first."""
        return int(self.redis.incrby(self.key("seq"), count)) - count + 1

    def stage_batch(self, users: list[dict], progress: tuple[str, dict] | None = None) -> tuple[int, str]:
        """stage() without a queue: (first seq, blob)."""
        return self.stage(users, progress)[:2]

    def stage(self, users: list[dict], progress: tuple[str, dict] | None = None,
              queue_key: str | None = None) -> tuple[int, str, int, int]:
        """Reserve ingest sequence numbers and park the users in Redis for a merge job, in one round trip.

        The job then carries a reference, not the users: RQ compresses and keeps a job's data for as long
        as its result lives, while a staged batch is deleted by the merge that applies it.
        progress: (report id, fields) written to the file's report in the same round trip.
        queue_key: an RQ queue whose length comes back too (0 without one).
        Returns (first seq, blob, its size in bytes, queued jobs).
        """
        blob = self.key("batch", uuid.uuid4().hex)
        data = orjson.dumps(users)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.incrby(self.key("seq"), max(1, len(users)))
            pipe.set(blob, data)
            pipe.zadd(self.key("staged"), {blob: time.time()})
            self.count_records(accepted=len(users), client=pipe)
            if progress is not None:
                pipe.hset(self.report_key(progress[0]), mapping={k: _field(v) for k, v in progress[1].items()})
            if queue_key is not None:
                pipe.llen(queue_key)
            replies = pipe.execute()
        queued = int(replies[-1]) if queue_key is not None else 0
        return int(replies[0]) - max(1, len(users)) + 1, blob, len(data), queued

    def applied_ranges(self, report_id: str) -> list[tuple[int, int]]:
        """The union of a file's merged record ranges, as sorted disjoint [start, end) intervals."""
        return self.report_and_ranges(report_id)[1]

    def report_and_ranges(self, report_id: str) -> tuple[dict, list[tuple[int, int]]]:
        """A file's report and the union of its merged ranges (applied_ranges), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.report_key(report_id))
            pipe.zrange(self.report_key(report_id, "cover"), 0, -1)
            raw, members = pipe.execute()
        intervals = []
        for member in members:
            start, _, end = member.decode().partition(":")
            if start.isdigit() and end.isdigit():
                intervals.append((int(start), int(end)))
        return _decode_report(report_id, raw), sorted(intervals)

    def track_staged(self, blob: str, job_id: str) -> None:
        """Remember which job carries a staged batch, so the blob goes when the job does (core/storage/staging.py)."""
        self.track_jobs({blob: job_id})

    def track_jobs(self, jobs: dict[str, str], client=None) -> None:
        """track_staged for several blobs (blob -> job id); client: a pipeline to ride in."""
        (client or self.redis).hset(self.key("staged", "jobs"), mapping=jobs)

    def staged_older_than(self, seconds: float, limit: int = 1000) -> list[tuple[str, str | None]]:
        """Staged batches waiting longer than `seconds`, each with its job id (None: never enqueued)."""
        blobs = self.redis.zrangebyscore(self.key("staged"), "-inf", time.time() - seconds, start=0, num=limit)
        if not blobs:
            return []
        jobs = self.redis.hmget(self.key("staged", "jobs"), blobs)
        return [(b.decode(), j.decode() if j is not None else None) for b, j in zip(blobs, jobs)]

    def drop_staged(self, blobs: list[str]) -> None:
        if blobs:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(*blobs)
                pipe.zrem(self.key("staged"), *blobs)
                pipe.hdel(self.key("staged", "jobs"), *blobs)
                pipe.execute()

    def merge_staged(self, report_id: str, attempt: str, span: str, seq: int, blob: str, key_field: str) -> dict:
        """Merge a staged batch; a retry after it was applied (and its users deleted) changes nothing."""
        if report_id.startswith("adhoc-") and LEGACY_ADHOC_SPAN.fullmatch(span) \
                and not self.redis.sismember(self.report_key(report_id, "done"), span):
            # Queued by a release that named a client stream's batch "<ordinal>:<first record>": merge.lua would
            # read it as a record range and could take it for covered by its neighbours. Not applied under that
            # name, it is applied under one merge.lua takes as a name only (server.adhoc_span's shape).
            span += ":0"
        data = self.redis.get(blob)
        if data is None and not self.redis.sismember(self.report_key(report_id, "done"), span):
            raise RuntimeError(f"the users of batch {span} of {report_id} are missing from {blob}")
        users = orjson.loads(data) if data is not None else []
        return self.merge_batch(report_id, attempt, span, seq, users, key_field, blob=blob)

    def merge_batch(self, report_id: str, attempt: str, span: str, seq: int, users: list[dict], key_field: str,
                    blob: str | None = None) -> dict:
        """Merge one batch; idempotent for a given (report_id, span). Returns new/updated/duplicate counts."""
        new, updated, dup, skipped = self._apply(["batch", span, attempt], self._merge_keys(report_id, attempt, blob),
                                                 users, key_field, [seq + i for i in range(len(users))])
        return {"new": new, "updated": updated, "duplicate": dup, "already_merged": bool(skipped)}

    def _apply(self, head: list, keys: list[str], users: list[dict], key_field: str, seqs: list[int]) -> list[int]:
        """Run merge.lua on these users: [new, updated, duplicate, taken or skipped]."""
        names = [merge_key(user, key_field) for user in users]

        def attempt():
            epoch, rows = self.codec.encode(users, names)
            args: list = [*head, epoch, self.bucket_prefix]
            for key, row, seq in zip(names, rows, seqs):
                args += [bucket_of(key), key, b"%d\t%s" % (seq, row)]
            result = self._merge(keys=keys, args=args)
            return STALE if result[0] == STALE else result

        return self._encoding(attempt)

    def announce_change(self) -> None:
        announce_change(self.redis, self.ns)

    def wait_change(self, timeout: float) -> None:
        """Block until a merge announces a change (or one was announced since the last call), or `timeout`."""
        self.redis.blpop([self.wake_key], timeout=timeout)

    def push_unary(self, user: dict, key_field: str) -> bool:
        """Hand one user to the inbox; True when the caller must enqueue a drain job."""
        key = merge_key(user, key_field)
        keys = [self.key("inbox"), self.key("seq"), self.key("inbox", "pending"), self.codec.dictionary.keys[2],
                self.counters_key]

        def attempt():
            epoch, (row,) = self.codec.encode([user], [key])
            return self._push_unary(keys=keys, args=[bucket_of(key), key, row, DRAIN_FLAG_TTL, epoch])

        return bool(self._encoding(attempt))

    def _encoding(self, attempt):
        """Run a step that encodes users and hands them to a script, again with a fresh dictionary when the
        script answers STALE (the namespace was cleared since this process cached its indexes)."""
        for _ in range(3):
            result = attempt()
            if result != STALE:
                return result
            self.codec.dictionary.forget()
        raise StaleDictionary("the string dictionary keeps being cleared")

    def drain_inbox(self, limit: int = 1000) -> int:
        """Merge up to `limit` inbox users atomically; returns how many were taken."""
        self.redis.delete(self.key("inbox", "pending"))
        return int(self._merge(keys=self._merge_keys("unary"), args=["drain", limit, "", "", self.bucket_prefix])[3])

    def claim_merge_key(self, key_field: str) -> None:
        """Record the merge key of a new store, or refuse one that differs from the recorded key.

        Users merged by email and then by id would be kept twice, under two keys each. A store from
        before the key was recorded adopts the key it is first started with.
        """
        self.redis.set(self.key("merge-key"), key_field, nx=True)
        recorded = (self.redis.get(self.key("merge-key")) or b"").decode()
        if recorded != key_field:
            raise MergeKeyMismatch(
                f"the store in Redis namespace {self.ns!r} merges users by {recorded!r}, not {key_field!r}: "
                f"start with --merge-key {recorded}, or rebuild by {key_field!r} with a new --namespace "
                f"(or after deleting the keys {self.ns}:*) and dropping the source files again")

    def upgrade_layout(self, key_field: str) -> int:
        """Check the merge key (claim_merge_key), then move users kept in an earlier layout (one big hash,
        or 16,384 buckets) into the buckets; returns how many moved.

        Safe to interrupt: the old keys go only at the end, and moving a user twice changes nothing.
        """
        self.claim_merge_key(key_field)
        return self._upgrade_first_layout(key_field) + self._upgrade_buckets()

    def _upgrade_buckets(self) -> int:
        """Move users:<n> (16,384 buckets) into bucket:<n> (BUCKETS), one old bucket per atomic step."""
        moved, old = 0, self.key("users") + ":"
        for name in self.redis.scan_iter(match=old + "*", count=1000, _type="hash"):
            number = name[len(old):]
            if not number.isdigit() or int(number) >= LEGACY_BUCKETS:
                continue
            keys = self.redis.hkeys(name)
            for start in range(0, len(keys), 1000):
                pairs = [part for key in keys[start:start + 1000] for part in (key, bucket_of(key.decode()))]
                moved += int(self._rebucket(keys=[name, self.count_key, self.dirty_key],
                                            args=[self.bucket_prefix, *pairs]))
        return moved

    def _upgrade_first_layout(self, key_field: str) -> int:
        legacy, rev = self.key("users"), self.key("users", "rev")
        if self.redis.type(legacy) != b"hash":
            return 0
        moved, cursor = 0, 0
        while True:
            cursor, chunk = self.redis.hscan(legacy, cursor, count=1000)
            if chunk:
                keys = list(chunk)
                seqs = [int(s or 0) for s in self.redis.hmget(rev, keys)]
                users = [orjson.loads(chunk[k]) for k in keys]
                self._apply(["load", "", ""], self._merge_keys("layout-upgrade"), users, key_field, seqs)
                moved += len(users)
            if cursor == 0:
                break
        self.redis.delete(legacy, rev, self.key("users", "order"))
        return moved

    # -- file reports (the ledger) --------------------------------------------------------------------
    def update_report(self, report_id: str, **fields) -> None:
        mapping = {name: _field(value) for name, value in fields.items() if value is not None}
        with self.redis.pipeline() as pipe:
            pipe.hset(self.report_key(report_id), mapping=mapping)
            pipe.zadd(self.key("files"), {report_id: time.time()})
            pipe.execute()
        self._count_outcome(report_id, fields)

    def _count_outcome(self, report_id: str, fields: dict) -> None:
        """Count a file set aside (rejected) or cut short (damage) when its report first says so in an attempt:
        a report written again with the same outcome (a repeated notice, a final report rewritten) is not
        counted again; a new attempt (begin_attempt) that ends the same way is. The marker is set atomically
        (HSETNX), so two writers of one report count it once."""
        outcomes = (("rejected", fields.get("state") == "rejected"), ("damaged", bool(fields.get("damage"))))
        for outcome, happened in outcomes:
            if happened and self.redis.hsetnx(self.report_key(report_id), f"counted:{outcome}", 1):
                self.redis.hincrby(self.counters_key, f"files:{outcome}", 1)

    def count_records(self, accepted: int = 0, rejected: int = 0, client=None) -> None:
        """The records:accepted / records:rejected counters (validated by the server)."""
        client = client or self.redis
        if accepted:
            client.hincrby(self.counters_key, "records:accepted", accepted)
        if rejected:
            client.hincrby(self.counters_key, "records:rejected", rejected)

    def counters(self) -> dict[str, float]:
        """Every Prometheus counter kept in Redis (core/storage/lua/counters.lua), by field."""
        return {k.decode(): float(v) for k, v in self.redis.hgetall(self.counters_key).items()}

    def begin_attempt(self, report_id: str, **fields) -> str:
        """Start a new ingest attempt of a file: batches of earlier attempts no longer count towards it."""
        attempt = uuid.uuid4().hex[:12]
        report = self.report_key(report_id)
        previous = self.redis.hget(report, "attempt")
        mapping = {name: _field(value) for name, value in fields.items() if value is not None}
        with self.redis.pipeline() as pipe:  # one transaction: no batch sees half a new attempt
            if previous:
                pipe.delete(self.report_key(report_id, "seen", previous.decode()))
            pipe.hset(report, mapping={**mapping, "attempt": attempt, "batches_done": 0})
            pipe.hdel(report, "batches_total", "counted:rejected", "counted:damaged")
            pipe.zadd(self.key("files"), {report_id: time.time()})
            pipe.execute()
        return attempt

    def attempt(self, report_id: str) -> str:
        """The report's current attempt; a stream for a report nobody began starts one."""
        report = self.report_key(report_id)
        self.redis.hsetnx(report, "attempt", uuid.uuid4().hex[:12])
        return self.redis.hget(report, "attempt").decode()

    def finish_report(self, report_id: str, batches: int, attempt: str | None = None, **fields) -> bool:
        """Record the batch count of a fully sent file; True when it is already merged.
        attempt: the current attempt when the caller knows it (it began it), saving its look-up."""
        args: list = [batches]
        for name, value in fields.items():
            if value is not None:
                args += [name, _field(value)]
        self.redis.zadd(self.key("files"), {report_id: time.time()})
        attempt = attempt or self.attempt(report_id)
        keys = [self.report_key(report_id), self.report_key(report_id, "seen", attempt), self.counters_key]
        self._count_outcome(report_id, fields)
        return bool(self._finish_file(keys=keys, args=args))

    def report(self, report_id: str) -> dict:
        return _decode_report(report_id, self.redis.hgetall(self.report_key(report_id)))

    def reports(self, limit: int = 500) -> list[dict]:
        """The newest file reports first."""
        ids = [i.decode() for i in self.redis.zrevrange(self.key("files"), 0, limit - 1)]
        return [report for report in self.reports_for(ids) if len(report) > 1]

    def reports_for(self, ids: list[str]) -> list[dict]:
        """These reports, in one round trip (an unknown id gives just {"id": ...})."""
        with self.redis.pipeline(transaction=False) as pipe:
            for report_id in ids:
                pipe.hgetall(self.report_key(report_id))
            rows = pipe.execute()
        return [_decode_report(i, row) for i, row in zip(ids, rows)]

    def forget_report(self, report_id: str) -> None:
        attempt = self.redis.hget(self.report_key(report_id), "attempt")
        self.redis.delete(self.report_key(report_id), self.report_key(report_id, "done"),
                          self.report_key(report_id, "cover"),
                          self.report_key(report_id, "seen", attempt.decode() if attempt else ""))
        self.redis.zrem(self.key("files"), report_id)

    # -- reading users --------------------------------------------------------------------------------
    def count(self) -> int:
        return int(self.redis.get(self.count_key) or 0)

    def unreadable_inbox(self) -> int:
        """Inbox items no drain could parse (set aside in inbox:unreadable, never merged)."""
        return int(self.redis.llen(self.key("inbox", "unreadable")))

    def version(self) -> int:
        return int(self.redis.get(self.key("version")) or 0)

    def iter_users(self, chunk: int = EXPORT_USERS, on_bad=None, native: bool | None = None):
        """Yield each user as JSON (bytes) in export order, about `chunk` users per round trip (flat memory).

        A stored value that cannot be decoded is skipped and told to on_bad(merge key, reason).
        """
        for _, users in self.iter_buckets(chunk, on_bad, native):
            yield from users

    def iter_buckets(self, chunk: int = EXPORT_USERS, on_bad=None, native: bool | None = None, first: int = 0,
                     stop: int = BUCKETS, epoch: str | None = None):
        """Yield (bucket number, its users by merge key as JSON objects, bytes) for every non-empty bucket of
        first..stop-1 (by default all), in export order.

        A bucket is read whole in one step, and a user never changes bucket, so a merge landing during
        the walk can neither repeat a user nor hide one that was there before it began. The next chunk
        is fetched while this one is decoded: Redis's half of an export then overlaps ours.
        A namespace cleared during the walk raises StaleDictionary: the new users' indexes must never
        be read with the old strings, and the next export starts over.
        native: read by native commands (_fetch_buckets) or by walk.lua; by default native from NATIVE_FROM users.
        epoch: the dictionary epoch an earlier part of the same export read (core/storage/splitwrite.py): another
        one now is a reset between the parts, StaleDictionary as within one.
        """
        dictionary = self.codec.dictionary
        dictionary.sync()
        epoch = dictionary.epoch if epoch is None else _same_epoch(epoch, dictionary.epoch)
        count = self.count()
        if native is None:
            native = count >= NATIVE_FROM
        # About `chunk` users a round trip at the store's size now (buckets fill evenly: the key's hash).
        step = max(16, min(4096, chunk * BUCKETS // max(1, count)))
        walk = [self.bucket_prefix, stop, 0, 0, chunk, dictionary.keys[2], "numbered"]

        def fetch(at: int) -> tuple[str, list[int], list, int]:
            """(epoch, numbers and replies of the non-empty buckets from `at` on, the bucket after them)"""
            if native:
                numbers = range(at, min(at + step, stop))
                stored_epoch, found = self._fetch_buckets(numbers)
                filled = [(number, reply) for number, reply in zip(numbers, found) if reply]
                return stored_epoch, [n for n, _ in filled], [reply for _, reply in filled], numbers.stop
            after, _, stored_epoch, *found = self._walk(args=[*walk[:2], at, *walk[3:]])
            return stored_epoch.decode(), found[::2], found[1::2], after

        if first >= stop:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="export-fetch") as fetcher:
            pending = fetcher.submit(fetch, first)
            while pending is not None:
                stored_epoch, numbers, found, after = pending.result()
                epoch = _same_epoch(epoch, stored_epoch)
                pending = fetcher.submit(fetch, after) if after < stop else None
                decoded = self._render_buckets(numbers, found, on_bad)
                _same_epoch(epoch, dictionary.epoch)
                yield from decoded

    def _fetch_buckets(self, numbers) -> tuple[str, list]:
        """(dictionary epoch, each bucket's HGETALL reply): native commands pipelined on one connection,
        each reply read as it is. Redis's CPU per user read this way is half of walk.lua's (the script copies every
        value into Lua and out again: 0.7 against 1.4 µs at 1M users), but each reply costs this process a few µs
        more: worth it from a few users a bucket (NATIVE_FROM), and most at ten million, where Redis is the busiest
        process of an ingest that exports meanwhile.

        The epoch is read before and after: equal (a new dictionary gets a new random token), no clear came
        between, so every value read was written against it.
        """
        epoch_key = self.codec.dictionary.keys[2]
        commands = [("GET", epoch_key), *(("HGETALL", f"{self.bucket_prefix}{n}") for n in numbers), ("GET", epoch_key)]
        pool = self.redis.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            before, *found, after = [connection.read_response() for _ in commands]
        except BaseException:
            connection.disconnect()  # replies may be left unread on it
            raise
        finally:
            pool.release(connection)
        if before != after:
            raise StaleDictionary("the namespace was cleared during the export; the next one starts over")
        return (before or b"").decode(), found

    def read_buckets(self, numbers: list[int], on_bad=None) -> list[tuple[int, list[bytes]]]:
        """These buckets' users by merge key as JSON objects (bytes), in one round trip and one reply (each
        bucket read whole), rendered in one call."""
        dictionary = self.codec.dictionary
        dictionary.sync()
        stored_epoch, *found = self._read(args=[self.bucket_prefix, dictionary.keys[2], *numbers])
        _same_epoch(dictionary.epoch, stored_epoch.decode())
        return self._render_buckets(numbers, found, on_bad)

    def take_changes(self) -> tuple[int, set[int], str, int]:
        """(version, buckets changed since the last call, export generation, take number), taken in one step.

        The generation is a token made by the first export of a namespace; a cleared namespace loses it,
        which tells an exporter that what it holds describes a store that is gone. The take number counts the
        calls: a copy saved as complete up to take N (core/storage/viewfile.py) is complete only while no later
        call has taken changes it never saw.
        """
        generation = self.key("export", "generation")
        self.redis.set(generation, uuid.uuid4().hex[:12], nx=True)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.key("version"))
            pipe.smembers(self.dirty_key)
            pipe.delete(self.dirty_key)
            pipe.get(generation)
            pipe.incr(self.key("export", "takes"))
            version, dirty, _, token, take = pipe.execute()
        return int(version or 0), {int(b) for b in dirty}, (token or b"").decode(), int(take)

    def export_position(self) -> tuple[str, int]:
        """(export generation, number of the last take_changes): what a saved copy must match to be used."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.key("export", "generation"))
            pipe.get(self.key("export", "takes"))
            token, take = pipe.execute()
        return (token or b"").decode(), int(take or 0)

    def record_export(self, info: dict, bad: list[dict]) -> None:
        """What the last all_users.json write held (the doctor, /metrics and the console read it)."""
        self.redis.hset(self.key("export"), mapping={**{k: str(v) for k, v in info.items()},
                                                     "bad": orjson.dumps(bad).decode()})

    def users_page(self, start: int, count: int) -> list[dict]:
        """`count` users from position `start` of the export order (an undecodable value is left out)."""
        self.codec.dictionary.sync()
        _, skip, _, *found = self._walk(args=[self.bucket_prefix, BUCKETS, 0, start, count,
                                              self.codec.dictionary.keys[2]])
        users = [user for flat in found for user in self._decode_bucket(flat, lambda key, reason: None)]
        return users[skip:skip + count]

    def _render_buckets(self, numbers: list[int], flats: list, on_bad=None):
        """Many buckets' HGETALL replies as [(number, users by merge key as JSON objects)], rendered in one
        call (Codec.render): at 100k users most buckets hold one or two, and a call per bucket would cost more
        than the users."""
        keys, values, ends = [], [], []
        for flat in flats:  # a script's reply is flat; HGETALL's own is a map (RESP3) or flat (RESP2)
            bucket = flat if flat.__class__ is dict else dict(zip(flat[::2], flat[1::2]))
            ordered = sorted(bucket)
            keys += ordered
            values += [bucket[key] for key in ordered]
            ends.append(len(keys))
        bad: list[int] = []

        def report(n: int, reason: str) -> None:
            bad.append(n)
            if on_bad is not None:
                on_bad(keys[n], reason)

        users = self.codec.render(values, None if on_bad is None else report, keys)
        out, at, gone = [], 0, iter(bad)
        skipped, next_bad = 0, next(gone, None)
        for number, end in zip(numbers, ends):
            missing = 0
            while next_bad is not None and next_bad < end:
                missing, next_bad = missing + 1, next(gone, None)
            count = end - skipped - missing - at
            out.append((number, users[at:at + count]))
            at, skipped = at + count, skipped + missing
        return out

    def _decode_bucket(self, flat: list[bytes], on_bad=None) -> list[dict]:
        """A bucket's HGETALL reply (flat, as a script returns it) as users, by merge key."""
        return self._decode_map(dict(zip(flat[::2], flat[1::2])), on_bad)

    def _decode_map(self, bucket: dict[bytes, bytes], on_bad=None) -> list[dict]:
        keys = sorted(bucket)
        report = None if on_bad is None else (lambda n, reason: on_bad(keys[n], reason))
        return self.codec.decode([bucket[key] for key in keys], report, keys)

    def export(self, path: Path) -> dict:
        """Write all_users.json atomically from the store; returns what was written.

        Values that cannot be decoded are left out, counted ("undecodable") and named ("bad": the
        first few merge keys with the reason), so one damaged value never stops the file.
        """
        version = self.version()
        bad: list[dict] = []
        skipped = 0

        def on_bad(key: bytes, reason: str) -> None:
            nonlocal skipped
            skipped += 1
            if len(bad) < MAX_BAD_SAMPLES:
                bad.append({"key": key.decode(errors="replace"), "reason": reason})

        count = write_json_array(path, self.iter_users(on_bad=on_bad))
        info = {"path": str(path), "count": count, "version": version, "written_at": time.time(),
                "undecodable": skipped}
        self.record_export(info, bad)
        return {**info, "bad": bad}

    def last_export(self) -> dict:
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(self.key("export")).items()}
        if not raw:
            return {}
        return {"path": raw["path"], "count": int(raw["count"]), "version": int(raw["version"]),
                "written_at": float(raw["written_at"]), "undecodable": int(raw.get("undecodable", 0)),
                "bad": orjson.loads(raw.get("bad", "[]"))}

    def clear(self) -> None:
        """Delete every key of this namespace (tests, and an operator's explicit reset)."""
        for batch in _chunks(self.redis.scan_iter(match=self.ns + ":*", count=1000), 500):
            self.redis.delete(*batch)


def _same_epoch(expected: str, found: str) -> str:
    """The dictionary epoch an export goes on with; a change (but the first one made) means a reset."""
    if expected and found != expected:
        raise StaleDictionary("the namespace was cleared during the export; the next one starts over")
    return found


def write_json_array(path: Path, values) -> int:
    """Write pre-encoded JSON values as one array, one per line: temp file, flush, fsync, os.replace."""
    from core.storage.privacy import file_mode

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
        # Personal data: owner only (0600) unless --group-readable (0640); mkstemp's 0600 is the floor.
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)
    return count


def sync_directory(folder: Path) -> None:
    """Make the names created, replaced or deleted in `folder` durable (a rename is not, until its directory is)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
        if name.startswith("counted:"):  # the counters' bookkeeping (Store._count_outcome), not the file's
            continue
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
