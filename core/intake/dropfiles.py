"""Which entries in the drop folder are ours, when one looks whole, opening it safely, and its fingerprint.

An entry is opened once (open_checked), after its type is checked without opening it: a FIFO, socket,
device or folder named *.json is refused with a one-line reason and never opened (opening a FIFO blocks).
The open itself cannot be redirected: the last component is opened with O_NOFOLLOW, the descriptor is
checked with fstat (a regular file) and, on Linux, by the path the kernel gives for it (inside the folder).
Everything after that (fingerprint, stream, quarantine copy) reads that one descriptor, so a file or link
swapped in meanwhile is never read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

UNSEEN = (-1, -1)

PATTERNS = (".json", ".jsonl", ".ndjson")
IGNORED_SUFFIXES = (".part", ".tmp", "~")
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class Refused(Exception):
    """An entry that is not read at all; the message is the one-line reason for the report."""


def is_candidate(path: Path) -> bool:
    name = path.name
    return (not name.startswith(".") and name.lower().endswith(PATTERNS)
            and not name.endswith(IGNORED_SUFFIXES))


def signature(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def kind(mode: int) -> str | None:
    """What a non-regular entry is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def stability(path: Path, seen: tuple[int, int], quiet_period: float) -> tuple[tuple[int, int] | None, bool]:
    """(the file's (size, mtime) now or None when it is gone, whether to read it now).

    Read it once it is unchanged since `seen` and either `quiet_period` old or a whole JSON array; on
    first sight (`seen` is UNSEEN) a whole file is read at once (renamed in, or there at startup), but a
    file that changed since we last looked never is. An entry that is not a regular file (or a link to one)
    is handed on at once, unopened, to be refused with its reason.
    """
    try:
        info = os.lstat(path)
    except OSError:
        return None, False
    current = (info.st_size, info.st_mtime_ns)
    if stat.S_ISLNK(info.st_mode):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return current, True  # a dangling link: refused now
    else:
        mode = info.st_mode
    if not stat.S_ISREG(mode):
        return current, True
    settled = time.time() - info.st_mtime >= quiet_period or looks_complete(path)
    if current != seen and seen != UNSEEN:
        return current, False
    return current, settled


def looks_complete(path: Path) -> bool:
    """A JSON array whose last byte closes it was written whole; a partial write rarely ends in "]".

    Only arrays: a JSON Lines file looks complete after every line, even half written. Opened without
    blocking and only read when it is a regular file (an entry swapped for a FIFO must not stall discovery).
    """
    if path.suffix.lower() != ".json":
        return False
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        return os.pread(fd, 64, max(0, info.st_size - 64)).rstrip().endswith(b"]")
    except OSError:
        return False
    finally:
        os.close(fd)


def open_checked(path: Path, folder: Path):
    """Open a drop-folder entry for reading (a binary file object), or raise Refused with the reason.

    FileNotFoundError when it is gone. A link is followed only to a regular file inside `folder`.
    """
    path = Path(path)
    root = Path(os.path.realpath(folder))
    info = os.lstat(path)
    target = path
    if stat.S_ISLNK(info.st_mode):
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(root):
            raise Refused(f"refused: symlink leads outside the watched folder (to {target})")
        try:
            info = os.stat(target)
        except OSError:
            raise Refused("refused: a symlink to nothing") from None
    if what := kind(info.st_mode):
        raise Refused(f"refused: {what}, not a regular file; it is not read")
    try:
        fd = os.open(target, _OPEN_FLAGS | _NOFOLLOW)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise Refused("refused: it became a symlink while being opened") from None
        raise
    try:
        opened = os.fstat(fd)
        if what := kind(opened.st_mode):
            raise Refused(f"refused: {what} (replaced while being opened), not a regular file")
        real = _real_path(fd)
        if real is not None and not real.is_relative_to(root):
            raise Refused(f"refused: it leads outside the watched folder (to {real})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _real_path(fd: int) -> Path | None:
    """Where the kernel says an open descriptor's file is (Linux); None where it cannot say."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def fingerprint(source) -> str:
    """The content's hash: of a path, or of an open binary file (read from its start)."""
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            return fingerprint(handle)
    source.seek(0)
    while chunk := source.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def numbered(name: str) -> Iterator[str]:
    """NAME, then STEM.2.SUFFIX, STEM.3.SUFFIX, ...: the names a copy may take beside earlier ones."""
    yield name
    path = Path(name)
    stem, suffix = (path.stem, path.suffix) if path.suffix else (name, "")
    for number in range(2, 100_000):
        yield f"{stem}.{number}{suffix}"
    yield f"{stem}.{time.time_ns()}{suffix}"
