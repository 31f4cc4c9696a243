"""A console attached to a pipeline started elsewhere: the same start/stop/snapshot/control/store as
core.runtime.Runtime, all of it read from the pipeline's Redis. Attaching starts nothing and writes
nothing; only an operator's command does (through core.ops.remote)."""

from __future__ import annotations

import os
import socket

from core.config import Settings
from core.ops.control import Control
from core.ops.events import Event
from core.ops.eventstream import EventReader, append
from core.ops.owner import Presence, read_presence
from core.ops.remote import RemoteControl
from core.ops.snapshot import PipelineInfo
from core.ops.status import History, Sources, collect
from core.queue.taskqueue import make_queue
from core.storage.broker import Broker
from core.storage.store import Store


class AttachedRuntime:
    attached = True  # the app quits without stopping anything: the pipeline is not ours

    def __init__(self, settings: Settings):
        self.settings = settings
        self.broker = Broker(settings.redis_url, settings.data_dir)
        self.namespace = settings.namespace
        self.store: Store | None = None
        self.queue = None
        self.events: EventReader | None = None
        self.who = f"console attached on {socket.gethostname().split('.')[0]} (pid {os.getpid()})"
        self._history = History()

    def start(self) -> AttachedRuntime:
        connection = self.broker.start()  # a Redis that does not answer fails here, in one line
        self.store = Store(connection, self.namespace)
        self.queue = make_queue(connection, self.namespace)
        self.events = EventReader(connection, self.namespace)
        return self

    def stop(self, grace: float = 0.0) -> None:
        self.broker.stop()  # closes our connections; an external URL has no server of ours to stop

    @property
    def stopped(self) -> bool:
        return False

    def emit(self, level: str, text: str) -> None:
        if self.events is not None:
            self.events.emit(level, text)

    def _publish(self, level: str, text: str) -> None:
        """A command this console did itself (requeue, delete): into the pipeline's stream, for every console."""
        append(self.broker.client, self.namespace, Event(level, f"{text} ({self.who})"))

    def snapshot(self):
        connection = self.broker.client
        self.events.pull()
        presence = read_presence(connection, self.namespace)
        pipeline = PipelineInfo(namespace=self.namespace, alive=presence is not None,
                                host=presence.host if presence else "", pid=presence.pid if presence else 0)
        return collect(Sources(settings=self.settings, broker=self.broker, events=self.events, history=self._history,
                               store=self.store, queue=self.queue, presence=presence or Presence(),
                               pipeline=pipeline))

    @property
    def control(self) -> RemoteControl:
        direct = Control(emit=self._publish, data_dir=self.settings.data_dir, watch=self.settings.watch,
                         queue=self.queue, store=self.store)
        return RemoteControl(self.broker.client, self.namespace, direct, self.who)
