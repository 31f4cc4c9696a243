"""What every command shares about talking to the operator: exit codes and log lines."""

from __future__ import annotations

import logging
import sys

EXIT_OK, EXIT_INPUT_REJECTED, EXIT_USAGE, EXIT_FAILURE = 0, 1, 2, 3
# Stopped (SIGTERM) before every accepted user was merged: they are safe in Redis and finish at the next start.
EXIT_UNFINISHED = 4


def setup_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger("swordsec")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import orjson

        body = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                "message": record.getMessage(), **getattr(record, "event", {})}
        return orjson.dumps(body, default=str).decode()
