"""core.background.Background: every loop beside the main work starts once, stops within one wait, restarts."""

import threading

from core.background import Background
from tests.conftest import wait_for


class Ticker(Background):
    thread_name = "ticker-test"

    def __init__(self):
        super().__init__()
        self.ticks = 0

    def _run(self):
        while not self._stop.wait(0.01):
            self.ticks += 1


def named(name):
    return [t for t in threading.enumerate() if t.name == name]


def test_a_loop_starts_once_stops_and_starts_again():
    ticker = Ticker().start()
    assert ticker.start() is ticker and len(named("ticker-test")) == 1
    wait_for(lambda: ticker.ticks > 2, message="the loop to run")
    ticker.stop()
    assert named("ticker-test") == []
    stopped_at = ticker.ticks
    ticker.start()
    wait_for(lambda: ticker.ticks > stopped_at, message="the loop to run again after a stop")
    ticker.stop()
    assert named("ticker-test") == []


def test_a_loop_may_stop_itself():
    class Once(Background):
        thread_name = "once-test"

        def _run(self):
            self.stop()  # must not try to join its own thread

    loop = Once().start()
    wait_for(lambda: not named("once-test"), message="the loop to end itself")
    assert loop._stop.is_set()
