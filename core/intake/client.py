"""The gRPC client used by the watcher and by `swordsec-console send`."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson

from core.intake.dropfiles import fingerprint
from core.intake.ingest import WHOLE_FILE_BYTES, RawBatch, SourceReader
from core.records import RecordError
from core.service import security
from core.service.ledger import RAW_CHUNK_BYTES, RAW_LIMIT_BYTES
from core.service.server import MAX_MESSAGE_BYTES, MAX_REASONS
from protobufs import users_pb2, users_pb2_grpc

# A batch message stays well under the server's receive limit even when records are large.
MAX_BATCH_BYTES = MAX_MESSAGE_BYTES // 2


@dataclass
class SendResult:
    """What happened to one source: read locally, accepted by the server, rejected on either side."""

    source: str
    size: int = 0
    records: int = 0
    accepted: int = 0
    rejected: int = 0
    batches: int = 0
    reasons: list[tuple[int, str]] = field(default_factory=list)
    damage: str | None = None
    seconds: float = 0.0
    read_bytes: int = 0
    # The server's word on the file: its ledger id and state (queued, merged, rejected, already ingested,
    # busy; see IngestReport in protobufs/users.proto).
    file_id: str = ""
    state: str = ""

    def reject(self, record: int, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append((record, reason))

    @property
    def unreadable(self) -> bool:
        """Nothing could be read and the file is not a valid empty array."""
        return self.damage is not None and self.records == 0


@dataclass
class Source:
    """A file opened for sending, read once: its fingerprint, and what the parser reads (memory or the file).

    A file the reader takes whole (up to WHOLE_FILE_BYTES) is read into memory and that one read serves the
    fingerprint, the parse and a quarantine copy; a larger one is hashed first (the header must go before
    the first batch), then streamed from the start."""

    handle: object
    size: int
    fingerprint: str
    data: bytes | None

    @classmethod
    def read(cls, handle) -> "Source":
        size = os.fstat(handle.fileno()).st_size
        handle.seek(0)
        data = handle.read(WHOLE_FILE_BYTES + 1) if size <= WHOLE_FILE_BYTES else None
        if data is not None and len(data) <= WHOLE_FILE_BYTES:
            return cls(handle, len(data), hashlib.blake2b(data, digest_size=16).hexdigest(), data)
        return cls(handle, size, fingerprint(handle), None)

    def parse(self):
        return io.BytesIO(self.data) if self.data is not None else self.handle


class UsersClient:
    def __init__(self, target: str, timeout: float | None = None, *, tls_ca=None, token: str | None = None,
                 server_name: str | None = None, tls: bool | None = None):
        """tls_ca: certificate(s) to trust (turns TLS on; tls=True alone trusts the system roots);
        server_name: the name to verify in the server's certificate when it differs from the target's host."""
        self.target = target
        self.timeout = timeout
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        if tls_ca is not None or tls:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self.channel = grpc.secure_channel(target, security.channel_credentials(tls_ca), options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        calls = grpc.intercept_channel(self.channel, security.BearerToken(token)) if token else self.channel
        self.stub = users_pb2_grpc.UsersStub(calls)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def health(self, timeout: float = 10.0) -> str:
        """The server's overall gRPC health status name (SERVING, NOT_SERVING, ...); the service needs no token."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def send_file(self, path: Path, batch_size: int = 1000,
                  on_progress: Callable[[SendResult], None] | None = None, handle=None, *,
                  name: str | None = None, source: Source | None = None) -> SendResult:
        """Stream one file with its header (name, size, fingerprint) and trailer: the server owns its report,
        so the file is deduplicated, resumed and quarantined wherever it is sent from.

        handle: the file already open (the watcher's checked descriptor): read from it, not from `path`;
        source: that handle already read (Source.read), when the caller needed its fingerprint first.
        The file is read once (see Source); only a damaged file larger than WHOLE_FILE_BYTES is read again,
        for the copy the server keeps in its quarantine."""
        path = Path(path)
        result = SendResult(source=name or path.name)
        started = time.monotonic()
        own = handle is None and source is None
        if own:
            handle = open(path, "rb")
        try:
            source = source or Source.read(handle)
            result.file_id = source.fingerprint
            reader = SourceReader(path, handle=source.parse())
            header = users_pb2.SourceHeader(name=result.source, size=source.size, fingerprint=source.fingerprint)
            batches = self._batches(reader, result, header, batch_size, on_progress, source)
            report = self.stub.SendUserBatches(batches, timeout=self.timeout)
        finally:
            if own:
                handle.close()
        result.size = source.size
        result.damage = reader.damage
        result.state = report.state
        result.accepted = report.accepted
        result.batches = report.batches
        result.rejected += report.rejected
        result.reasons += [(r.record, r.reason) for r in report.rejections][: MAX_REASONS - len(result.reasons)]
        result.seconds = time.monotonic() - started
        return result

    def send_rejected(self, name: str, source: Source, reason: str) -> SendResult:
        """Give a file up: the server records it as rejected with `reason` and keeps a copy of its bytes in
        its quarantine (a file it already has is answered "already ingested", as always)."""
        result = SendResult(source=name, size=source.size, file_id=source.fingerprint, damage=reason)
        header = users_pb2.SourceHeader(name=name, size=source.size, fingerprint=source.fingerprint)
        trailer = users_pb2.SourceTrailer(records=0, damage=reason)

        def stream():
            yield users_pb2.UserBatch(source=name, header=header, trailer=trailer)
            if source.size <= RAW_LIMIT_BYTES:
                yield from _raw_chunks(source.data, source.handle, source.size)
        report = self.stub.SendUserBatches(stream(), timeout=self.timeout)
        result.state = report.state
        return result

    def send_notice(self, name: str, reason: str) -> SendResult:
        """Tell the server of an entry that could not be read at all (not a regular file, a link out of the
        folder): it has no content to fingerprint, so the server records it under its name, as rejected."""
        result = SendResult(source=name, damage=reason)
        notice = users_pb2.UserBatch(source=name, header=users_pb2.SourceHeader(name=name),
                                     trailer=users_pb2.SourceTrailer(records=0, damage=reason))
        report = self.stub.SendUserBatches(iter([notice]), timeout=self.timeout)
        result.file_id, result.state = report.file_id, report.state
        return result

    def _batches(self, reader: SourceReader, result: SendResult, header, batch_size: int, on_progress,
                 source: Source) -> Iterator[users_pb2.UserBatch]:
        """Records go to the server as read: it validates each one (it must, whoever the client is) and
        reports rejections by record number, which stay exact because every record of a batch is sent.
        Where the reader hands over a RawBatch, its text is the message's users_json (no decode, no encode here);
        single records (JSON Lines, or what the streaming parser read) are encoded in batches as before.
        The header rides on the first message, the trailer on a message of its own after the last batch."""
        index = 0
        pending: list = []
        first = 0
        opening = [header]

        def flush():
            nonlocal index
            for payload, start, why in _payloads(pending, first):
                if payload is None:  # one record bigger than a whole message, or not encodable: never sent
                    result.reject(start, why)
                    continue
                yield users_pb2.UserBatch(users_json=payload, source=result.source, index=index, first_record=start,
                                          source_bytes=reader.position, header=opening.pop() if opening else None)
                index += 1

        try:
            for part in _within_budget(reader.parts(batch_size)):
                if part.__class__ is RawBatch:  # records as read, checked by the reader: sent as they are
                    if pending:
                        yield from flush()
                        pending = []
                    result.records = part.first + part.count
                    yield users_pb2.UserBatch(users_json=part.payload, source=result.source, index=index,
                                              first_record=part.first, source_bytes=reader.position,
                                              header=opening.pop() if opening else None)
                    index += 1
                    if on_progress:
                        result.read_bytes = reader.position
                        on_progress(result)
                    continue
                number, record = part
                if not pending:
                    first = number
                result.records = number + 1
                if isinstance(record, RecordError):  # a JSON Lines line that is not JSON
                    result.reject(number, str(record))
                    yield from flush()  # the next batch starts after this line, so numbers stay exact
                    pending = []
                    continue
                pending.append(record)
                if len(pending) >= batch_size:
                    yield from flush()
                    pending = []
                    if on_progress:
                        result.read_bytes = reader.position
                        on_progress(result)
        except OSError as error:
            reader.damage = f"cannot read the file: {error.strerror or error}"
        if pending:
            yield from flush()
        if on_progress:
            on_progress(result)
        trailer = users_pb2.SourceTrailer(
            records=result.records, damage=reader.damage or "", rejected=result.rejected,
            rejections=[users_pb2.Rejection(record=r, reason=m) for r, m in result.reasons])
        yield users_pb2.UserBatch(source=result.source, index=index, header=opening.pop() if opening else None,
                                  trailer=trailer)
        if reader.damage and source.size <= RAW_LIMIT_BYTES:  # the server keeps a copy in its quarantine
            yield from _raw_chunks(source.data, source.handle, source.size)

    def send_unary(self, user: dict) -> users_pb2.UserResponse:
        return self.stub.SendUserInfo(users_pb2.UserRequest(**user), timeout=self.timeout)


def _within_budget(parts):
    """The reader's parts, a RawBatch over the message budget as its records one by one (never in practice: the
    reader's RAW_BATCH_BYTES is under it), so the budget and its rejection of a record too large hold alike."""
    for part in parts:
        if part.__class__ is RawBatch and len(part.payload) > MAX_BATCH_BYTES:
            yield from enumerate(part.records(), start=part.first)
        else:
            yield part


def _payloads(records: list, first: int):
    """Encode a batch, halving it while it is over the message budget (only huge records do that) or while
    one of its records cannot be encoded (the reader's limits make that not happen; if it ever did, that one
    record is rejected, never the batch or the file).

    Yields (payload, first record number, why not); payload is None for a single record that cannot be sent.
    """
    try:
        payload = orjson.dumps(records)
    except orjson.JSONEncodeError as error:
        payload, why = None, f"record cannot be encoded: {str(error).splitlines()[0] if str(error) else 'error'}"
    else:
        why = f"record is over {MAX_BATCH_BYTES} bytes, too large to send"
    if payload is None or len(payload) > MAX_BATCH_BYTES:
        if len(records) == 1:
            yield None, first, why
            return
        half = len(records) // 2
        yield from _payloads(records[:half], first)
        yield from _payloads(records[half:], first + half)
        return
    yield payload, first, None


def _raw_chunks(data: bytes | None, handle, size: int) -> Iterator[users_pb2.UserBatch]:
    """The source's bytes from its first, for the server's quarantine copy (from memory when read whole)."""
    if data is not None:
        for offset in range(0, len(data), RAW_CHUNK_BYTES):
            yield users_pb2.UserBatch(raw=data[offset:offset + RAW_CHUNK_BYTES])
        return
    handle.seek(0)
    left = size
    while left > 0 and (chunk := handle.read(min(RAW_CHUNK_BYTES, left))):
        left -= len(chunk)
        yield users_pb2.UserBatch(raw=chunk)
