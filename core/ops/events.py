"""What happened, for the log lines of the headless mode and the console's event panel."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("swordsec")


@dataclass(frozen=True)
class Event:
    level: str
    text: str
    at: float = field(default_factory=time.time)
    data: dict = field(default_factory=dict)


class EventLog:
    def __init__(self, keep: int = 2000):
        self.events: deque[Event] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._sinks: list[Callable[[Event], None]] = []  # core.ops.eventstream copies events into Redis

    def subscribe(self, sink: Callable[[Event], None]) -> list[Event]:
        """Call `sink(event)` for every event from now on (from the emitting thread: it must not block);
        returns the events kept so far, for a sink that wants them too."""
        with self._lock:
            self._sinks = [*self._sinks, sink]
            return list(self.events)

    def unsubscribe(self, sink: Callable[[Event], None]) -> None:
        with self._lock:
            self._sinks = [s for s in self._sinks if s != sink]

    def emit(self, level: str, text: str, **data) -> Event:
        event = Event(level, text, data=data)
        with self._lock:
            self.events.append(event)
            sinks = self._sinks
        log.log(getattr(logging, level.upper(), logging.INFO), text, extra={"event": data})
        for sink in sinks:
            sink(event)
        return event

    def recent(self, count: int = 200) -> list[Event]:
        with self._lock:
            return list(self.events)[-count:]
