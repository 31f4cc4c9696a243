"""Messages from background threads to the widgets. Status updates merge in the queue (Toolong's trick)."""

from __future__ import annotations

from textual.message import Message


class StatusUpdated(Message):
    """A fresh core.ops.status snapshot; only the newest one matters, so a queued older one is replaced."""

    def __init__(self, snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StatusUpdated)


class PulseTaken(Message):
    """Fresh headline numbers (core.ops.status.pulse); like a snapshot, only the newest matters."""

    def __init__(self, pulse) -> None:
        super().__init__()
        self.pulse = pulse

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PulseTaken)


class RuntimeReady(Message):
    """The core runtime finished starting (or failed to: `error` says why)."""

    def __init__(self, error: str = "") -> None:
        super().__init__()
        self.error = error
