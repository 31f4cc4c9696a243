"""One `attach` process per browser session, which ends with its WebSocket and with the server.

textual-serve starts each app through a shell and, to stop it, sends a "quit" message and waits for the
app to close its output, for as long as that takes: an app that does not answer (busy, or its shell never
passed the message on) outlives the tab, and every process outlives a server that is killed. Here the
process is started directly (no shell), its parent-death signal is armed (core.queue.children), and a
stop that the app does not honour in QUIT_GRACE seconds becomes SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from textual_serve.app_service import AppService

from core.queue.children import dying_with_us

QUIT_GRACE = 3.0  # the app's own quit: it closes its Redis connections and leaves
TERM_GRACE = 2.0  # then SIGTERM; past this, SIGKILL


def session_command(redis_url: str, namespace: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of one session: `attach` through console.web.child, which arms the
    parent-death signal when setpriv cannot. The Redis URL travels in the environment, never on a command
    line that `ps` shows to every user of the machine."""
    from core.config import Settings

    environment = {Settings.ENV["redis_url"]: redis_url, Settings.ENV["namespace"]: namespace}
    return [sys.executable, "-m", "console.web.child"], environment


class Session(AppService):
    """textual-serve's AppService with a process that cannot outlive its session."""

    def __init__(self, argv: list[str], environment: dict[str, str], **kwargs):
        super().__init__(" ".join(argv), **kwargs)
        self._argv = argv
        self._extra_environment = environment
        self._stopping: asyncio.Lock = asyncio.Lock()

    @property
    def finished(self) -> asyncio.Task:
        """Done when the app's output ends (it quit or died); set once `start` has returned."""
        assert self._task is not None
        return self._task

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def _open_app_process(self, width: int = 80, height: int = 24):
        environment = self._build_environment(width=width, height=height)
        environment.update(self._extra_environment)
        argv = list(self._argv)
        # SIGKILL: an attached console owns nothing that needs a clean stop, and a session whose server
        # died must not linger waiting for a quit that will never come.
        argv = dying_with_us(argv, signal.SIGKILL, environment)
        self._process = process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=environment,
            # Its own session: a ctrl+c at the server's terminal reaches the server, which stops sessions in order.
            start_new_session=True)
        self._stdin = process.stdin
        return process

    async def stop(self) -> None:
        """Ask the app to quit, then make sure it has: the process is reaped when this returns."""
        async with self._stopping:
            process, task = self._process, self._task
            if process is None:
                return
            if task is not None:
                await self._download_manager.cancel_app_downloads(app_service_id=self.app_service_id)
                if process.returncode is None:
                    await self.send_meta({"type": "quit"})
                try:
                    await asyncio.wait_for(asyncio.shield(task), QUIT_GRACE)
                except TimeoutError:
                    task.cancel()
                self._task = None
            for sent, grace in ((None, QUIT_GRACE), (signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, None)):
                if process.returncode is not None:
                    break
                if sent is not None:
                    try:
                        process.send_signal(sent)
                    except ProcessLookupError:
                        break
                try:
                    await asyncio.wait_for(process.wait(), grace)
                except TimeoutError:
                    continue
            if self._stdin is not None:
                self._stdin.close()
