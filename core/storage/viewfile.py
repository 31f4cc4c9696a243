"""all_users.json kept in step with the store by rewriting only the buckets that changed.

At ten million users the file is 3 GB, and this machine writes ~170 MB/s: no change can reach a rewritten
copy of it within seconds. So the file is made of regions, one per bucket (core/storage/codec.py) in bucket
order, each holding its users by merge key followed by spaces (JSON whitespace): room to grow in place.
Two copies live beside the path, `.NAME.a` and `.NAME.b`, and NAME is a symbolic link to the current one,
replaced atomically (a new link, then os.replace). An export brings the other copy up to date, rewriting
in place only the regions of buckets changed since that copy was written (merge.lua names them in
export:dirty), then points the link at it. A reader that opens NAME gets one whole copy, never one being
patched: a copy is patched only when no process has it open, which a write lease proves (the kernel grants
one only then). Otherwise, or when a region outgrows its room, or in a store too small to leave room, the
copy is made anew (temporary file, fsync, rename) from the current one: the regions of unchanged buckets
are copied as they are, by the kernel, and only the changed ones are read from the store (a 1,000-user drop
onto 20,000 users: ~50 ms on two busy cores, where walking and encoding every bucket took ~500 ms). Only on a process's first
export, or when the current copy cannot serve (changed on disk, another layout, a cleared store), is a copy
written whole from the store. The users and their order are exactly those of a whole write; only the
whitespace between buckets differs.

Where each region lies is saved beside each copy (`.NAME.a.layout`), so a restarted console patches the copies
it left instead of writing 3 GB whole twice (minutes at ten million users, every drop meanwhile waiting). A
saved layout is used only when it is exactly the copy's: the file's identity, the store's export generation,
and the number of the export that last took changes from the store (Store.take_changes): a later export that
took changes and never finished leaves it unused. A copy's layout is deleted before the copy is patched.
"""

from __future__ import annotations

import fcntl
import os
import signal
import tempfile
import time
import zlib
from array import array
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import orjson

from core.ops.trace import mark
from core.storage.codec import BUCKETS
from core.storage.splitwrite import SPLIT_FROM, SplitWrite
from core.storage.store import MAX_BAD_SAMPLES, Store, sync_directory

# A region's room to grow: an eighth of its users' bytes and about three users more (about 22 users at 10M
# users, 5 at 1M): a few thousand new users touch a bucket once or twice, and a copy whose bucket overflows
# is written whole, so the room sets how rarely that happens. It costs 64 MB of spaces plus an eighth.
ROOM_SHARE = 8
ROOM_MIN = 1024
PATCH_FROM = 200_000  # below this many users a whole write takes a second or so: no room, no patching
READ_BUCKETS = 200  # changed buckets read per round trip while patching
# A write asked to stop (ViewFile.stopping: a second signal while the program stops) ends once it has run this
# long; a shorter one finishes. A whole write at ten million users takes a minute.
STOP_AFTER = 0.5
SEPARATOR, FIRST, OPEN, CLOSE = b",\n", b"\n", b"[", b"\n]\n"
LAYOUT_FORMAT = 1


class ExportStopped(Exception):
    """A write given up because it was asked to stop: the file still shows the export before it."""


@dataclass
class Copy:
    """One copy of the file and where each bucket's region lies in it."""
    path: Path
    start: array = field(default_factory=lambda: array("q", bytes(8 * BUCKETS)))
    room: array = field(default_factory=lambda: array("q", bytes(8 * BUCKETS)))  # region size, spaces included
    users: array = field(default_factory=lambda: array("q", bytes(8 * BUCKETS)))
    used: array = field(default_factory=lambda: array("q", bytes(8 * BUCKETS)))  # region bytes before the spaces
    bad: dict = field(default_factory=dict)  # bucket -> (undecodable count, samples)
    first: int = BUCKETS  # the first non-empty bucket: the only region without a leading comma
    roomy: bool = False  # written with room to grow (a store of PATCH_FROM users or more)
    identity: tuple = ()
    generation: str = ""
    version: int = -1
    changed: set = field(default_factory=set)  # buckets changed since this copy was written


class ViewFile:
    def __init__(self, store: Store, path: Path, patch_from: int = PATCH_FROM, split_url: str | None = None,
                 split_from: int = SPLIT_FROM):
        """split_url: the store's Redis URL, for a helper process that writes part of a large store's whole
        copies (core/storage/splitwrite.py); without it this process writes them alone."""
        self.store = store
        self.patch_from = patch_from
        self.split_url, self.split_from = split_url, split_from
        self.split_shares = (0, 0)  # slices of the last split write: (this process's, the helper's)
        self.split_failures: list[str] = []  # why a helper's share was written here instead (for the exporter)
        self.path = Path(path)
        self.copies = {name: None for name in ("a", "b")}
        self.current = "b"  # the first export writes "a"
        self.patched = 0  # exports that patched a copy in place (for tests and the bench)
        self.spliced = 0  # exports that made a copy anew from the current one
        self.restored = 0  # copies taken up from the layouts a previous process saved
        self.stopping = lambda: False  # True once a write in progress should be given up (see STOP_AFTER)
        self._looked_for_saved = False
        self._started = 0.0

    @property
    def behind(self) -> bool:
        """Whether the copy the next export brings up to date misses changes (or is not written yet)."""
        copy, current = self.copies["a" if self.current == "b" else "b"], self.copies[self.current]
        # A store too small to patch is written whole each time: nothing to prepare.
        return current is not None and current.roomy and (copy is None or bool(copy.changed))

    def copy_path(self, name: str) -> Path:
        return self.path.with_name(f".{self.path.name}.{name}")

    def layout_path(self, name: str) -> Path:
        return self.path.with_name(f".{self.path.name}.{name}.layout")

    def write(self) -> dict:
        """Bring all_users.json up to the store; returns what the export record says."""
        if not self._looked_for_saved:
            self._looked_for_saved = True
            self._restore()
        self._started = time.monotonic()
        version, changed, generation, take = self.store.take_changes()
        mark("export-changes", changed)
        for copy in self.copies.values():
            if copy is not None:
                copy.changed |= changed
        name = "a" if self.current == "b" else "b"
        copy = self.copies[name]
        self.copies[name] = None  # until it is whole again
        _forget_layout(self.layout_path(name))
        # A failure leaves this copy out (made anew next time); the other one still lists every change.
        if copy is None or not copy.roomy or copy.generation != generation or not self._patch(copy):
            copy = self._splice(self.copy_path(name), generation) or self._write_whole(self.copy_path(name))
        copy.generation, copy.version, copy.changed = generation, version, set()
        self.copies[name] = copy
        for saved in self.copies:
            self._save_layout(saved, take)
        mark("export-copy")
        self._point_at(copy.path)
        mark("export-link")
        self.current = name
        return self._record(copy)

    # -- patching a copy in place ---------------------------------------------------------------------
    def _patch(self, copy: Copy) -> bool:
        """Rewrite the changed regions of `copy`; False when it must be written whole instead."""
        try:
            fd = os.open(copy.path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            if _identity(os.fstat(fd)) != copy.identity or not _alone(fd):
                return False
            todo = sorted(copy.changed)
            if todo and todo[0] < copy.first:  # a new first region: the old first one gains its comma
                todo = sorted({*todo, copy.first} - {BUCKETS})
            if self._outgrown(copy, todo):
                return False
            first = min(todo[0], copy.first) if todo else copy.first
            for at in range(0, len(todo), READ_BUCKETS):
                self._check_stop()
                chunk = todo[at:at + READ_BUCKETS]
                for bucket in chunk:  # read again whole: its undecodable values are counted afresh
                    copy.bad.pop(bucket, None)
                for bucket, users in self.store.read_buckets(chunk, _Bad(copy).tell):
                    body = _region(users, bucket == first)
                    if len(body) > copy.room[bucket]:
                        return False
                    if users:
                        first = min(first, bucket)
                    os.pwrite(fd, body + b" " * (copy.room[bucket] - len(body)), copy.start[bucket])
                    copy.users[bucket], copy.used[bucket] = len(users), len(body)
            os.fsync(fd)
            copy.first = first
            copy.identity = _identity(os.fstat(fd))
        finally:
            os.close(fd)
        self.patched += 1
        return True

    def _outgrown(self, copy: Copy, todo: list[int]) -> bool:
        """Whether the new users of these buckets (counted, not read) already overflow a region: then
        decoding them for a patch would be wasted (during a long ingest, most exports)."""
        line = max(1, sum(copy.used) // max(1, sum(copy.users)))
        for at in range(0, len(todo), 4096):
            chunk = todo[at:at + 4096]
            with self.store.redis.pipeline(transaction=False) as pipe:
                for bucket in chunk:
                    pipe.hlen(self.store.bucket_prefix + str(bucket))
                sizes = pipe.execute()
            for bucket, size in zip(chunk, sizes):
                if copy.used[bucket] + (size - copy.users[bucket]) * line > copy.room[bucket]:
                    return True
        return False

    # -- making a copy anew from the current one ---------------------------------------------------------
    def _splice(self, target: Path, generation: str) -> Copy | None:
        """Write `target` as the current copy with its changed buckets read again; None when it cannot serve."""
        source = self.copies[self.current]
        roomy = self.store.count() >= self.patch_from
        if source is None or source.generation != generation or source.roomy != roomy:
            return None
        try:
            src = os.open(source.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            if _identity(os.fstat(src)) != source.identity:
                return None  # changed on disk by someone else: only the store can say what it holds
            copy = self._splice_from(src, source, target, roomy)
        finally:
            os.close(src)
        self.spliced += 1
        return copy

    def _splice_from(self, src: int, source: Copy, target: Path, roomy: bool) -> Copy:
        from core.storage.privacy import file_mode

        todo = sorted(source.changed)
        if todo and todo[0] < source.first < BUCKETS:  # a new first region: the old first one gains its comma
            todo = sorted({*todo, source.first})
        copy = Copy(target, roomy=roomy, room=array("q", source.room), users=array("q", source.users),
                    used=array("q", source.used), first=source.first)
        again = set(todo)
        copy.bad = {bucket: found for bucket, found in source.bad.items() if bucket not in again}
        least = ROOM_MIN if roomy else 0
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        try:
            _write_all(fd, OPEN)
            at = 0
            for begin in range(0, len(todo), READ_BUCKETS):  # a chunk at a time: memory stays flat at any size
                self._check_stop()
                for bucket, users in self.store.read_buckets(todo[begin:begin + READ_BUCKETS], _Bad(copy).tell):
                    _copy_regions(src, fd, source, at, bucket)
                    if bucket <= copy.first:  # the first region so far, or one before it (its comma is added)
                        copy.first = bucket if users else BUCKETS
                    body = _region(users, copy.first == bucket)
                    room = len(body) + (len(body) // ROOM_SHARE + least if roomy else 0)
                    _write_all(fd, body + b" " * (room - len(body)))
                    copy.room[bucket], copy.users[bucket], copy.used[bucket] = room, len(users), len(body)
                    at = bucket + 1
            _copy_regions(src, fd, source, at, BUCKETS)
            _write_all(fd, CLOSE)
            copy.start = array("q", accumulate(copy.room, initial=len(OPEN)))[:BUCKETS]  # regions lie end to end
            mark("export-fsync")
            os.fsync(fd)
            copy.identity = _identity(os.fstat(fd))
            os.close(fd)
            fd = -1
            os.chmod(tmp, file_mode())  # personal data: 0600, or 0640 with --group-readable
            os.replace(tmp, target)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
        return copy

    # -- writing a copy whole ---------------------------------------------------------------------------
    def _write_whole(self, target: Path) -> Copy:
        from core.storage.privacy import file_mode

        count = self.store.count()
        copy = Copy(target, roomy=count >= self.patch_from)
        bad = _Bad(copy)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as out:
                out.write(OPEN)
                position = len(OPEN)
                if self.split_url is not None and count >= self.split_from:
                    self._write_split(out, copy, bad, position, count)
                else:
                    write_regions(out, copy, self.store.iter_buckets(on_bad=bad.tell), 0, BUCKETS, position,
                                  self._check_stop)
                out.write(CLOSE)
                out.flush()
                mark("export-fsync")
                os.fsync(out.fileno())
                copy.identity = _identity(os.fstat(out.fileno()))
            os.chmod(tmp, file_mode())  # personal data: 0600, or 0640 with --group-readable
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return copy

    def _write_split(self, out, copy: Copy, bad: _Bad, position: int, count: int) -> None:
        """The regions of every bucket, written by this process and a helper (core/storage/splitwrite.py)."""
        with SplitWrite(self.store, self.split_url, copy.path.parent, count, copy.roomy) as split:
            for first, stop in split.front():
                buckets = self.store.iter_buckets(on_bad=bad.tell, first=first, stop=stop, epoch=split.epoch)
                position = write_regions(out, copy, buckets, first, stop, position, self._check_stop)
            part = split.rest(self._check_stop)
            if part is not None and copy.first == BUCKETS:  # its regions begin with a comma: not the file's first
                split.failure, part = "no user came before the export's helper's share", None
            if part is not None:
                part.append_to(out, copy, position)
                self.split_shares = (split.taken, len(part.slices))
                return
            self.split_failures.append(split.failure)
            buckets = self.store.iter_buckets(on_bad=bad.tell, first=split.resume_at, epoch=split.epoch)
            write_regions(out, copy, buckets, split.resume_at, BUCKETS, position, self._check_stop)
            self.split_shares = (split.slices, 0)

    def _check_stop(self) -> None:
        if self.stopping() and time.monotonic() - self._started >= STOP_AFTER:
            raise ExportStopped(f"stopped after {time.monotonic() - self._started:.1f} s of writing {self.path.name}")

    # -- the layouts a restart takes up --------------------------------------------------------------------
    def _save_layout(self, name: str, take: int) -> None:
        """Save where copy `name`'s regions lie, as complete up to export `take`; best effort: a layout that
        cannot be saved is only a whole write after a restart."""
        copy, path = self.copies[name], self.layout_path(name)
        if copy is None or not copy.roomy:  # a small store is written whole in a second or so: nothing to save
            _forget_layout(path)
            return
        from core.storage.privacy import file_mode

        columns = b"".join(column.tobytes() for column in (copy.start, copy.room, copy.users, copy.used))
        header = {"format": LAYOUT_FORMAT, "buckets": BUCKETS, "take": take, "identity": list(copy.identity),
                  "generation": copy.generation, "version": copy.version, "first": copy.first,
                  "changed": sorted(copy.changed), "bad": [[b, *found] for b, found in sorted(copy.bad.items())]}
        body = orjson.dumps(header) + b"\n" + columns
        try:
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(b"%d\n" % zlib.crc32(body) + body)
                os.chmod(tmp, file_mode())  # the samples of undecodable values name merge keys
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            _forget_layout(path)

    def _restore(self) -> None:
        """Take up the copies a previous process left, when the link and their saved layouts vouch for them."""
        try:
            target = os.readlink(self.path)
        except OSError:
            return
        names = {self.copy_path(name).name: name for name in self.copies}
        if target not in names:
            return
        generation, take = self.store.export_position()
        found = {name: self._load_layout(name, generation, take) for name in self.copies}
        if found[names[target]] is None:  # the copy readers see is the one every other is made from
            return
        self.copies, self.current = found, names[target]
        self.restored = sum(copy is not None for copy in found.values())

    def _load_layout(self, name: str, generation: str, take: int) -> Copy | None:
        path = self.copy_path(name)
        try:
            with open(self.layout_path(name), "rb") as saved:
                crc, body = saved.readline(), saved.read()
            # Damage of any kind (a torn write, a disk error) fails the checksum: regions at wrong offsets would
            # patch users into the middle of others, a lost change would never reach the file.
            if not crc.strip().isdigit() or int(crc) != zlib.crc32(body):
                return None
            line, raw = body.split(b"\n", 1)
            header = orjson.loads(line)
            identity = _identity(os.stat(path, follow_symlinks=False))
            if (header["format"] != LAYOUT_FORMAT or header["buckets"] != BUCKETS or len(raw) != 4 * 8 * BUCKETS
                    or header["take"] != take or not generation or header["generation"] != generation
                    or tuple(header["identity"]) != identity):
                return None
            start, room, users, used = (array("q", raw[n * 8 * BUCKETS:(n + 1) * 8 * BUCKETS]) for n in range(4))
            bad = {int(b): (int(count), list(samples)) for b, count, samples in header["bad"]}
            return Copy(path, start=start, room=room, users=users, used=used, bad=bad, first=int(header["first"]),
                        roomy=True, identity=identity, generation=generation, version=int(header["version"]),
                        changed={int(b) for b in header["changed"]})
        except (OSError, KeyError, TypeError, ValueError):  # not a layout this release wrote: not used
            return None

    def _point_at(self, target: Path) -> None:
        link = self.path.with_name(f".{self.path.name}.link")
        link.unlink(missing_ok=True)
        os.symlink(target.name, link)
        os.replace(link, self.path)
        sync_directory(self.path.parent)

    def _record(self, copy: Copy) -> dict:
        samples = [sample for _, found in sorted(copy.bad.items()) for sample in found[1]][:MAX_BAD_SAMPLES]
        info = {"path": str(self.path), "count": sum(copy.users), "version": copy.version, "written_at": time.time(),
                "undecodable": sum(found[0] for found in copy.bad.values())}
        self.store.record_export(info, samples)
        return {**info, "bad": samples}


class _Bad:
    """Collects the undecodable values of the buckets being read, bucket by bucket (a patched bucket's old
    ones go: it was read again whole)."""

    def __init__(self, copy: Copy):
        self.copy = copy

    def tell(self, key: bytes, reason: str) -> None:
        bucket = zlib.crc32(key) % BUCKETS  # bucket_of on the stored bytes, whatever they hold
        count, samples = self.copy.bad.get(bucket, (0, []))
        if len(samples) < MAX_BAD_SAMPLES:
            samples = [*samples, {"key": key.decode(errors="replace"), "reason": reason}]
        self.copy.bad[bucket] = (count + 1, samples)


def write_regions(out, copy: Copy, buckets, first: int, stop: int, position: int, check_stop) -> int:
    """Write the regions of buckets first..stop-1 at `position` of `out`, their users from `buckets` (what
    Store.iter_buckets yields for them), and note where each lies in `copy`; returns the position after them."""
    least = ROOM_MIN if copy.roomy else 0
    previous = first
    for bucket, users in buckets:
        if not users:
            continue
        check_stop()
        position = _empty_regions(out, copy, previous, bucket, position, least)
        body = _region(users, copy.first == BUCKETS)
        copy.first = min(copy.first, bucket)
        room = len(body) + (len(body) // ROOM_SHARE + least if copy.roomy else 0)
        out.write(body)
        out.write(b" " * (room - len(body)))
        copy.start[bucket], copy.room[bucket], copy.users[bucket] = position, room, len(users)
        copy.used[bucket] = len(body)
        position += room
        previous = bucket + 1
    return _empty_regions(out, copy, previous, stop, position, least)


def _empty_regions(out, copy: Copy, first: int, end: int, position: int, room: int) -> int:
    """Regions for the empty buckets first..end-1: `room` spaces each; returns the position after them."""
    for empty in range(first, end):
        copy.start[empty], copy.room[empty] = position, room
        position += room
    if room and end > first:
        out.write(b" " * (room * (end - first)))
    return position


def _copy_regions(src: int, fd: int, source: Copy, first: int, end: int) -> None:
    """Append the regions of buckets first..end-1 of `source` to `fd` as they are. Regions lie end to end in
    bucket order: one span, one copy."""
    if end > first:
        begin = source.start[first]
        copy_span(src, fd, begin, source.start[end - 1] + source.room[end - 1] - begin)


def copy_span(src: int, fd: int, offset: int, size: int) -> None:
    """Copy `size` bytes of `src` from `offset` to the end of what `fd` holds: in the kernel where it can."""
    while size > 0:
        try:
            done = os.copy_file_range(src, fd, size, offset)
        except OSError:  # a file system or kernel without it: read and write
            done = 0
        if done <= 0:
            chunk = os.pread(src, min(size, 1 << 20), offset)
            if not chunk:
                raise OSError(f"the file copied from ended early at byte {offset}")
            _write_all(fd, chunk)
            done = len(chunk)
        offset, size = offset + done, size - done


def _forget_layout(path: Path) -> None:
    """Delete a saved layout before its copy changes, durably: a crash must not leave it beside a patched copy."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    sync_directory(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _region(users: list[bytes], first: bool) -> bytes:
    if not users:
        return b""
    return (FIRST if first else SEPARATOR) + SEPARATOR.join(users)


def _identity(stat: os.stat_result) -> tuple:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _alone(fd: int) -> bool:
    """Whether no other open file description refers to this file: the kernel grants a write lease only then.

    The lease is let go at once; a process opening the copy in that instant makes the kernel signal us,
    which F_SETSIG turns into SIGURG (ignored by default) rather than SIGIO (which would end the process).
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError:
        return False
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True
