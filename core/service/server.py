"""The gRPC `Users` service: convert, validate, hand to Redis, report. No merging happens here.

An answer says ok only after the users it covers are in Redis: a batch as an RQ job, a unary user in
the inbox that a drain job empties. Health and reflection are registered; stop() is graceful.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import shutil
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import grpc
import msgspec
import orjson
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.config import join_address, parse_address
from core.ops.trace import mark
from core.queue.taskqueue import enqueue_batches, enqueue_drain
from core.records import RecordError, normalise, normalise_json, split_records
from core.service import security
from core.service.admission import DEFAULT_IDLE_TIMEOUT, MAX_BATCH_USERS, RESERVED_THREADS, Admission
from core.service.backpressure import StagedBytes
from core.service.lane import StagingLane
from core.service.ledger import RAW_CHUNK_BYTES, Ledger, SourceStream
from core.storage.store import Store
from core.tempdirs import make_private_dir
from protobufs import users_pb2, users_pb2_grpc

SERVICE_NAME = users_pb2.DESCRIPTOR.services_by_name["Users"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_REASONS = 20
PB_FIELDS = tuple(f.name for f in users_pb2.UserRequest.DESCRIPTOR.fields)
# A file_id is ours when it is what the watcher makes (core.intake.dropfiles.fingerprint): 32 lowercase hex digits.
FILE_ID = re.compile(r"[0-9a-f]{32}")
RECORD_LIMIT = 2**63  # a range must end below this (it is stored and compared as a number)


class BadBatch(ValueError):
    """A batch that breaks the identity contract of protobufs/users.proto; the call ends INVALID_ARGUMENT."""


class Ranges:
    """The record ranges one stream sent for one file: a new one must not overlap any of them.

    Kept as disjoint sorted intervals, merged when they touch, so a stream sent in order holds one.
    An empty range (a batch whose records were all rejected by the client) overlaps nothing, but the
    same empty range twice would be one batch identity sent twice.
    """

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.empty: set[int] = set()

    def add(self, start: int, end: int) -> None:
        if start == end:
            if start in self.empty:
                raise BadBatch(f"record range {start}:0 was already sent in this stream")
            self.empty.add(start)
            return
        i = bisect.bisect_right(self.starts, start)
        if (i and self.ends[i - 1] > start) or (i < len(self.starts) and self.starts[i] < end):
            raise BadBatch(f"record range {start}:{end - start} overlaps a range already sent in this stream")
        if i and self.ends[i - 1] == start:  # touches the one before: extend it
            self.ends[i - 1] = end
            i -= 1
        else:
            self.starts.insert(i, start)
            self.ends.insert(i, end)
        if i + 1 < len(self.starts) and self.starts[i + 1] == self.ends[i]:  # and now the one after
            self.ends[i] = self.ends.pop(i + 1)
            self.starts.pop(i + 1)


def batch_span(batch, records: int, ordinal: int, ranges: dict[str, Ranges], file_id: str | None = None) -> str:
    """The batch's identity inside its report, or BadBatch (see UserBatch in protobufs/users.proto).

    With a file_id: its record range "first:count", checked against the ranges this stream sent.
    Without: a batch of its own stream (the report is the stream's), so it is never taken for another.
    file_id: the source's, when the stream began with a header (the batch's own may then be empty).
    """
    file_id = batch.file_id if file_id is None else file_id
    if file_id and not FILE_ID.fullmatch(file_id):
        raise BadBatch(f"file_id {file_id[:80]!r} is not a file fingerprint (32 lowercase hex digits); "
                       f"leave it empty for an ad-hoc send")
    covered = batch.record_count or records
    if covered < records:
        raise BadBatch(f"record_count {covered} is less than the {records} records the batch holds")
    start, end = batch.first_record, batch.first_record + covered
    if end >= RECORD_LIMIT:
        raise BadBatch(f"record range {start}:{covered} ends past {RECORD_LIMIT}")
    if not file_id:
        return adhoc_span(ordinal, start, covered)
    ranges.setdefault(file_id, Ranges()).add(start, end)
    return f"{start}:{covered}"


def adhoc_span(ordinal: int, first: int, count: int) -> str:
    """A batch of a stream without a file: three numbers, so merge.lua never reads it as a record range
    ("first:count"). Named "<ordinal>:<first>", batch 3 of a client stream ("3:3000") was once taken for
    records 3-3002, covered by batches 2 and 4 merged before it, and its users were skipped."""
    return f"{ordinal}:{first}:{count}"


def source_name(text: str) -> str:
    """A header's name as shown in reports and used for a quarantine copy: its last path part, printable."""
    name = Path(text.replace("\\", "/")).name
    name = "".join(c if c.isprintable() else "?" for c in name)[:200]
    return name if name not in ("", ".", "..") else "unnamed"


def users_of(payload: bytes) -> list:
    """users_json's records, or BadBatch when it is not a JSON array. An array whose records do not all decode
    (a number out of range, invalid UTF-8 in one string) is split, so only those records are rejected (each a
    RecordError, which normalise raises)."""
    try:
        records = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        try:
            return split_records(payload)
        except (msgspec.DecodeError, RecursionError):
            raise BadBatch(f"users_json: {error}") from None
    if not isinstance(records, list):
        raise BadBatch("users_json is not a JSON array")
    return records


def user_from_pb(message: users_pb2.UserRequest) -> dict:
    return {name: getattr(message, name) for name in PB_FIELDS}


class Intake:
    """Validates users and hands them to Redis; shared by every RPC so they behave alike."""

    def __init__(self, store: Store, queue, key_field: str, batch_size: int, max_backlog: int = 0, *,
                 quarantine: Path | None = None, on_event=None):
        """quarantine: where copies of damaged files sent with a header go; on_event(level, text, **fields)
        hears the ledger's lines (merged, already ingested, rejected)."""
        self.store = store
        self.queue = queue
        self.key_field = key_field
        self.batch_size = batch_size
        self.max_backlog = max_backlog
        self.ledger = Ledger(store, quarantine, on_event)

    # Set by GrpcServer: what waits for a merge, in batches (a job may carry several) and in bytes staged.
    staged_bytes_bound: StagedBytes | None = None
    # A stream's batches ride one job, up to this many (merge.lua still runs once per batch: Redis is never
    # held longer than by one), while at least GROUP_WHEN_QUEUED jobs wait before them (see enqueue).
    GROUP_BATCHES = 8
    GROUP_WHEN_QUEUED = 2

    def hold(self, context, group: list[dict] | None = None) -> None:
        """Back-pressure: while the batches queued (and held in `group`) are over their bound, or the users staged
        for them are over their bound in bytes, stop reading the stream. gRPC flow control then stalls the sender,
        so a huge drop folder cannot flood Redis's memory with queued batches. An empty queue always admits a
        batch. Held batches go to the queue before the stream waits: the workers may as well have them."""
        bound = self.staged_bytes_bound
        if not self.max_backlog and (bound is None or not bound.max_bytes):
            return
        while context.is_active() and self._over(bound, group or []):
            self.flush(group or [])
            time.sleep(0.05)

    def _over(self, bound: StagedBytes | None, group: list[dict]) -> bool:
        if bound is None:  # no measurement: the backlog in jobs
            return len(self.queue) + len(group) >= self.max_backlog
        try:
            batches, size = bound.measure()
        except redis.RedisError:
            return False  # the next enqueue meets the same error and reports it
        size += sum(batch["bytes"] for batch in group)
        return bool((self.max_backlog and batches + len(group) >= self.max_backlog)
                    or (bound.max_bytes and size >= bound.max_bytes))

    def validate(self, records, first_record: int, report: "Tally", count: bool = True) -> list[dict]:
        """count: add the rejections to the records:rejected counter (not for a range merged before)."""
        users = []
        for offset, record in enumerate(records):
            try:
                users.append(normalise(record))
            except RecordError as error:
                report.reject(first_record + offset, str(error))
        if count and (rejected := len(records) - len(users)):
            self.store.count_records(rejected=rejected)  # accepted ones are counted as they are staged
        return users

    def enqueue(self, report_id: str, attempt: str, source: str, span: str, users: list[dict],
                progress: dict | None = None, group: list[dict] | None = None) -> None:
        """One staged batch per call, even an empty one (all rejected): the file's batch tally must complete.
        progress: fields of the file's report written with the staging (records read, bytes read).
        group: a stream's batches held for one job (None: a job of its own now). A batch is held only while
        GROUP_WHEN_QUEUED jobs already wait (the workers have work: holding it delays nothing), and the group
        goes as one job at GROUP_BATCHES, at a batch that finds the queue short, and at the stream's end
        (flush). RQ's bookkeeping (~18 round trips and ~3 ms of CPU a job) is then paid once for the group."""
        seq, blob, size, queued = self.store.stage(users, (report_id, progress) if progress else None,
                                                   queue_key=self.queue.key)
        batch = {"namespace": self.store.ns, "report": report_id, "attempt": attempt, "span": span, "seq": seq,
                 "key": self.key_field, "source": source, "blob": blob, "count": len(users), "bytes": size}
        if group is None:
            self.flush([batch])
            return
        group.append(batch)
        if queued < self.GROUP_WHEN_QUEUED or len(group) >= self.GROUP_BATCHES:
            self.flush(group)

    def flush(self, group: list[dict]) -> None:
        """Enqueue the held batches as one job, and name it as each blob's job (for the sweep), in one round trip."""
        if not group:
            return
        with self.queue.connection.pipeline() as pipe:
            job = enqueue_batches(self.queue, group, pipeline=pipe)
            self.store.track_jobs({batch["blob"]: job.id for batch in group}, client=pipe)
            pipe.execute()
        group.clear()
        mark("enqueued", job.id)

    def unary(self, user: dict) -> None:
        if self.store.push_unary(user, self.key_field):
            try:
                enqueue_drain(self.queue, self.store.ns)
            except redis.RedisError:
                self.store.redis.delete(self.store.key("inbox", "pending"))  # let the next call try again
                raise

    def drain_leftovers(self) -> None:
        """Unary users a previous run accepted but never drained (it died first) are merged now."""
        if self.store.redis.llen(self.store.key("inbox")):
            enqueue_drain(self.queue, self.store.ns)


class Tally:
    def __init__(self):
        self.accepted = 0
        self.rejected = 0
        self.batches = 0
        self.reasons: list[tuple[int, str]] = []

    def reject(self, record: int, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append((record, reason))

    def message(self) -> str:
        text = f"accepted {self.accepted}, rejected {self.rejected}"
        if self.reasons:
            record, reason = self.reasons[0]
            text += f" (first: record {record}: {reason})"
        return text


class UsersService(users_pb2_grpc.UsersServicer):
    def __init__(self, intake: Intake):
        self.intake = intake
        self.calls_done = 0
        self.open_streams = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _call(self, context, stream: bool):
        """Counts the call for the status panel, and turns a lost store into UNAVAILABLE, not a traceback.
        The answer comes only at the end, so a failed call was never told any of its users were accepted."""
        with self._lock:
            self.calls_done += 1
            self.open_streams += stream
        try:
            yield
        except redis.RedisError as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the store (Redis) is unavailable: {error}")
        finally:
            with self._lock:
                self.open_streams -= stream

    def SendUserInfo(self, request, context):
        tally = Tally()
        with self._call(context, False):
            try:
                user = normalise(user_from_pb(request))
            except RecordError as error:
                self.intake.store.count_records(rejected=1)
                return users_pb2.UserResponse(status=False, message=str(error))
            self.intake.unary(user)
            tally.accepted = 1
            return users_pb2.UserResponse(status=True, message="ok")

    def SendUserInfoClientStream(self, request_iterator, context):
        tally, report_id = Tally(), "adhoc-" + uuid.uuid4().hex
        pending: list[dict] = []
        record = first = 0
        with self._call(context, True):
            attempt = self.intake.store.attempt(report_id)
            for request in request_iterator:
                pending.extend(self.intake.validate([user_from_pb(request)], record, tally))
                record += 1
                if len(pending) >= self.intake.batch_size:
                    self.intake.hold(context)
                    self._flush(report_id, attempt, first, tally, pending)
                    first = record
            if pending:
                self._flush(report_id, attempt, first, tally, pending)
            self.intake.store.finish_report(report_id, tally.batches, name="client stream", state="queued",
                                            records=record, accepted=tally.accepted, rejected=tally.rejected)
        return users_pb2.UserResponse(status=tally.rejected == 0, message=tally.message())

    def _flush(self, report_id: str, attempt: str, first: int, tally: Tally, pending: list[dict]) -> None:
        # The stream's own report: the batch ordinal alone keeps every batch distinct.
        self.intake.enqueue(report_id, attempt, "client stream", adhoc_span(tally.batches, first, len(pending)),
                            list(pending))
        tally.accepted += len(pending)
        tally.batches += 1
        pending.clear()

    def SendUserBatches(self, request_iterator, context):
        tally = Tally()
        adhoc = "adhoc-" + uuid.uuid4().hex
        attempts: dict[str, str] = {}
        ranges: dict[str, Ranges] = {}
        ledger = self.intake.ledger
        source: SourceStream | None = None
        group: list[dict] = []  # staged batches held for one job (Intake.enqueue), by the lane's thread
        lane = StagingLane()
        try:
            with self._call(context, True):
                for batch in request_iterator:
                    if source is not None and source.trailer is not None:
                        self._after_trailer(batch, source, tally, context)
                        continue
                    if batch.HasField("header"):
                        if tally.batches or source is not None:
                            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                          f"batch {tally.batches}: a header comes on the first batch only")
                        source, answer = self._begin(batch, context)
                        if source is None:  # already ingested or busy: nothing more is read
                            return answer
                        attempts[source.file_id] = source.attempt
                    elif source is not None and batch.file_id not in ("", source.file_id):
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"batch {tally.batches}: file_id is not the header's fingerprint")
                    carries = batch.users or batch.users_json or batch.record_count
                    if carries or source is None or not (batch.HasField("header") or batch.HasField("trailer")):
                        # (a header or a trailer alone is not a batch: it covers no records)
                        self._batch(batch, source, tally, adhoc, attempts, ranges, context, group, lane)
                    if source is not None and batch.HasField("trailer"):
                        source.trailer = batch.trailer
                lane.close()
                self.intake.flush(group)
                if adhoc in attempts:
                    self.intake.store.finish_report(adhoc, tally.batches, name="send", state="queued",
                                                    accepted=tally.accepted, rejected=tally.rejected)
                state = ""
                if source is not None:
                    state = "streaming"  # no trailer: the file is resumed when it is sent again
                    if source.trailer is not None:
                        trailer = source.trailer
                        reasons = tally.reasons + [(r.record, r.reason) for r in trailer.rejections]
                        state = ledger.finish(source, tally.batches, tally.accepted,
                                              tally.rejected + trailer.rejected, reasons[:MAX_REASONS])
        finally:
            lane.close(raise_error=False)  # what it staged before a failure is queued, not left to the sweep
            self._flush_held(group)
            if source is not None:
                ledger.release(source.file_id)
                source.close()
        return users_pb2.IngestReport(
            status=tally.rejected == 0, message=tally.message(), accepted=tally.accepted, rejected=tally.rejected,
            batches=tally.batches, rejections=[users_pb2.Rejection(record=r, reason=m) for r, m in tally.reasons],
            file_id=source.file_id if source is not None else "", state=state,
        )

    def _flush_held(self, group: list[dict]) -> None:
        """A stream that ended early (aborted, cancelled, the store gone) still queues the batches it staged, as
        when each had its own job; with Redis gone they are swept (core/storage/staging.py) and resent."""
        try:
            self.intake.flush(group)
        except redis.RedisError:
            pass

    def _begin(self, batch, context) -> tuple[SourceStream | None, users_pb2.IngestReport | None]:
        """A stream that says what it carries: the ledger begins the file's attempt, or answers at once."""
        header = batch.header
        fingerprint = header.fingerprint
        if not fingerprint and batch.HasField("trailer"):
            return None, self._notice(batch, context)
        if not FILE_ID.fullmatch(fingerprint):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"batch 0: header fingerprint {fingerprint[:80]!r} is not 32 lowercase hex digits")
        if batch.file_id not in ("", fingerprint):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "batch 0: file_id is not the header's fingerprint")
        name = source_name(header.name or batch.source)
        source, why = self.intake.ledger.begin(fingerprint, name, header.size, context.peer())
        if source is None:
            return None, users_pb2.IngestReport(status=True, message=f"{name}: {why}", file_id=fingerprint,
                                                state=why)
        return source, None

    def _notice(self, batch, context) -> users_pb2.IngestReport:
        """A source its sender could not read at all: recorded as rejected under its name, nothing else read."""
        trailer = batch.trailer
        damage = trailer.damage.strip().splitlines()[0][:500] if trailer.damage.strip() else ""
        if batch.users or batch.users_json or batch.record_count or trailer.records or not damage:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "batch 0: a header without a fingerprint is a notice: no records, a trailer with the damage")
        name = source_name(batch.header.name or batch.source)
        report_id = self.intake.ledger.refuse(name, damage, context.peer())
        return users_pb2.IngestReport(status=False, message=f"{name}: rejected: {damage}", file_id=report_id,
                                      state="rejected")

    def _batch(self, batch, source: SourceStream | None, tally: Tally, adhoc: str, attempts: dict[str, str],
               ranges: dict[str, Ranges], context, group: list[dict], lane: StagingLane) -> None:
        """Decode, check, validate and queue one batch; a range the file merged before is only counted."""
        records: list = [user_from_pb(u) for u in batch.users]
        # users_json whose records are all valid users: decoded and validated in one typed pass (valid is then
        # the users, in order); anything else record by record below, for the exact reason of each rejection.
        valid = normalise_json(batch.users_json) if batch.users_json and not records else None
        try:
            if batch.users_json and valid is None:
                records.extend(users_of(batch.users_json))
            span = batch_span(batch, len(valid) if valid is not None else len(records), tally.batches, ranges,
                              source.file_id if source is not None else None)
        except BadBatch as error:
            # Batches before this one are queued and stay (idempotent on a resend); nothing after it is read.
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"batch {tally.batches}: {error}")
        if valid is not None:
            records = valid
        if source is not None:
            end = batch.first_record + (batch.record_count or len(records))
            if source.covers(batch.first_record, end):
                # Merged before this stream began (a resume): counted for the report, never staged again.
                tally.accepted += len(valid if valid is not None else
                                      self.intake.validate(records, batch.first_record, tally, count=False))
                return
            report_id, progress = source.file_id, {"records": end, "read_bytes": batch.source_bytes}
        else:
            report_id, progress = batch.file_id or adhoc, None
            if report_id not in attempts:
                attempts[report_id] = self.intake.store.attempt(report_id)
        users = valid if valid is not None else self.intake.validate(records, batch.first_record, tally)
        lane.submit(self._stage, context, group, report_id, attempts[report_id], batch.source or "stream", span,
                    users, progress)
        tally.accepted += len(users)
        tally.batches += 1

    def _stage(self, context, group: list[dict], report_id: str, attempt: str, source: str, span: str,
               users: list[dict], progress: dict | None) -> None:
        """On the stream's lane: wait for room in the backlog, then stage the batch and queue it."""
        self.intake.hold(context, group)
        self.intake.enqueue(report_id, attempt, source, span, users, progress, group)

    def _after_trailer(self, batch, source: SourceStream, tally: Tally, context) -> None:
        """After the trailer only the raw copy of a damaged file may come."""
        if batch.users or batch.users_json or batch.HasField("header") or batch.HasField("trailer"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"batch {tally.batches}: after the trailer only raw chunks may come")
        if len(batch.raw) > RAW_CHUNK_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a raw chunk is over {RAW_CHUNK_BYTES} bytes")
        if source.trailer.damage:
            source.add_raw(batch.raw, self.intake.ledger.quarantine)


class GrpcServer:
    """Two listeners over one service: the public address, and a private unix socket for our own client.

    Public (`listen`): bound exclusively (no SO_REUSEPORT, which grpc turns on by default on Linux and which
    let a second instance share the port and split its clients' traffic with ours); outside calls are
    counted, bounded and closed when idle by core.service.admission.Admission; health is exempt.
    Private (`private_target`): a unix socket in a fresh 0700 folder, for the console's own watcher client:
    no outside caller can reach it, so no outside caller can starve it. Same credentials and token as the
    public port. `port` is the public port (use port 0 in tests).
    """

    def __init__(self, intake: Intake, listen: str, max_workers: int = 16, *, tls_cert=None, tls_key=None,
                 token: str | None = None, max_concurrent_calls: int | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, idle_timeout: float | None = None,
                 max_batch_users: int | None = None, max_staged_bytes: int | None = None, private: bool = True,
                 call_log: grpc.ServerInterceptor | None = None):
        self.service = UsersService(intake)
        self.health = health.HealthServicer()
        self.listen = listen
        # Always: it also counts the batches queued (a job may carry several) for the backlog bound.
        intake.staged_bytes_bound = StagedBytes(intake.queue, max_staged_bytes)
        # grpc fails an oversize message with RESOURCE_EXHAUSTED on its own call only; other streams go on.
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        self.admission = Admission(max_concurrent_calls,
                                   DEFAULT_IDLE_TIMEOUT if idle_timeout is None else idle_timeout,
                                   max_batch_users or MAX_BATCH_USERS)
        interceptors = [self.admission] + ([security.TokenInterceptor(token)] if token else [])
        if call_log is not None:  # outside callers only: the private socket is our own watcher's
            interceptors.append(call_log)
        pool = (max_concurrent_calls or max_workers) + RESERVED_THREADS
        self.server = self._server(pool, options, interceptors)
        credentials = security.server_credentials(tls_cert, tls_key) if tls_cert else None
        self.port = self._bind(self.server, listen, credentials)
        self.private_dir: Path | None = None
        self.private_server = None
        if private:
            self.private_dir = make_private_dir("grpc")
            try:
                self.private_server = self._server(max_workers, options,
                                                   [security.TokenInterceptor(token)] if token else None)
                self._bind(self.private_server, self.private_target, credentials)
            except BaseException:
                shutil.rmtree(self.private_dir, ignore_errors=True)
                raise
        self.serving = False

    def _server(self, pool: int, options: list, interceptors) -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=pool, thread_name_prefix="grpc"),
                             options=options, interceptors=interceptors)
        users_pb2_grpc.add_UsersServicer_to_server(self.service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        return server

    @staticmethod
    def _bind(server: grpc.Server, listen: str, credentials) -> int:
        try:
            port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
        except RuntimeError:  # grpc says "Failed to bind"; say it in our words
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {listen} for gRPC (address in use or not available)")
        return port

    @property
    def private_target(self) -> str:
        return f"unix:{self.private_dir / 'grpc.sock'}" if self.private_dir else self.address

    @property
    def address(self) -> str:
        return join_address(parse_address(self.listen)[0], self.port)

    def start(self) -> None:
        self.service.intake.ledger.start()
        self.admission.start()
        self.server.start()
        if self.private_server is not None:
            self.private_server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.serving = True

    def stop(self, grace: float = 5.0) -> None:
        self.serving = False
        self.health.enter_graceful_shutdown()
        stopping = [self.server.stop(grace)]
        if self.private_server is not None:
            stopping.append(self.private_server.stop(grace))
        for event in stopping:
            event.wait()
        self.admission.stop()
        self.service.intake.ledger.stop()  # after the streams: a file merged by now still gets its line
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
