"""A whole write of all_users.json shared with a helper process, so that its CPU runs on two cores.

A whole write of a million users is ~3 s of one core in the console (the users are rendered in C, but reading
the replies and rendering share one GIL), at the end of an ingest, when the other core is idle. The buckets
are cut into slices of about SLICE_USERS users. This process takes slices from the front and writes them into
the file as before; a helper (`python -m core.storage.splitwrite`, started through core.queue.children, so it
dies with us) takes slices from the back and writes their regions into a part file of its own. The two take
their slices under a file lock and meet wherever they meet: a helper that starts late (a Python start is
~0.4 s) or runs slower only takes fewer. This process then appends the helper's slices in bucket order (the
kernel copies them: copy_file_range) and takes over where each region lies.

The helper reads as Store.iter_buckets always does (each bucket whole, the dictionary's epoch checked against
the one this process read), and writes regions with the same code (viewfile.write_regions), so the file is
the one a single process would write, byte for byte. A helper that fails in any way only costs time: this
process writes whatever the helper did not hand over. A reset of the namespace that the helper sees is one
the export sees: StaleDictionary, as in a single process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
import sys
import tempfile
from array import array
from pathlib import Path

import msgspec

from core.ops.trace import mark
from core.processes import running
from core.queue.children import spawn
from core.storage.codec import BUCKETS, StaleDictionary

SPLIT_FROM = 400_000  # below this many users a whole write takes a second or less: a helper's start would not pay
SLICE_USERS = 25_000  # users in a slice, about (~9 MB of JSON): small enough that the two end close together
URL_VARIABLE = "SWORDSEC_SPLIT_REDIS_URL"  # the Redis URL reaches the helper in its environment, never its argv
STALE_EXIT = 3
_CLAIMS = struct.Struct("<qq")  # the next slice from the front, the next from the back


class _Claims:
    """Which slices are still free: this process takes them from the front, the helper from the back."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def take(self, front: bool) -> int | None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            low, high = _CLAIMS.unpack(os.pread(self.fd, _CLAIMS.size, 0))
            if low > high:
                return None
            os.pwrite(self.fd, _CLAIMS.pack(low + 1, high) if front else _CLAIMS.pack(low, high - 1), 0)
            return low if front else high
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)


def _sweep(folder: Path) -> None:
    """Delete the files of split writes whose console no longer runs (killed mid-write: a part file can hold
    gigabytes); those of a console still running stay, whatever it is."""
    for path in folder.glob(".split-*.tmp"):
        pid = path.name.split(".")[2]
        if pid.isdigit() and not running(int(pid)):
            path.unlink(missing_ok=True)


def slice_size(count: int) -> int:
    """Buckets in a slice for a store of `count` users (the keys' hash fills buckets evenly)."""
    return max(16, min(BUCKETS, SLICE_USERS * BUCKETS // max(1, count)))


def _bounds(number: int, size: int) -> tuple[int, int]:
    return number * size, min((number + 1) * size, BUCKETS)


class SplitWrite:
    """One whole write shared with a helper; a context: leaving it stops the helper and deletes its files."""

    def __init__(self, store, redis_url: str, folder: Path, count: int, roomy: bool):
        self.store, self.url, self.folder, self.roomy = store, redis_url, Path(folder), roomy
        self.size = slice_size(count)
        self.slices = -(-BUCKETS // self.size)
        self.resume_at = 0  # the first bucket this process has not taken: where the helper's share begins
        self.taken = 0  # slices this process took
        self.failure = ""  # why the helper's share was written here instead, when it was
        self.epoch = ""
        self._process: subprocess.Popen | None = None
        self._claims: _Claims | None = None
        self._paths: list[Path] = []

    def __enter__(self) -> SplitWrite:
        _sweep(self.folder)
        try:
            claims, part, index, said = (self._temporary(kind) for kind in ("claims", "part", "index", "said"))
            claims.write_bytes(_CLAIMS.pack(0, self.slices - 1))
            self._claims = _Claims(claims)
            dictionary = self.store.codec.dictionary
            dictionary.sync()
            self.epoch = dictionary.epoch  # every part of the write reads against it (Store.iter_buckets)
            self._part, self._index, self._said = part, index, said
            # Its output goes to a file: a pipe nobody reads until it ends could fill and stop it.
            try:
                with open(said, "wb") as output:
                    self._process = spawn(
                        [sys.executable, "-m", "core.storage.splitwrite", self.store.ns, str(claims), str(part),
                         str(index), self.epoch, "1" if self.roomy else "0", str(self.size)],
                        env={**os.environ, URL_VARIABLE: self.url}, stdin=subprocess.DEVNULL, stdout=output,
                        stderr=output)
            except OSError as error:  # no helper: this process takes every slice
                self.failure = f"the export's helper could not start: {error}"
            mark("export-split", self.slices, self.size)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _temporary(self, kind: str) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".split-{kind}.{os.getpid()}.", suffix=".tmp", dir=self.folder)
        os.close(fd)
        self._paths.append(Path(name))
        return Path(name)

    def front(self):
        """The slices this process writes, (first bucket, stop) in order, taken one at a time as it goes."""
        while (number := self._claims.take(front=True)) is not None:
            self.taken += 1
            first, self.resume_at = _bounds(number, self.size)
            yield first, self.resume_at

    def rest(self, check_stop) -> _Part | None:
        """The helper's share, buckets resume_at..BUCKETS-1, once it has written it; None when it did not (then
        this process writes them: self.failure says why)."""
        process = self._process
        if process is None:
            return None
        while True:
            check_stop()
            try:
                code = process.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                continue
        if code == STALE_EXIT:
            raise StaleDictionary("the namespace was cleared during the export; the next one starts over")
        if code != 0:
            said = self._said.read_bytes()[-4096:].decode(errors="replace").strip().splitlines()
            self.failure = f"the export's helper exited with {code}: {said[-1] if said else 'no message'}"
            return None
        try:
            part = _Part(self._part, msgspec.msgpack.decode(self._index.read_bytes(), type=_Index))
        except (OSError, ValueError, msgspec.MsgspecError) as error:
            self.failure = f"the export's helper left an unreadable index: {error}"
            return None
        if part.first != self.resume_at:
            self.failure = f"the export's helper wrote from bucket {part.first}, not {self.resume_at}"
            return None
        mark("export-split-rest", self.taken, len(part.slices))
        return part

    def __exit__(self, *exc) -> None:
        process = self._process
        if process is not None:
            if process.poll() is None:
                process.kill()
                process.wait()
        if self._claims is not None:
            self._claims.close()
        for path in self._paths:
            path.unlink(missing_ok=True)


class _Index(msgspec.Struct, array_like=True):
    slices: list[tuple[int, int, int, int]]  # (first bucket, stop, offset in the part file, bytes), as written
    start: bytes  # the helper's copy's columns (core/storage/viewfile.Copy), offsets within the part file
    room: bytes
    users: bytes
    used: bytes
    bad: list[tuple[int, int, list[dict]]]  # (bucket, undecodable values, samples)


class _Part:
    """What the helper wrote: its slices, where each of their regions lies in its part file, its bad values."""

    def __init__(self, path: Path, index: _Index):
        self.path, self.index = path, index
        self.slices = sorted(index.slices)
        expected = self.slices[0][0] if self.slices else BUCKETS
        self.first = expected
        for first, stop, _, _ in self.slices:  # the slices must follow each other up to the last bucket
            if first != expected:
                raise ValueError(f"the helper's slices leave out buckets {expected}..{first - 1}")
            expected = stop
        if expected != BUCKETS:
            raise ValueError(f"the helper's slices end at bucket {expected}")

    def append_to(self, out, copy, position: int) -> int:
        """Copy the helper's regions to the end of `out` (at `position`), in bucket order; note where they lie.
        Each begins with its comma: `copy` must hold a user already (copy.first < BUCKETS)."""
        from core.storage.viewfile import copy_span

        start, room, users, used = (array("q", column) for column in
                                    (self.index.start, self.index.room, self.index.users, self.index.used))
        out.flush()
        src = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for first, stop, offset, size in self.slices:
                copy_span(src, out.fileno(), offset, size)
                shift = position - offset
                for bucket in range(first, stop):
                    copy.start[bucket] = start[bucket] + shift
                copy.room[first:stop], copy.users[first:stop], copy.used[first:stop] = \
                    room[first:stop], users[first:stop], used[first:stop]
                position += size
        finally:
            os.close(src)
        out.seek(0, os.SEEK_END)  # the buffered file learns where the kernel's copies left its end
        for bucket, count, samples in self.index.bad:
            copy.bad[bucket] = (count, samples)
        return position


def run(argv: list[str]) -> int:
    """The helper: take slices from the back until none is left, write their regions, then the index."""
    import redis

    from core.queue.children import arm_from_environment
    from core.storage.store import Store
    from core.storage.viewfile import Copy, _Bad, write_regions

    arm_from_environment()
    namespace, claims_path, part_path, index_path, epoch, roomy, size = argv
    size = int(size)
    try:
        store = Store(redis.Redis.from_url(os.environ[URL_VARIABLE], socket_connect_timeout=5), namespace)
        # first=0: each region has its leading comma, as this process's share always comes after the console's.
        copy = Copy(Path(part_path), roomy=roomy == "1", first=0)
        bad, claims, slices = _Bad(copy), _Claims(Path(claims_path)), []
        with open(part_path, "wb", buffering=1 << 20) as out:
            position = 0
            while (number := claims.take(front=False)) is not None:
                first, stop = _bounds(number, size)
                buckets = store.iter_buckets(on_bad=bad.tell, first=first, stop=stop, epoch=epoch)
                end = write_regions(out, copy, buckets, first, stop, position, lambda: None)
                slices.append((first, stop, position, end - position))
                position = end
        index = _Index(slices, copy.start.tobytes(), copy.room.tobytes(), copy.users.tobytes(), copy.used.tobytes(),
                       [(bucket, count, samples) for bucket, (count, samples) in copy.bad.items()])
        Path(index_path).write_bytes(msgspec.msgpack.encode(index))
        return 0
    except StaleDictionary:
        return STALE_EXIT
    except Exception as error:  # noqa: BLE001 - one line for the console, which writes this share itself
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(run(sys.argv[1:]))
    sys.exit(1)
