"""Fixtures of the queue's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.queue.jobs import FAILPOINT


@pytest.fixture
def gated(tmp_path, monkeypatch) -> Path:
    """Every merge job blocks at this gate (after writing its pid) until the test removes it."""
    gate = tmp_path / "gate"
    gate.write_text("")
    monkeypatch.setenv(FAILPOINT, str(gate))
    return gate
