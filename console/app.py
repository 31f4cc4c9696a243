"""The Textual app: a thin view over core.runtime. It starts the runtime off the event loop, polls
core.ops.status in a thread, routes snapshots to the dashboard, and runs operator commands in threads.
"""

from __future__ import annotations

import logging
import threading

import redis
from textual import work
from textual.app import App
from textual.worker import get_current_worker

from console.keys import APP_KEYS, bindings
from console.messages import PulseTaken, RuntimeReady, StatusUpdated
from console.screens.confirm import ConfirmScreen
from console.screens.dashboard import DashboardScreen

REFRESH = 1.0
# The status line's numbers (users merged, backlog) between snapshots: one round trip and one line redrawn, so the
# screen moves 4 times a second during an ingest while the tables, which cost far more to draw, move once.
PULSE = 0.25
EXIT_FAILURE = 3


class SwordsecApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "swordsec-console"
    BINDINGS = bindings(APP_KEYS)

    def __init__(self, runtime, *, refresh: float = REFRESH, start_runtime: bool = True, on_ready=None) -> None:
        """on_ready(): called on the UI thread once the runtime has started (the program settles its heap)."""
        super().__init__()
        self.on_ready = on_ready
        self.runtime = runtime
        self.interval = refresh
        self.start_runtime = start_runtime
        self.snapshot = None
        self.pulse = None  # the newest core.ops.snapshot.Pulse
        self.refresh_paused = False
        self.ready = threading.Event()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._booted = threading.Event()
        self._quitting = False

    @property
    def attached(self) -> bool:
        """Attached to a pipeline started elsewhere (core.ops.attached): quitting leaves it running."""
        return getattr(self.runtime, "attached", False)

    def on_mount(self) -> None:
        self.push_screen(DashboardScreen())
        self.boot()

    # -- background ------------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="runtime")
    def boot(self) -> None:
        try:
            if self.start_runtime:
                self.runtime.start()
        except Exception as error:  # Redis missing, port taken: say it in one line and leave
            self.runtime.stop()  # a half-started runtime may already own workers and a redis-server
            self._stopped.set()
            self._booted.set()
            self.post_message(RuntimeReady(error=str(error)))
            return
        self._booted.set()
        self.ready.set()
        self.post_message(RuntimeReady())

    def on_runtime_ready(self, message: RuntimeReady) -> None:
        if message.error:
            self.exit(return_code=EXIT_FAILURE, message=f"swordsec-console: {message.error}")
            return
        if self.on_ready is not None:
            self.on_ready()
        self.poll()
        self.beat()

    @work(thread=True, exclusive=True, group="poll")
    def poll(self) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled and not self._stopped.is_set():
            if not self.refresh_paused:
                try:
                    self.post_message(StatusUpdated(self.runtime.snapshot()))
                except Exception as error:  # one bad poll must not end live refresh
                    self.runtime.emit("error", f"status poll failed: {error}")
            self._wake.wait(self.interval)
            self._wake.clear()

    @work(thread=True, exclusive=True, group="pulse")
    def beat(self) -> None:
        from core.ops.status import pulse

        worker = get_current_worker()
        while not worker.is_cancelled and not self._stopped.wait(PULSE):
            store, queue = getattr(self.runtime, "store", None), getattr(self.runtime, "queue", None)
            if self.refresh_paused or store is None or queue is None:
                continue
            try:
                self.post_message(PulseTaken(pulse(store, queue)))
            except (redis.RedisError, OSError):  # Redis away: the snapshot, once a second, says so
                continue
            except Exception as error:  # a bug: said once, and the snapshot goes on alone
                self.runtime.emit("error", f"status pulse stopped: {type(error).__name__}: {error}")
                return

    def on_pulse_taken(self, message: PulseTaken) -> None:
        self.pulse = message.pulse
        if not self.refresh_paused and self.is_running:
            self._draw_status()

    def refresh_now(self) -> None:
        self._wake.set()

    def on_status_updated(self, message: StatusUpdated) -> None:
        self.snapshot = message.snapshot
        # Not while shutting down: the panels are being taken apart, and a snapshot still queued would
        # look for tables that are gone.
        if self.refresh_paused or not self.is_running:
            return
        dashboard = self._dashboard()
        if dashboard is not None:
            dashboard.show(message.snapshot)
        self._draw_status()

    def _dashboard(self) -> DashboardScreen | None:
        return next((s for s in self.screen_stack if isinstance(s, DashboardScreen)), None)

    def _draw_status(self) -> None:
        if (dashboard := self._dashboard()) is not None and dashboard.is_mounted:
            dashboard.draw_status(self.snapshot, self.refresh_paused, self.interval, self.pulse)

    # -- commands ---------------------------------------------------------------------------------------
    def run_command(self, function, *args, confirm: str | None = None, action: str = "Do it") -> None:
        """Run a core.ops.control command in a thread, after a confirmation when `confirm` is given."""
        if not self.ready.is_set():
            self.notify("still starting…", severity="warning")
            return
        if confirm is None:
            self._run_command(function, *args)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._run_command(function, *args)

        self.push_screen(ConfirmScreen(confirm, action), answered)

    @work(thread=True, group="commands")
    def _run_command(self, function, *args) -> None:
        try:
            result = function(*args)
        except Exception as error:
            self.call_from_thread(self.notify, str(error), severity="error")
        else:
            if isinstance(result, str):
                self.call_from_thread(self.notify, result)
        self.refresh_now()

    def action_scale(self, delta: int) -> None:
        control = self.runtime.control
        self.run_command(control.add_worker if delta > 0 else control.remove_worker)

    def action_toggle_watcher(self) -> None:
        self.run_command(self.runtime.control.toggle_watcher)

    def action_toggle_refresh(self) -> None:
        self.refresh_paused = not self.refresh_paused
        self._draw_status()
        if not self.refresh_paused:
            self.refresh_now()

    def action_toggle_maximize(self) -> None:
        dashboard = self._dashboard()
        if dashboard is not None and (panel := dashboard.focused_panel()) is not None:
            panel.action_toggle_maximize()

    def action_help(self) -> None:
        from console.screens.help import HelpScreen

        if (dashboard := self._dashboard()) is not None:
            # Built and laid out once, then kept: the keys never change while the app runs, and laying out
            # the help's table again cost ~100 ms of CPU per `?`, seconds of wall time under a busy ingest.
            if not self.is_screen_installed("help"):
                self.install_screen(HelpScreen(dashboard.panels), "help")
            self.push_screen("help")

    def get_system_commands(self, screen):
        from console.palette import commands

        yield from super().get_system_commands(screen)
        yield from commands(self)

    # -- quitting ---------------------------------------------------------------------------------------
    async def action_quit(self) -> None:
        if self._quitting:
            return
        if self.attached:  # the pipeline runs elsewhere and goes on: nothing to ask
            self._quitting = True
            self.stop_runtime()
            return
        in_flight = self.snapshot.in_flight if self.snapshot is not None else 0
        if in_flight:
            question = (f"{in_flight} job(s) or file(s) are in flight. Quit anyway? Accepted users are safe in "
                        f"Redis; running jobs finish first and queued ones resume at the next start.")
            self.push_screen(ConfirmScreen(question, "Quit"), lambda yes: yes and self._begin_quit())
            return
        self._begin_quit()

    def _begin_quit(self) -> None:
        self._quitting = True
        self.notify("stopping: finishing running jobs, stopping workers, Redis…", timeout=30)
        self.stop_runtime()

    @work(thread=True, exclusive=True, group="shutdown")
    def stop_runtime(self) -> None:
        self._stop_runtime()
        self.call_from_thread(self.exit, 0)

    def _stop_runtime(self) -> None:
        self._booted.wait(timeout=60)  # stopping a runtime halfway through start() would orphan its children
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._wake.set()
        if self.start_runtime:
            self.runtime.stop()

    def on_unmount(self) -> None:
        # Any other way out (an exception, a signal) still stops what we started: no orphans.
        self._stop_runtime()


def make_app(runtime, **options) -> SwordsecApp:
    """Build the app around a core runtime (or anything with start/stop/snapshot/control/store)."""
    # Events reach the screen through the event panel; a log line on stderr would tear the display.
    logger = logging.getLogger("swordsec")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    return SwordsecApp(runtime, **options)
