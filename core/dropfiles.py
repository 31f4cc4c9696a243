"""Which files in the drop folder are ours, when one looks whole, and its content fingerprint."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

UNSEEN = (-1, -1)

PATTERNS = (".json", ".jsonl", ".ndjson")
IGNORED_SUFFIXES = (".part", ".tmp", "~")


def is_candidate(path: Path) -> bool:
    name = path.name
    return (not name.startswith(".") and name.lower().endswith(PATTERNS)
            and not name.endswith(IGNORED_SUFFIXES))


def signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def stability(path: Path, seen: tuple[int, int], quiet_period: float) -> tuple[tuple[int, int] | None, bool]:
    """(the file's (size, mtime) now or None when it is gone, whether to read it now).

    Read it once it is unchanged since `seen` and either `quiet_period` old or a whole JSON array; on
    first sight (`seen` is UNSEEN) a whole file is read at once (renamed in, or there at startup), but a
    file that changed since we last looked never is.
    """
    try:
        stat = path.lstat() if path.is_symlink() else path.stat()
    except OSError:
        return None, False
    current = (stat.st_size, stat.st_mtime_ns)
    settled = time.time() - stat.st_mtime >= quiet_period or looks_complete(path)
    if current != seen and seen != UNSEEN:
        return current, False
    return current, settled


def looks_complete(path: Path) -> bool:
    """A JSON array whose last byte closes it was written whole; a partial write rarely ends in "]".

    Only arrays: a JSON Lines file looks complete after every line, even half written.
    """
    if path.suffix.lower() != ".json":
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 64))
            return handle.read().rstrip().endswith(b"]")
    except OSError:
        return False


def fingerprint(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
