"""Keeps all_users.json in step with the store: soon after merges stop, and at a bounded rate meanwhile.

The thread never dies quietly: any failure is one error line and the next round tries again. A stored
value that cannot be decoded is left out of the file (every other user is still written), counted in
the export record (the doctor and /metrics show it) and logged once per process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis

from core.background import Background
from core.ops.trace import mark
from core.storage.staging import STAGED_GRACE, sweep_staged
from core.storage.store import Store
from core.storage.viewfile import ExportStopped, ViewFile

SETTLE = 0.2
# How often the version is looked at (one GET) while the file is behind it (settling, pacing a long ingest,
# the other copy). Once it is up to date the thread blocks on the store's wake list instead: the next merge
# is seen at once (it took up to POLL, 10 ms on average) and a quiet console asks Redis nothing. WAKE_WAIT
# bounds that block: a version moved by something that does not announce it (an older worker) is seen then.
POLL = 0.02
WAKE_WAIT = 0.5
SWEEP_INTERVAL = STAGED_GRACE / 2
LOGGED_BAD = 1000  # undecodable keys remembered as already logged (bounded)


class Exporter(Background):
    thread_name = "exporter"
    join_seconds = 30.0  # a write of a large store in progress ends first

    def __init__(self, store: Store, path: Path, interval: float, on_event=None, idle=None, stopping=None,
                 redis_url: str | None = None):
        """idle(): True when no stream is open and no batch is queued or being merged. Then a change is written
        at once; otherwise it waits for SETTLE of quiet (or its turn while merges keep coming).
        stopping(): True once a long write in progress should be given up (ViewFile.stopping).
        redis_url: the store's, for the helper process of a large store's whole writes (ViewFile)."""
        super().__init__()
        self.idle = idle or (lambda: False)
        self.store = store
        self.path = Path(path)
        self.view = ViewFile(store, self.path, split_url=redis_url)
        if stopping is not None:
            self.view.stopping = stopping
        self.interval = interval
        self.on_event = on_event or (lambda level, text: None)
        self.last: dict = {}
        self.last_seconds = 0.0
        self.error = ""  # why the last write failed, for the doctor; "" once a write succeeds
        self._written_version = -1
        self._logged_bad: set[str] = set()
        self._lock = threading.Lock()

    def write(self, force: bool = False) -> dict:
        """Export now (when changed, when the file is missing, or when forced) and return what was written."""
        with self._lock:
            version = self.store.version()
            if not force and version == self._written_version and self.path.exists():
                return self.last
            started = time.monotonic()
            mark("export", version)
            self.last = self.view.write()
            self.last_seconds = time.monotonic() - started
            while self.view.split_failures:  # only slower: this process wrote the helper's share itself
                self.on_event("warning", f"{self.view.split_failures.pop(0)}; all_users.json was written whole here")
            mark("exported", self.last["version"])
            self._written_version = self.last["version"]
            self._tell_bad(self.last)
            return self.last

    def _tell_bad(self, info: dict) -> None:
        fresh = [b for b in info.get("bad", []) if b["key"] not in self._logged_bad]
        if not fresh:
            return
        if len(self._logged_bad) + len(fresh) > LOGGED_BAD:
            self._logged_bad.clear()
        self._logged_bad.update(b["key"] for b in fresh)
        first = fresh[0]
        self.on_event("error", f"{info['undecodable']} stored user value(s) cannot be decoded and are left out of "
                               f"{self.path.name} (first: merge key {first['key']!r}: {first['reason']}); "
                               f"every other user is written")

    def _run(self) -> None:
        failing = ""
        while not self._stop.is_set():
            try:
                self._loop()
            except Exception as error:  # a bug or a surprise: one line per kind of failure, then go on
                text = f"exporter: {type(error).__name__}: {error}"
                if text != failing:
                    self.on_event("error", text)
                failing = text
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():  # a loop that never ran leaves no token
            try:
                self.store.announce_change()  # ends a wait on the wake list now
            except redis.RedisError:
                pass
        super().stop()

    def _pause(self, seen: int) -> bool:
        """Wait until the next look; False once stopping."""
        if seen != self._written_version or self.view.behind:
            return not self._stop.wait(POLL)
        try:
            self.store.wait_change(WAKE_WAIT)
        except redis.RedisError:
            return not self._stop.wait(POLL)
        return not self._stop.is_set()

    def _loop(self) -> None:
        seen, changed_at, written_at, swept_at = -1, 0.0, 0.0, 0.0
        while self._pause(seen):
            try:
                version = self.store.version()
            except redis.RedisError:
                continue
            now = time.monotonic()
            if now - swept_at >= SWEEP_INTERVAL:
                swept_at = now
                if swept := sweep_staged(self.store):
                    self.on_event("info", f"deleted {swept} staged batch(es) whose job is gone")
            if version != seen:
                mark("version", version)
                seen, changed_at = version, now
            if version == self._written_version:
                # Quiet: bring the other copy up to date too, so the next change only patches it (a copy left
                # behind by a long ingest would be written whole, a minute at ten million users).
                if self.view.behind and now - changed_at >= SETTLE:
                    written_at = self._attempt(force=True) or written_at
                continue
            # A whole write of 10M users takes a minute of this process's CPU, which the gRPC server shares
            # (one GIL): during a long ingest, export at most a ninth of the time.
            due = max(self.interval, 8 * self.last_seconds)
            if now - changed_at >= SETTLE or now - written_at >= due or self.idle():
                written_at = self._attempt() or written_at

    def _attempt(self, force: bool = False) -> float | None:
        """One export; the time it ended, or None when it failed (told once per reason)."""
        try:
            self.write(force)
            if self.error:  # one line per change of state, not one per attempt
                self.on_event("info", f"{self.path} written again")
                self.error = ""
            return time.monotonic()
        except ExportStopped:  # the program is stopping and said so; the file still shows the export before
            return None
        except (OSError, redis.RedisError) as error:
            # One line when writing stops working (the doctor shows the latest reason): a full disk fails here
            # as a refused Redis write, then as a failed file write, and is still one failure.
            reason = f"cannot write {self.path}: {getattr(error, 'strerror', None) or error}"
            if not self.error:
                self.on_event("error", reason)
            self.error = reason
            self._stop.wait(1.0)
            return None
