"""The pipeline's events in Redis: the owner appends each event to one bounded stream and attached consoles
read it, so `--no-ui` log lines, the local console and every attached console show the same lines."""

from __future__ import annotations

import queue
import threading
from collections import deque

import orjson
import redis

from core.background import Background
from core.ops.events import Event, EventLog

KEEP = 2000  # the stream's length (XADD MAXLEN ~): what a console attaching now can scroll back to
BATCH = 200
FIRST_READ = 500  # an attaching console starts with this many of the newest lines
READ_CHUNK = 1000


def stream_key(namespace: str) -> str:
    return f"{namespace}:events"


def encode(event: Event) -> dict:
    fields = {"level": event.level, "text": event.text, "at": repr(event.at)}
    if event.data:
        fields["data"] = orjson.dumps(event.data, default=str)
    return fields


def decode(fields: dict) -> Event:
    def text(name: str, default: str = "") -> str:
        value = fields.get(name.encode(), default)
        return value.decode(errors="replace") if isinstance(value, bytes) else value

    try:
        at = float(text("at", "0"))
    except ValueError:
        at = 0.0
    data = fields.get(b"data")
    try:
        data = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        data = {}
    return Event(text("level", "info"), text("text"), at=at, data=data if isinstance(data, dict) else {})


def append(connection: redis.Redis, namespace: str, event: Event) -> None:
    """One event straight into the stream (an attached console's own command, for every console to see)."""
    connection.xadd(stream_key(namespace), encode(event), maxlen=KEEP, approximate=True)


class EventPublisher(Background):
    """Copies the owner's event log into the stream from a loop of its own: emit never waits on Redis,
    and events emitted while Redis is away are counted and said once it answers again."""

    thread_name = "event-publisher"
    join_seconds = 2.0

    def __init__(self, connection: redis.Redis, namespace: str, events: EventLog):
        super().__init__()
        self.connection = connection
        self.key = stream_key(namespace)
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=20_000)
        self.lost = 0
        self._events = events
        for event in events.subscribe(self._offer):  # the lines of the start so far, too
            self._offer(event)

    def _offer(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:  # Redis far behind: lose a line rather than slow the pipeline
            self.lost += 1

    def stop(self) -> None:
        """Publish what is queued (the last lines of a stop included), then end."""
        self._events.unsubscribe(self._offer)
        self._queue.put(None)
        super().stop()

    def _run(self) -> None:
        while True:
            batch, done = [self._queue.get()], False
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                done, batch = True, [e for e in batch if e is not None]
            if batch:
                self._publish(batch)
            if done:
                return

    def _publish(self, batch: list[Event]) -> None:
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                if self.lost:
                    note = Event("warning", f"{self.lost} event(s) could not be published while Redis did not answer")
                    pipe.xadd(self.key, encode(note), maxlen=KEEP, approximate=True)
                for event in batch:
                    pipe.xadd(self.key, encode(event), maxlen=KEEP, approximate=True)
                pipe.execute()
            self.lost = 0
        except (redis.RedisError, OSError):
            self.lost += len(batch)


class EventReader:
    """An attached console's event log: the stream's lines read incrementally, plus this console's own notes
    (a failed poll), which stay local. Events keep their identity between reads (the panel relies on it)."""

    def __init__(self, connection: redis.Redis, namespace: str, keep: int = KEEP):
        self.connection = connection
        self.namespace = namespace
        self.key = stream_key(namespace)
        self.events: deque[Event] = deque(maxlen=keep)
        self.last_id: bytes | str | None = None
        self._lock = threading.Lock()

    def pull(self) -> int:
        """Read the lines added since the last pull; blocking (Redis), so off the UI loop. Returns how many."""
        if self.last_id is None:
            entries = list(reversed(self.connection.xrevrange(self.key, count=FIRST_READ)))
            self.last_id = entries[-1][0] if entries else "0-0"
            self._add(entries)
            return len(entries)
        added = 0
        for _ in range(5):  # a burst: catch up a few chunks per refresh, the rest at the next
            answer = self.connection.xread({self.key: self.last_id}, count=READ_CHUNK)
            entries = answer[0][1] if answer else []
            if not entries:
                break
            self.last_id = entries[-1][0]
            self._add(entries)
            added += len(entries)
            if len(entries) < READ_CHUNK:
                break
        return added

    def _add(self, entries) -> None:
        with self._lock:
            self.events.extend(decode(fields) for _, fields in entries)

    def emit(self, level: str, text: str, **data) -> Event:
        event = Event(level, text, data=data)
        with self._lock:
            self.events.append(event)
        return event

    def recent(self, count: int = 200) -> list[Event]:
        with self._lock:
            return list(self.events)[-count:]
