"""Messages from background threads to the widgets. Status updates merge in the queue (Toolong's trick)."""

from __future__ import annotations

from textual.message import Message


class Newest(Message):
    """A reading of which only the newest matters: a queued older one of the same kind is replaced."""

    def can_replace(self, message: Message) -> bool:
        return type(message) is type(self)


class StatusUpdated(Newest):
    """A fresh core.ops.status snapshot."""

    def __init__(self, snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class PulseTaken(Newest):
    """Fresh headline numbers (core.ops.status.pulse)."""

    def __init__(self, pulse) -> None:
        super().__init__()
        self.pulse = pulse


class RuntimeReady(Message):
    """The core runtime finished starting (or failed to: `error` says why)."""

    def __init__(self, error: str = "") -> None:
        super().__init__()
        self.error = error
