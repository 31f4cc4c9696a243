"""The one way this program runs a loop beside its main work: a named daemon thread, started once, that
waits on its stop event (never a bare sleep), so stop() ends it within one wait."""

from __future__ import annotations

import threading


class Background:
    """Subclasses set `thread_name` (shown by py-spy and in thread dumps) and write `_run`, which loops
    until `self._stop` is set; `join_seconds` bounds how long stop() waits for the last round."""

    thread_name = "background"
    join_seconds = 5.0

    def __init__(self):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self):
        """Start the loop; again after a stop (a server started anew); a running loop is left as it is."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():  # a loop may stop itself
            thread.join(timeout=self.join_seconds)

    def _run(self) -> None:
        raise NotImplementedError
