"""The drop folder: startup scan, then watchfiles events; each stable file streamed once through gRPC.

A file is read when it is stable (core.intake.dropfiles.stability): a file renamed in whole is read at once;
one still being written keeps a fresh mtime, does not end its array yet, and waits.

The watcher finds a stable file, streams it and applies --after-merge; the gRPC server owns the file's
report (core/service/ledger.py), exactly as for a file sent from another host. The watcher only reads the ledger,
keyed by a fingerprint of the content: a file whose report says merged or rejected is not streamed again
(under any name); one left streaming or queued by a console that died is sent again, and the server skips
the ranges already merged. The watcher writes no report: an entry refused unopened (a FIFO, a link out of
the folder) is told to the server in a notice (a header without a fingerprint), and a file set aside after
MAX_ATTEMPTS failures is sent as a rejected source (header, trailer with the reason, its bytes for the
quarantine copy), so both are recorded and quarantined exactly as a remote sender's would be.

An entry that is not a regular file (FIFO, socket, device, folder) or a link out of the folder is refused
with a one-line reason and never opened; a file is opened once and everything is read from that descriptor
(core.intake.dropfiles.open_checked). No file is retried forever: a failure of the file itself (the server refused
its stream, it cannot be read, a bug) counts against it, and after MAX_ATTEMPTS it is reported rejected and
set aside in quarantine with its reason while the others go on. A failure of the services (Redis or the
gRPC server unreachable) is not the file's: it is retried with backoff, without counting.

Bounded for the life of the process: `candidates`, `known` and the failure counts hold only entries still in
the folder (pruned at every rescan), `queued` only paths waiting or being handled, `reading` at most one file
per reader, and `inflight` drops a file once merged, rejected or forgotten, and never holds more than
INFLIGHT_LIMIT.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import grpc
import redis
import watchfiles

from core.intake.aftermerge import dispose
from core.intake.client import Source, UsersClient
from core.intake.dropfiles import UNSEEN, Refused, is_candidate, open_checked, signature, stability
from core.ops.events import EventLog
from core.ops.trace import mark
from core.storage.codec import StaleDictionary
from core.storage.store import Store

DONE_STATES = ("merged", "rejected")
RESCAN_INTERVAL = 5.0
# Failures of a file itself before it is set aside; and the backoff between tries (doubling up to the cap).
MAX_ATTEMPTS = 3
RETRY_DELAY, RETRY_DELAY_CAP = 2.0, 60.0
# Files sent and waiting for their merge that are followed for their after-merge line and policy.
INFLIGHT_LIMIT = 10_000
_SERVICE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
                  grpc.StatusCode.RESOURCE_EXHAUSTED)


class Watcher:
    def __init__(self, folder: Path, store: Store, client: UsersClient, events: EventLog, *,
                 batch_size: int = 1000, quiet_period: float = 1.0, poll: bool = False, after_merge: str = "keep",
                 readers: int = 3):
        self.folder = Path(folder).absolute()
        self.store = store
        self.client = client
        self.events = events
        self.batch_size = batch_size
        self.quiet_period = quiet_period
        self.poll = poll
        self.after_merge = after_merge
        self.paused = threading.Event()
        self.candidates: dict[Path, tuple[int, int]] = {}
        # (size, mtime) of each file as it was when last handled: a rescan skips files that did not change.
        self.known: dict[Path, tuple[int, int]] = {}
        self.ready: queue.Queue[Path | None] = queue.Queue()
        # Files being read now (name by report id): several are read at once, never one file twice.
        self.reading: dict[str, str] = {}
        self.readers = readers
        # Files sent and waiting for their batches to merge: report id -> (name, started at).
        self.inflight: dict[str, tuple[str, float, Path]] = {}
        # Failed attempts of each file (path -> count, last reason), while it is retried.
        self.failures: dict[Path, tuple[int, str]] = {}
        # Paths in `ready` or being handled: a path is never queued twice nor handled by two readers at once.
        self.queued: set[Path] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.scan()
        targets = [(self._watch, "watcher")] + [(self._ingest_loop, f"ingest-{n}") for n in range(self.readers)]
        for target, name in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def request_stop(self) -> None:
        """No new file is started; a file being sent finishes, or fails when the server stops first."""
        self._stop.set()
        for _ in range(self.readers):
            self.ready.put(None)

    def stop(self, timeout: float = 30.0) -> None:
        self.request_stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))

    def pause(self) -> None:
        self.paused.set()
        self.events.emit("info", "watcher paused")

    def resume(self) -> None:
        self.paused.clear()
        self.events.emit("info", "watcher resumed")

    @property
    def current(self) -> str:
        return ", ".join(sorted(self.reading.values()))

    @property
    def waiting(self) -> int:
        return len(self.candidates) + self.ready.qsize()

    # -- discovery ------------------------------------------------------------------------------------
    def scan(self, everything: bool = False) -> None:
        """Note every new or changed candidate file in the folder.

        Runs at startup (watchfiles reports only changes), once the watch is in place (a file created in
        between would otherwise be missed) and every few seconds as a safety net for lost events.
        """
        try:
            entries = sorted(self.folder.iterdir())
        except OSError as error:
            self.events.emit("error", f"cannot read the watched folder {self.folder}: {error.strerror}")
            return
        present = set(entries)
        with self._lock:  # forget what left the folder: these maps hold at most the folder's entries
            for table in (self.known, self.failures):
                for path in list(table):  # a copy: readers add to `known` without the lock
                    if path not in present:
                        table.pop(path, None)
        for path in entries:
            if everything or self.known.get(path) != signature(path):
                self._note(path)

    def notice(self, path: Path) -> None:
        """Consider this file now (a replayed file, say), without waiting for an event or the next rescan."""
        self._note(Path(path).absolute())

    def _note(self, path: Path) -> None:
        if path.parent != self.folder or not is_candidate(path):
            return
        with self._lock:
            self.candidates.setdefault(path, UNSEEN)

    def _watch(self) -> None:
        scanned_at = 0.0
        try:
            # step: how long watchfiles waits for more changes before it yields (50 ms by default); a file renamed
            # in is one event, and a file still being written is held by the stability check anyway. Its loop
            # sleeps a step at a time, so an event is yielded one to two steps after it happened: 4 ms took
            # ~10 ms off a drop against 10 ms (bench/drop_latency.py --trace, "event"), for 250 wake-ups a
            # second of this thread (each a look at the stop event).
            for changes in watchfiles.watch(self.folder, stop_event=self._stop, force_polling=self.poll or None,
                                            yield_on_timeout=True, rust_timeout=200, debounce=100, step=4,
                                            recursive=False, raise_interrupt=False):
                for change, name in changes:
                    if change != watchfiles.Change.deleted:
                        mark("event", name)
                        self._note(Path(name))
                if time.monotonic() - scanned_at > RESCAN_INTERVAL:
                    scanned_at = time.monotonic()
                    self.scan()
                self._promote_stable()
                self._safely(self.check_inflight)
        except Exception as error:  # the folder vanished, permissions changed: say so, don't die silently
            self.events.emit("error", f"watching {self.folder} stopped: {error}")

    def _safely(self, step) -> None:
        try:
            step()
        except redis.RedisError as error:
            self.events.emit("error", f"watcher: Redis error: {error}")

    def _promote_stable(self) -> None:
        if self.paused.is_set():
            return
        with self._lock:
            for path, seen in list(self.candidates.items()):
                current, ready = stability(path, seen, self.quiet_period)
                if current is None:
                    del self.candidates[path]
                elif ready and path not in self.queued:  # else it is handled now: it waits for that to end
                    del self.candidates[path]
                    self.queued.add(path)
                    mark("stable", path)
                    self.ready.put(path)
                else:
                    self.candidates[path] = current

    def drain_now(self) -> list[Path]:
        """For --once: every candidate, waiting only for files still being written."""
        paths = []
        while self.candidates:
            self._promote_stable()
            while not self.ready.empty():
                item = self.ready.get()
                if item is not None:
                    paths.append(item)
                    with self._lock:
                        self.queued.discard(item)  # the caller handles it now, not a reader thread
            if self.candidates:
                time.sleep(0.1)
        return paths

    def _ingest_loop(self) -> None:
        delay = RETRY_DELAY
        while not self._stop.is_set():
            path = self.ready.get()
            if path is None:
                return
            while self.paused.is_set() and not self._stop.is_set():
                self._stop.wait(0.2)
            retry = False
            try:
                self.ingest(path)
                delay = RETRY_DELAY
            except Exception as error:  # the file, Redis, the disk or gRPC failed
                if self._failed(path, error) is None:
                    self._stop.wait(delay)
                    delay = min(delay * 2, RETRY_DELAY_CAP) if is_service_failure(error) else RETRY_DELAY
                    retry = True
            finally:
                with self._lock:
                    self.queued.discard(path)
            if retry:
                self._note(path)

    def ingest_now(self, path: Path) -> tuple[str | None, str]:
        """ingest() for --once: a failing file is tried again at once, and set aside after MAX_ATTEMPTS
        ("refused"); a failure of the services is raised (nothing else could go on either)."""
        while True:
            try:
                return self.ingest(path)
            except Exception as error:
                if is_service_failure(error):
                    raise
                if (outcome := self._failed(path, error)) is not None:
                    return outcome

    def _failed(self, path: Path, error: Exception) -> tuple[str | None, str] | None:
        """Count a failed attempt; after the last one, set the file aside and return its outcome."""
        reason = one_line(error)
        if is_service_failure(error):
            self.events.emit("error", f"{path.name}: ingest failed, will retry: {reason}", file=path.name)
            return None
        with self._lock:
            count = self.failures.get(path, (0, ""))[0] + 1
            self.failures[path] = (count, reason)
        if count < MAX_ATTEMPTS:
            self.events.emit("error", f"{path.name}: ingest failed (attempt {count} of {MAX_ATTEMPTS}), will retry: "
                                      f"{reason}", file=path.name)
            return None
        with self._lock:
            self.failures.pop(path, None)
        return self._give_up(path, f"set aside after {count} failed attempts: {reason}")

    def _give_up(self, path: Path, reason: str) -> tuple[str | None, str]:
        """The server records the file as rejected and keeps its copy in quarantine; one that cannot be read
        any more is told in a notice. Either way it is not tried again while it stays unchanged."""
        try:
            try:
                handle = open_checked(path, self.folder)
            except (Refused, OSError):
                return self._refuse(path, reason)
            with handle:
                result = self.client.send_rejected(path.name, Source.read(handle), reason)
            return result.file_id, "refused"
        except Exception as error:  # the file is given up all the same: said here, since no report says it
            self.events.emit("error", f"{path.name}: rejected: {reason}; the server could not record it: "
                                      f"{one_line(error)}", file=path.name, state="rejected")
            return None, "refused"

    # -- one file ---------------------------------------------------------------------------------------
    def ingest(self, path: Path) -> tuple[str | None, str]:
        """Stream one file unless the ledger says it is done.

        Returns (report id, outcome): "sent", "skipped" (already ingested), "refused", "gone" or "busy"
        (the same content is being read under another name; the file is looked at again later).
        """
        self.known[path] = signature(path)
        return self._ingest(path)

    def _ingest(self, path: Path) -> tuple[str | None, str]:
        try:
            handle = open_checked(path, self.folder)
        except Refused as refusal:
            return self._refuse(path, str(refusal))
        except FileNotFoundError:
            return None, "gone"
        with handle:
            outcome = self._ingest_open(path, handle)
        with self._lock:
            self.failures.pop(path, None)
        return outcome

    def _refuse(self, path: Path, reason: str) -> tuple[str | None, str]:
        result = self.client.send_notice(path.name, reason)
        return result.file_id, "refused"

    def _ingest_open(self, path: Path, handle) -> tuple[str | None, str]:
        source = Source.read(handle)  # the one read: fingerprint here, parse and send from it
        report_id = source.fingerprint
        known = self.store.report(report_id)
        if known.get("state") in DONE_STATES:
            same = known.get("name")
            note = "" if same == path.name else f" (same content as {same})"
            self.events.emit("info", f"{path.name}: already ingested{note}; skipped", file=path.name, id=report_id)
            if known.get("state") == "merged":
                self._dispose(path, known)  # merged before a restart, or a copy: the policy still applies
            return report_id, "skipped"
        if report_id in self.inflight:
            name = self.inflight[report_id][0]
            if name != path.name:
                self.events.emit("info", f"{path.name}: same content as {name}, already sent; skipped",
                                 file=path.name, id=report_id)
            return report_id, "skipped"
        with self._lock:
            if report_id in self.reading:
                # The same content under another name is being read right now: look again later.
                self.candidates.setdefault(path, UNSEEN)
                self.known.pop(path, None)
                return report_id, "busy"
            self.reading[report_id] = path.name
        try:
            return self._stream(path, report_id, source)
        finally:
            with self._lock:
                self.reading.pop(report_id, None)

    def _stream(self, path: Path, report_id: str, source: Source) -> tuple[str, str]:
        """Send the file; the server records everything about it (begin, progress, finish, damage and its
        quarantine copy, the merged line). Here only what the after-merge policy needs is kept."""
        started = time.time()
        mark("send", path)
        result = self.client.send_file(path, batch_size=self.batch_size, source=source)
        mark("sent", path, result.state)
        report_id = result.file_id or report_id
        if result.state == "busy":  # the same content is arriving from another sender: look again later
            with self._lock:
                self.candidates.setdefault(path, UNSEEN)
                self.known.pop(path, None)
            return report_id, "busy"
        if result.state == "already ingested":  # done before, under another name or from another host
            known = self.store.report(report_id)
            if known.get("state") == "merged":
                self._dispose(path, known)
            return report_id, "skipped"
        if result.state not in ("queued", "merged", "rejected"):
            raise RuntimeError(f"the server left the file {result.state or 'unfinished'}")
        if result.state != "rejected":
            with self._lock:
                self.inflight[report_id] = (path.name, started, path)
                while len(self.inflight) > INFLIGHT_LIMIT:  # oldest first: merged and logged all the same
                    dropped = self.inflight.pop(next(iter(self.inflight)))
                    self.events.emit("warning", f"{dropped[0]}: no longer followed until merged ({INFLIGHT_LIMIT} "
                                                f"files are waiting): --after-merge is not applied to it; its "
                                                f"report still tells its state", file=dropped[0])
            if result.state == "merged":
                self.check_inflight()
        return report_id, "sent"

    def check_inflight(self) -> None:
        """Once all of a file's users are merged (the server logs that line), the --after-merge policy."""
        waiting = list(self.inflight.items())
        if not waiting:
            return
        reports = self.store.reports_for([report_id for report_id, _ in waiting])
        for (report_id, (name, started, path)), report in zip(waiting, reports):
            if report.get("state") in ("rejected", None):  # rejected on the server, or forgotten (a reset)
                self.inflight.pop(report_id, None)
                continue
            if report.get("state") != "merged" or self.inflight.pop(report_id, None) is None:
                continue  # not yet, or another thread has just handled it
            self._dispose(path, report)

    def _dispose(self, path: Path, report: dict) -> None:
        # Only the file that still holds the merged content is moved or deleted (aftermerge.dispose checks).
        try:
            dispose(self.after_merge, self.folder, path, report)
        except (redis.RedisError, OSError) as error:
            self.events.emit("error", f"{path.name}: after-merge {self.after_merge} failed: {error}")


def is_service_failure(error: BaseException) -> bool:
    """Redis or the gRPC server out of reach: not the file's fault, so it does not count against it."""
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, StaleDictionary)):
        return True
    return isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)) and error.code() in _SERVICE_CODES


def one_line(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
        text = f"{error.code().name}: {error.details()}"
    else:
        text = str(error) or type(error).__name__
    lines = text.strip().splitlines()
    return lines[0] if lines else type(error).__name__
