"""Keeps all_users.json in step with the store: soon after merges stop, and at a bounded rate meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis

from core.store import Store

SETTLE = 0.2


class Exporter:
    def __init__(self, store: Store, path: Path, interval: float, on_event=None):
        self.store = store
        self.path = Path(path)
        self.interval = interval
        self.on_event = on_event or (lambda level, text: None)
        self.last: dict = {}
        self.last_seconds = 0.0
        self.error = ""  # why the last write failed, for the doctor; "" once a write succeeds
        self._written_version = -1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="exporter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def write(self) -> dict:
        """Export now (when changed, or when the file is missing) and return what was written."""
        with self._lock:
            version = self.store.version()
            if version == self._written_version and self.path.exists():
                return self.last
            started = time.monotonic()
            self.last = self.store.export(self.path)
            self.last_seconds = time.monotonic() - started
            self._written_version = self.last["version"]
            return self.last

    def _run(self) -> None:
        seen, changed_at, written_at = -1, 0.0, 0.0
        while not self._stop.wait(0.1):
            try:
                version = self.store.version()
            except redis.RedisError:
                continue
            now = time.monotonic()
            if version != seen:
                seen, changed_at = version, now
            if version == self._written_version:
                continue
            # Writing 100k users takes a while: never spend more than a quarter of the time exporting.
            due = max(self.interval, 4 * self.last_seconds)
            if now - changed_at >= SETTLE or now - written_at >= due:
                try:
                    self.write()
                    written_at = time.monotonic()
                    if self.error:  # one line per change of state, not one per attempt
                        self.on_event("info", f"{self.path} written again")
                        self.error = ""
                except (OSError, redis.RedisError) as error:
                    reason = f"cannot write {self.path}: {getattr(error, 'strerror', None) or error}"
                    if reason != self.error:
                        self.on_event("error", reason)
                        self.error = reason
                    self._stop.wait(1.0)
