"""One settings object for every mode: command-line flags > environment variables > defaults."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

USER_FIELDS = ("id", "first_name", "last_name", "email", "gender", "ip_address", "user_name", "agent", "country")


class ConfigError(ValueError):
    """A setting that cannot be used; the message is shown to the user as one line."""


def _env_bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Everything the runtime needs. `ENV` maps each field to the variable that can set it."""

    watch: Path = Path("drop")
    data_dir: Path = Path("data")
    output: Path | None = None
    redis_url: str | None = None
    grpc_listen: str = "127.0.0.1:50051"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    merge_key: str = "email"
    once: bool = False
    log_format: str = "text"
    namespace: str = "swordsec"
    batch_size: int = 1000
    quiet_period: float = 1.0
    poll: bool = False
    after_merge: str = "keep"
    max_backlog: int = 200
    export_interval: float = 0.5
    worker_mode: str = "inline"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # repr=False: the token must never reach a log line or a traceback.
    token: str | None = field(default=None, repr=False)
    insecure: bool = False
    metrics_listen: str | None = None
    max_concurrent_calls: int = 64
    # SIGTERM waits this long for accepted users to be merged and all_users.json written before exiting 0.
    stop_grace: float = 30.0
    # Limits meant for outside callers (core.service.admission, core.service.backpressure); see docs/DEPLOY.md.
    idle_timeout: float = 60.0
    max_batch_users: int = 1_000
    max_staged_bytes: int = 256 * 1024 * 1024
    # Files holding personal data are 0600 in a 0700 data folder; this makes them 0640 in 0750.
    group_readable: bool = False

    ENV = {
        "watch": "SWORDSEC_WATCH",
        "data_dir": "SWORDSEC_DATA_DIR",
        "output": "SWORDSEC_OUTPUT",
        "redis_url": "REDIS_URL",
        "grpc_listen": "SWORDSEC_GRPC_LISTEN",
        "workers": "SWORDSEC_WORKERS",
        "merge_key": "SWORDSEC_MERGE_KEY",
        "log_format": "SWORDSEC_LOG_FORMAT",
        "namespace": "SWORDSEC_NAMESPACE",
        "batch_size": "SWORDSEC_BATCH_SIZE",
        "quiet_period": "SWORDSEC_QUIET_PERIOD",
        "poll": "SWORDSEC_POLL",
        "after_merge": "SWORDSEC_AFTER_MERGE",
        "max_backlog": "SWORDSEC_MAX_BACKLOG",
        "worker_mode": "SWORDSEC_WORKER_MODE",
        "tls_cert": "SWORDSEC_TLS_CERT",
        "tls_key": "SWORDSEC_TLS_KEY",
        "token": "SWORDSEC_TOKEN",
        "insecure": "SWORDSEC_INSECURE",
        "metrics_listen": "SWORDSEC_METRICS_LISTEN",
        "max_concurrent_calls": "SWORDSEC_MAX_CONCURRENT_CALLS",
        "stop_grace": "SWORDSEC_STOP_GRACE",
        "idle_timeout": "SWORDSEC_IDLE_TIMEOUT",
        "max_batch_users": "SWORDSEC_MAX_BATCH_USERS",
        "max_staged_bytes": "SWORDSEC_MAX_STAGED_BYTES",
        "group_readable": "SWORDSEC_GROUP_READABLE",
    }

    @property
    def output_path(self) -> Path:
        return self.output if self.output is not None else self.data_dir / "all_users.json"

    @classmethod
    def build(cls, flags: dict | None = None, environ: dict | None = None, *, listens: bool = True) -> "Settings":
        """Merge flags (None means "not given") over the environment over the defaults, then validate.

        Every command resolves its settings here, so a default or a variable means the same everywhere.
        listens=False (the `worker` and `replay` commands) skips the rules for listeners and TLS files,
        which a command that serves nothing has no use for."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in cls.ENV.items():
            raw = environ.get(var)
            if raw not in (None, ""):
                values[name] = _convert(name, types[name], raw, var)
        for name, value in (flags or {}).items():
            if value is not None and name in types:
                values[name] = value
        for name in ("watch", "data_dir", "output", "tls_cert", "tls_key"):
            if isinstance(values.get(name), str):
                values[name] = Path(values[name])
        settings = replace(cls(), **values)
        settings.validate(listens=listens)
        return settings

    def validate(self, listens: bool = True) -> None:
        if self.merge_key not in USER_FIELDS:
            raise ConfigError(f"merge key {self.merge_key!r} is not a user field (one of {', '.join(USER_FIELDS)})")
        if self.workers < 0:
            raise ConfigError("workers must be 0 or more")
        if not 1 <= self.batch_size <= 10_000:
            raise ConfigError("batch size must be between 1 and 10000")
        if self.after_merge not in ("keep", "move", "delete"):
            raise ConfigError("after-merge must be keep, move or delete")
        if self.worker_mode not in ("inline", "fork"):
            raise ConfigError("worker mode must be inline or fork")
        if not 0 <= self.stop_grace <= 86_400:
            raise ConfigError("stop grace must be between 0 and 86400 seconds")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log format must be text or json")
        if listens:
            self._validate_security(parse_address(self.grpc_listen, "gRPC listen address")[0])

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def _validate_security(self, host: str) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS file {path} is not a readable file")
        if self.token is not None and (len(self.token) < 16 or any(c.isspace() for c in self.token)):
            raise ConfigError("token must be at least 16 characters with no spaces")
        if self.max_concurrent_calls < 1:
            raise ConfigError("max concurrent calls must be 1 or more")
        if self.idle_timeout < 0:
            raise ConfigError("idle timeout must be 0 (never) or more seconds")
        if not 1 <= self.max_batch_users <= 100_000:
            raise ConfigError("max batch users must be between 1 and 100000")
        if self.batch_size > self.max_batch_users:
            raise ConfigError(f"batch size {self.batch_size} is over the max batch users {self.max_batch_users} "
                              f"(SWORDSEC_MAX_BATCH_USERS): one batch is one merge script, which blocks Redis while "
                              f"it runs")
        if self.max_staged_bytes < 0:
            raise ConfigError("max staged bytes must be 0 (no bound) or more")
        # One rule for every listener: off loopback, anyone on the network can connect. Without TLS the
        # data, and a token if one is set, cross the network in clear; only --insecure accepts that.
        if not is_loopback(host) and not self.tls and not self.insecure:
            what = "the bearer token and users would travel in clear" if self.token else "anyone could push users"
            raise ConfigError(f"refusing to listen on {self.grpc_listen} without TLS: {what}; pass --tls-cert/"
                              f"--tls-key (with --token), or --insecure to accept plaintext on a trusted network")
        if self.metrics_listen is not None:
            metrics_host = parse_address(self.metrics_listen, "metrics listen address")[0]
            if not is_loopback(metrics_host) and not self.tls and not self.insecure:
                raise ConfigError(f"refusing to serve metrics on {self.metrics_listen} without TLS: pass --tls-cert/"
                                  f"--tls-key, listen on 127.0.0.1, or pass --insecure")

    @property
    def file_mode(self) -> int:
        return 0o640 if self.group_readable else 0o600

    @property
    def folder_mode(self) -> int:
        return 0o750 if self.group_readable else 0o700


def parse_address(address: str, what: str = "address") -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets: [::1]:50051) as (host without brackets, port); the one parser of
    listen and server addresses. Port 0 is allowed: bind any free port."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {address!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def join_address(host: str, port: int) -> str:
    """The inverse of parse_address: brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _convert(name: str, kind: str, raw: str, var: str):
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return _env_bool(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {kind}") from None
    return raw
