"""The stream's staging lane (core/service/lane.py): batches staged in the order they were read, at most one
waiting, a failure handed back to the stream and nothing staged after it."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.service.lane import DEPTH, StagingLane


@settings(max_examples=50, deadline=None)
@given(count=st.integers(0, 40), fail_at=st.one_of(st.none(), st.integers(0, 39)))
def test_batches_are_staged_in_order_and_nothing_after_a_failure(count, fail_at):
    lane, staged = StagingLane(), []

    def stage(n):
        if n == fail_at:
            raise ConnectionError(f"batch {n}")
        staged.append(n)

    raised = None
    try:
        for n in range(count):
            lane.submit(stage, n)
        lane.close()
    except ConnectionError as error:
        raised = error
        lane.close(raise_error=False)
    failed = fail_at is not None and fail_at < count
    assert staged == list(range(fail_at if failed else count))
    assert (str(raised) if raised else None) == (f"batch {fail_at}" if failed else None)


def test_the_reader_waits_once_the_lane_holds_its_depth():
    """Back-pressure reaches the stream: with one batch staging and DEPTH waiting, the next submit blocks."""
    lane, release, started = StagingLane(), threading.Event(), threading.Event()

    def stage(_):
        started.set()
        release.wait(30)

    lane.submit(stage, 0)
    assert started.wait(30)
    for n in range(DEPTH):
        lane.submit(stage, n + 1)
    blocked = threading.Thread(target=lane.submit, args=(stage, "one too many"), daemon=True)
    blocked.start()
    blocked.join(0.3)  # a bounded look: it must still be waiting
    assert blocked.is_alive()
    release.set()
    blocked.join(30)
    assert not blocked.is_alive()
    lane.close()


def test_close_waits_for_every_batch_and_a_failure_is_raised_there():
    lane, done = StagingLane(), []
    lane.submit(done.append, 1)
    lane.submit(done.append, 2)
    lane.close()
    assert done == [1, 2]

    def broken(_):
        raise RuntimeError("the store went away")

    lane = StagingLane()
    lane.submit(broken, 1)
    with pytest.raises(RuntimeError, match="went away"):
        lane.close()
