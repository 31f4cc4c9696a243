"""What happened, for the log lines of the headless mode and the console's event panel."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
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

    def emit(self, level: str, text: str, **data) -> Event:
        event = Event(level, text, data=data)
        with self._lock:
            self.events.append(event)
        log.log(getattr(logging, level.upper(), logging.INFO), text, extra={"event": data})
        return event

    def recent(self, count: int = 200) -> list[Event]:
        with self._lock:
            return list(self.events)[-count:]
