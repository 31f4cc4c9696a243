"""A stream's staging, run one batch behind its reading: the next batch is decoded and validated while Redis
takes the one before it.

Measured on a 1,000,000-user file (`--no-ui --once`, 2 cores): the stream's thread spent three quarters of its
time waiting for its staging round trips, each queued behind a merge script that held Redis for milliseconds,
while a quarter of the two cores stood idle. One thread per stream stages its batches in the order they were
read (their sequence numbers, and so latest-wins, follow the file), at most DEPTH batches behind the reader, so
memory stays bounded and back-pressure (Intake.hold, in the lane) still stalls the sender through gRPC flow
control. The call's answer still comes only after close(): every batch it covers is in Redis first.
"""

from __future__ import annotations

import queue
import threading

DEPTH = 1  # batches read and waiting for the lane, beside the one it is staging


class StagingLane:
    def __init__(self):
        self._work: queue.Queue = queue.Queue(maxsize=DEPTH)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, stage, *args) -> None:
        """Stage a batch behind the ones before it; raises the failure of an earlier one (then nothing more is
        staged, as when the stream staged each batch itself and stopped at the first failure)."""
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="staging", daemon=True)
            self._thread.start()
        self._work.put((stage, args))

    def close(self, raise_error: bool = True) -> None:
        """Wait until every submitted batch is staged (or skipped after a failure); then raise that failure."""
        if self._thread is not None:
            self._work.put(None)
            self._thread.join()
            self._thread = None
        if raise_error:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            stage, args = item
            if self._error is None:
                try:
                    stage(*args)
                except BaseException as error:  # handed to the stream's thread, which answers the call
                    self._error = error
