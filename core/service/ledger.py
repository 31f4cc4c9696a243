"""The server's side of the file ledger: the one writer of the reports of files sent with a header.

Whoever sends a file (our own watcher on the private socket, `swordsec-console send` on another host, a
third-party client), the server begins its attempt, records its progress (with the staging of each batch,
core/storage/store.py stage_batch), finishes it from the trailer, answers "already ingested" for content it merged
or rejected before, puts the copy of a damaged file in ITS quarantine, and logs the one "merged" line per
file. Resume needs nothing of the sender but to send the file again: the ranges already merged are skipped
(SourceStream.covers here, merge.lua for ranges merged meanwhile).

The watcher only reads the ledger (to skip a file before opening a stream, and to apply --after-merge).
Reports of entries that never reach a stream (a FIFO in the drop folder, a file the watcher gave up on)
stay the watcher's: the server never sees them.
"""

from __future__ import annotations

import bisect
import logging
import tempfile
import threading
import time
from pathlib import Path

from core.background import Background
from core.intake.aftermerge import merged_line
from core.intake.quarantine import set_aside
from core.storage.store import Store

log = logging.getLogger(__name__)

DONE_STATES = ("merged", "rejected")
# The raw copy of a damaged file a remote sender sends for the quarantine: chunks, and a bound in all.
RAW_CHUNK_BYTES = 1024 * 1024
RAW_LIMIT_BYTES = 64 * 1024 * 1024
FOLLOW_INTERVAL = 0.25
FOLLOW_LIMIT = 10_000  # files followed for their merged line; past it the oldest is dropped (its report stays)


class SourceStream:
    """One file arriving on one stream: what the header said, the ranges merged before it began, the copy."""

    def __init__(self, file_id: str, name: str, size: int, attempt: str, applied: list[tuple[int, int]]):
        self.file_id = file_id
        self.name = name
        self.size = size
        self.attempt = attempt
        self.started = time.time()
        self.starts = [a for a, _ in applied]
        self.ends = [b for _, b in applied]
        self.trailer = None
        self.raw = None  # a temporary file holding the copy, once the first chunk came
        self.raw_bytes = 0
        self.raw_over = False

    def covers(self, start: int, end: int) -> bool:
        """Whether [start, end) lies inside the union of ranges merged before this stream began."""
        if end <= start:
            return False
        i = bisect.bisect_right(self.starts, start) - 1
        return i >= 0 and self.ends[i] >= end

    def add_raw(self, chunk: bytes, folder: Path | None) -> None:
        if self.raw_over or folder is None:
            return
        if self.raw_bytes + len(chunk) > min(RAW_LIMIT_BYTES, self.size):
            self.raw_over = True
            return
        if self.raw is None:
            folder.mkdir(parents=True, exist_ok=True)
            self.raw = tempfile.TemporaryFile(dir=folder)  # unnamed: nothing half-written is ever listed
        self.raw.write(chunk)
        self.raw_bytes += len(chunk)

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
            self.raw = None


class Ledger(Background):
    thread_name = "ledger"

    def __init__(self, store: Store, quarantine: Path | None = None, on_event=None):
        super().__init__()
        self.store = store
        self.quarantine = Path(quarantine) if quarantine is not None else None
        self.on_event = on_event
        self._receiving: set[str] = set()
        self._followed: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def emit(self, level: str, text: str, **fields) -> None:
        if self.on_event is not None:
            self.on_event(level, text, **fields)
        else:
            log.log(getattr(logging, level.upper(), logging.INFO), text)

    # -- one stream -------------------------------------------------------------------------------------
    def begin(self, file_id: str, name: str, size: int, peer: str) -> tuple[SourceStream | None, str]:
        """(the stream, "") when this file is to be read now; else (None, why not): "already ingested"
        (its report says merged or rejected) or "busy" (another stream is sending the same content now)."""
        known, applied = self.store.report_and_ranges(file_id)
        if known.get("state") in DONE_STATES:
            same = known.get("name")
            note = "" if not same or same == name else f" (same content as {same})"
            self.emit("info", f"{name}: already ingested{note}; skipped", file=name, id=file_id)
            return None, "already ingested"
        with self._lock:
            if file_id in self._receiving:
                return None, "busy"
            self._receiving.add(file_id)
        try:
            attempt = self.store.begin_attempt(file_id, name=name, size=size, peer=peer, state="streaming",
                                               started_at=time.time(), records=0, read_bytes=0)
        except BaseException:
            self.release(file_id)
            raise
        return SourceStream(file_id, name, size, attempt, applied), ""

    def refuse(self, name: str, damage: str, peer: str) -> str:
        """A source its sender could not read at all (a notice): there is no content to fingerprint, so its
        report is keyed by its name, and a later notice of the same name replaces it. Returns the report id."""
        report_id = f"refused-{name}"
        self.store.update_report(report_id, name=name, state="rejected", damage=damage, peer=peer,
                                 finished_at=time.time())
        self.emit("warning", f"{name}: {damage}", file=name, id=report_id, state="rejected")
        return report_id

    def release(self, file_id: str) -> None:
        with self._lock:
            self._receiving.discard(file_id)

    def finish(self, stream: SourceStream, batches: int, accepted: int, rejected: int,
               reasons: list[tuple[int, str]]) -> str:
        """Record the trailer; the state the file is in now (queued, merged or rejected), or "busy" when another
        stream began the same file meanwhile (another server on the same Redis): that one finishes it."""
        current = self.store.redis.hget(self.store.report_key(stream.file_id), "attempt")
        if current is None or current.decode() != stream.attempt:
            return "busy"
        trailer = stream.trailer
        damage = trailer.damage.strip().splitlines()[0][:500] if trailer.damage.strip() else ""
        unreadable = bool(damage) and trailer.records == 0
        fields = dict(name=stream.name, records=trailer.records, accepted=accepted, rejected=rejected,
                      reasons=[f"record {n}: {why}" for n, why in sorted(reasons)], size=stream.size,
                      damage=damage, seconds=round(time.time() - stream.started, 3), finished_at=time.time(),
                      state="rejected" if unreadable else "queued")
        if damage:  # the copy first: once the report is final, the copy is there to look at
            self._set_aside(stream, damage, accepted)
        merged = self.store.finish_report(stream.file_id, batches, stream.attempt, **fields)
        if unreadable:
            where = f"; set aside in {self.quarantine}" if self.quarantine is not None else ""
            self.emit("warning", f"{stream.name}: rejected: {damage}{where}", file=stream.name, id=stream.file_id,
                      state="rejected")
            return "rejected"
        self.follow(stream.file_id, stream.name, stream.started)
        if merged:
            self.check()
            return "merged"
        return "queued"

    def _set_aside(self, stream: SourceStream, damage: str, kept: int) -> None:
        if self.quarantine is None:
            return
        reason = damage
        if stream.size == 0 and stream.raw is None:  # an empty file: its copy is empty, no chunk came
            stream.add_raw(b"", self.quarantine)
            stream.raw = stream.raw or tempfile.TemporaryFile(dir=self.quarantine)
        handle = stream.raw if stream.raw is not None and stream.raw_bytes == stream.size else None
        if handle is None:
            reason += ("; no copy: the file is over the bound a sender may send"
                       if stream.raw_over or stream.size > RAW_LIMIT_BYTES else
                       "; no copy: the sender did not send the file's bytes")
        try:
            set_aside(self.quarantine, Path(stream.name), stream.file_id, reason, kept, handle=handle)
        except OSError as error:
            self.emit("error", f"{stream.name}: cannot copy to quarantine: {error.strerror or error}",
                      file=stream.name)

    # -- the merged line --------------------------------------------------------------------------------
    def follow(self, file_id: str, name: str, started: float) -> None:
        with self._lock:
            self._followed[file_id] = (name, started)
            while len(self._followed) > FOLLOW_LIMIT:
                dropped = self._followed.pop(next(iter(self._followed)))
                self.emit("warning", f"{dropped[0]}: no longer followed until merged ({FOLLOW_LIMIT} files are "
                                     f"waiting); its report still tells its state", file=dropped[0])

    def check(self) -> None:
        """One line for each followed file whose batches are all merged, with the figures only the merge knows."""
        with self._lock:
            waiting = list(self._followed.items())
        if not waiting:
            return
        reports = self.store.reports_for([file_id for file_id, _ in waiting])
        for (file_id, (name, started)), report in zip(waiting, reports):
            state = report.get("state")
            if state in ("merged", "rejected", "streaming", None):
                with self._lock:
                    if self._followed.pop(file_id, None) is None:
                        continue  # another thread has just told it
                if state != "merged":
                    continue  # rejected, forgotten (a reset), or sent again and being read now (followed anew)
                seconds = round(time.time() - started, 3)
                self.store.update_report(file_id, seconds=seconds, merged_at=time.time())
                level, text, fields = merged_line(name, report, seconds)
                self.emit(level, text, **fields)

    def _run(self) -> None:
        while not self._stop.wait(FOLLOW_INTERVAL):
            self._check_safely()

    def _check_safely(self) -> None:
        try:
            self.check()
        except Exception as error:  # Redis away for a moment: the next look tells it
            log.debug("ledger follower: %s", error)

    def stop(self) -> None:
        """Stop following; a last look first, so a file merged just now still gets its line."""
        super().stop()
        self._check_safely()
