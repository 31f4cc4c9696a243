"""Start, watch, restart and scale RQ worker processes.

Workers are separate processes (RQ's job timeouts rely on signals in a main thread, and a crash of one
must not take the console down). The supervisor is their parent, so it sees a death at once: it
hands the dead worker's unfinished jobs back to RQ's own abandoned-job recovery (retry, since every
job carries a Retry) instead of waiting for a heartbeat to expire, and starts a replacement.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from rq.worker import Worker

from core.queue.children import spawn
from core.queue.handback import hand_back, rescue_stranded
from core.queue.taskqueue import JSONSerializer
from core.queue.worker_process import URL_VARIABLE

RESTART_BACKOFF = (0.5, 1, 2, 5, 10)
STOP_GRACE = 15.0
RECOVERY_RETRY = 2.0
# A worker stopped by a signal (SIGSTOP, a debugger: state T or t in /proc) is flagged at once and, if it
# is still stopped this long after, killed: its job goes back to the queue and a replacement starts.
# Short enough not to stall a file, long enough for a deliberate pause (a debugger, a quick look).
FROZEN_HANDBACK = 15.0


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen
    started_at: float = field(default_factory=time.time)
    restarts: int = 0
    frozen_since: float | None = None  # monotonic time it was first seen stopped
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def process_state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat (R, S, D, T, t, Z...); "" when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


class Supervisor:
    def __init__(self, connection: redis.Redis, redis_url: str, queue_name: str, desired: int, on_event=None,
                 mode: str = "inline", log_dir: Path | None = None):
        self.connection = connection
        self.mode = mode
        # Each worker's own output goes to a file here (the console owns the terminal); None: inherit it.
        self.log_dir = log_dir
        self.redis_url = redis_url
        self.queue_name = queue_name
        self.desired = desired
        self.on_event = on_event or (lambda level, text: None)
        self.workers: list[WorkerProcess] = []
        self.dead: list[dict] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._serial = 0
        # Dead workers whose jobs could not be handed back yet (Redis was down too): retried until done.
        self._unrecovered: list[str] = []
        self._host = socket.gethostname().split(".")[0]

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._reconcile()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self, grace: float = STOP_GRACE) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        with self._lock:
            # A worker stopped by a signal is killed, not asked: a SIGTERM it takes on resuming may land on a
            # thread that is not RQ's main loop, which then waits out its dequeue (~15 s) before it leaves.
            # Frozen, it was doing nothing it could finish; its job is handed back below.
            frozen = [w for w in self.workers if w.alive and process_state(w.pid) in ("T", "t")]
            for worker in self.workers:
                if worker in frozen:
                    worker.process.kill()
                else:
                    self._terminate(worker)
            deadline = time.monotonic() + grace
            for worker in self.workers:
                try:
                    worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.process.wait()
            self.workers.clear()
        for worker in frozen:
            self._recover(worker.name, quiet=True)

    # -- commands ------------------------------------------------------------------------------------
    def scale(self, desired: int) -> None:
        with self._lock:
            self.desired = max(0, desired)
            self._reconcile()

    def stop_worker(self, name: str) -> bool:
        """Stop one worker after its current job; the desired count drops by one."""
        with self._lock:
            for worker in self.workers:
                if worker.name == name:
                    self.workers.remove(worker)
                    self.desired = max(0, self.desired - 1)
                    self._terminate(worker)
                    self.on_event("info", f"worker {name} stopping")
                    return True
        return False

    def restart_worker(self, name: str) -> bool:
        with self._lock:
            for worker in self.workers:
                if worker.name == name:
                    self._terminate(worker)
                    self.on_event("info", f"worker {name} restarting")
                    return True
        return False

    def alive_count(self) -> int:
        with self._lock:
            return sum(1 for w in self.workers if w.alive and w.frozen_since is None)

    def processes(self) -> list[dict]:
        with self._lock:
            return [{"name": w.name, "pid": w.pid, "alive": w.alive, "restarts": w.restarts,
                     "started_at": w.started_at, "frozen": w.frozen_since is not None} for w in self.workers]

    # -- internals -------------------------------------------------------------------------------------
    def _spawn(self, restarts: int = 0) -> WorkerProcess:
        self._serial += 1
        name = f"swordsec-{self._host}-{os.getpid()}-{self._serial}"
        env = dict(os.environ, **{URL_VARIABLE: self.redis_url, "SWORDSEC_WORKER_SUPERVISED": "1"})
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_path(name), "ab")
        try:
            # A process group of its own (ctrl+c and a terminal hang-up reach the console, which stops workers
            # in order) and a parent-death SIGTERM, RQ's warm shutdown, for when the console is killed.
            process = spawn(
                [sys.executable, "-m", "core.queue.worker_process", self.queue_name, name, self.mode],
                env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output, death_signal=signal.SIGTERM,
            )
        finally:
            if output is not None:
                output.close()  # the child holds its own descriptor
        return WorkerProcess(name=name, process=process, restarts=restarts)

    def log_path(self, name: str) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{name}.log"

    def _reconcile(self) -> None:
        while len(self.workers) < self.desired:
            self.workers.append(self._spawn())
        while len(self.workers) > self.desired:
            worker = self.workers.pop()
            self._terminate(worker)

    @staticmethod
    def _terminate(worker: WorkerProcess) -> None:
        if worker.alive:
            # A frozen worker first: resumed *before* SIGTERM, since a signal sent to a stopped process goes to
            # whichever thread wakes first, and one that is not the main thread leaves RQ's blocking dequeue
            # unaware of the stop request until it times out.
            try:
                os.kill(worker.pid, signal.SIGCONT)
            except OSError:
                pass
            worker.process.terminate()  # RQ's warm shutdown: the current job finishes first

    def _watch(self) -> None:
        retried_at = 0.0
        while not self._stop.wait(0.25):
            if self._unrecovered and time.monotonic() - retried_at > RECOVERY_RETRY:
                retried_at = time.monotonic()
                self._unrecovered = [name for name in self._unrecovered if not self._recover(name, quiet=True)]
            with self._lock:
                self._check_frozen()
                died = [(w, w.process.poll()) for w in self.workers if w.process.poll() is not None]
                for worker, code in died:
                    self.workers.remove(worker)
                    self.dead.append({"name": worker.name, "pid": worker.pid, "code": code, "at": time.time()})
                    del self.dead[:-50]
            # Redis calls outside the lock: a slow or lost Redis must not freeze status and scaling.
            for worker, code in died:
                if not self._recover(worker.name):
                    self._unrecovered.append(worker.name)
                if self._stop.is_set():
                    return
                delay = RESTART_BACKOFF[min(worker.restarts, len(RESTART_BACKOFF) - 1)]
                if time.time() - worker.started_at > 60:
                    worker.restarts, delay = 0, RESTART_BACKOFF[0]
                log = self.log_path(worker.name)
                self.on_event("warning", f"worker {worker.name} (pid {worker.pid}) exited with {code}; "
                                         f"restarting in {delay:g} s" + (f"; its log: {log}" if log else ""))
                self._later(delay, worker.restarts + 1)

    def _check_frozen(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            stopped = worker.alive and process_state(worker.pid) in ("T", "t")
            if stopped and worker.frozen_since is None:
                worker.frozen_since = now
                self.on_event("warning", f"worker {worker.name} (pid {worker.pid}) is frozen (stopped by a signal); "
                                         f"its job goes back to the queue in {FROZEN_HANDBACK:g} s unless it resumes")
            elif not stopped and worker.frozen_since is not None and worker.alive:
                worker.frozen_since = None
                self.on_event("info", f"worker {worker.name} resumed")
            elif stopped and not worker.killed and now - worker.frozen_since >= FROZEN_HANDBACK:
                # SIGKILL is the one signal a stopped process cannot hold back; the death path then hands
                # its job back and starts a replacement.
                self.on_event("warning", f"worker {worker.name} frozen for {FROZEN_HANDBACK:g} s: stopping it")
                worker.killed = True
                worker.process.kill()

    def _later(self, delay: float, restarts: int) -> None:
        timer = threading.Timer(delay, self._replace, args=(restarts,))
        timer.daemon = True  # a pending restart must not keep a stopping program alive
        timer.start()

    def _replace(self, restarts: int) -> None:
        with self._lock:
            if self._stop.is_set() or len(self.workers) >= self.desired:
                return
            try:
                self.workers.append(self._spawn(restarts))
            except OSError as error:  # out of processes or memory: try again a little later
                self.on_event("error", f"cannot start a worker: {error}; trying again in 5 s")
                self._later(5.0, restarts)

    def _recover(self, dead_name: str, quiet: bool = False) -> bool:
        """Mark the dead worker's started jobs as expired and let RQ's cleanup retry them now."""
        try:
            count = hand_back(self.connection, self.queue_name, dead_name)
            count += rescue_stranded(self.connection, self.queue_name)
            if count:
                self.on_event("warning", f"requeued {count} job(s) left by dead worker {dead_name}")
            worker = Worker.find_by_key(f"rq:worker:{dead_name}", connection=self.connection,
                                        serializer=JSONSerializer)
            if worker is not None:
                worker.register_death()
            return True
        except redis.RedisError as error:
            if not quiet:
                self.on_event("error", f"cannot hand back the jobs of {dead_name} yet ({error}); will retry")
            return False
