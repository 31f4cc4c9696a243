"""Read one input file as a stream of records: a JSON array or JSON Lines, salvaging damaged input.

Files are read incrementally so memory stays flat whatever the file size: an array a megabyte at a time,
cut at record boundaries and split into records at C speed (msgspec), its records handed on as the text
they were read as (RawBatch: the client sends it unchanged, so no record is decoded and encoded again on
the way); anything that path cannot vouch for, from the record where it stops, through ijson's streaming
parser (C backend) with its guard; JSON Lines line by line. Damage never throws the good records away:
everything complete before it is yielded, and `damage` says where and why the file broke.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import ijson
import msgspec
import orjson

from core.records import MAX_DEPTH, MAX_TOKEN_BYTES, RecordError, nesting_exceeds, split_records

LINE_SUFFIXES = (".jsonl", ".ndjson")
BOM = b"\xef\xbb\xbf"
READ_CHUNK = 64 * 1024
# Files up to this size are read into memory whole by the client (one read serves fingerprint and parse).
WHOLE_FILE_BYTES = 8 * 1024 * 1024
# The array fast path reads this much at a time (0: every array goes through the streaming parser) ...
FAST_CHUNK = 1024 * 1024
# ... and gives up (the streaming parser takes over) when this much holds no record boundary it can use: a
# record that large is rare and hostile, and the guard's limits (depth, string length) are the streaming
# path's. Below MAX_TOKEN_BYTES, so no string the guard would refuse gets through here.
FAST_MAX_PENDING = 4 * 1024 * 1024
# A RawBatch's text stays under this (halved until it does), well under the client's batch message budget.
RAW_BATCH_BYTES = 4 * 1024 * 1024
# How many closing braces, from the end of what was read, may be tried as the end of the last whole record.
FAST_CUT_TRIES = 8
_RAW_RECORDS = msgspec.json.Decoder(list[msgspec.Raw])
_OPENING = frozenset(b"[{")


# The streaming parser sees at most this many levels: the top-level array, then a record of MAX_DEPTH.
FILE_MAX_DEPTH = MAX_DEPTH + 1
# A whole JSON string, and the rest of one whose opening quote was in an earlier chunk. Possessive, so a
# match that fails costs one pass (linear); DOTALL, so an escaped newline moves the scanner as it moves the
# parser (which then rejects it).
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.S)
_STRING_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.S)
_TOKEN = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"|["\[\]{}]', re.S)
_OPENERS = frozenset(b"[{")
_BRACKET_RUNS = re.compile(rb"[\[{]+|[\]}]+")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_PAIR_PASSES = 3


class _Guard:
    """Feeds the parser, counting bytes (to say where damage is) and holding the nesting and string limits.

    ijson keeps a prefix string per open level, so 100,000 nested brackets would cost it gigabytes, and it
    buffers a whole string however long: both limits are checked here, on the bytes, before the parser sees
    them. The scanner's state (inside a string or not, an escape pending, the depth) carries across chunks,
    so each byte is looked at a bounded number of times, at C speed: complete strings are cut out with one
    regex, brackets counted on what is left. At a limit the stream is cut just before the offending byte:
    the parser yields every record completed before it, then sees the end of the file, and `stopped` says why.
    """

    def __init__(self, raw, limit: int = FILE_MAX_DEPTH):
        self.raw = raw
        self.limit = limit
        self.consumed = 0
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.string_bytes = 0
        self.stopped: str | None = None

    def read(self, size: int = -1) -> bytes:
        if self.stopped:
            return b""
        data = self.raw.read(size)
        cut = self._scan(data)
        if cut is not None:
            data = data[:cut]
        self.consumed += len(data)
        return data

    def _scan(self, data: bytes) -> int | None:
        """Advance the state over `data`; the offset to cut the chunk at when a limit is crossed."""
        start = 0
        if self.in_string:
            if self.escaped and data:
                start, self.escaped = 1, False
            match = _STRING_REST.match(data, start)
            end = match.end() if match else len(data)
            self.string_bytes += end
            if self.string_bytes > MAX_TOKEN_BYTES:
                self.stopped = f"holds a string over {MAX_TOKEN_BYTES // (1024 * 1024)} MB"
                return 0
            if match is None:
                self.escaped = _odd_backslashes(data, start)
                return None
            self.in_string, start = False, end
        structure = _STRING.sub(b"", data[start:] if start else data)
        quote = structure.find(b'"')
        if quote >= 0:  # a string opens and runs past this chunk: the rest of the chunk is inside it
            tail = structure[quote + 1:]
            structure = structure[:quote]
            self.in_string, self.string_bytes = True, len(tail) + 1
            self.escaped = _odd_backslashes(tail, 0)
        opens = structure.count(b"[") + structure.count(b"{")
        if self.depth + opens > self.limit and self._passes_limit(structure):
            self.stopped = f"is nested deeper than {MAX_DEPTH} levels"
            return self._crossing(data, start)
        closes = structure.count(b"]") + structure.count(b"}")
        self.depth = max(0, self.depth + opens - closes)
        return None

    def _passes_limit(self, structure: bytes) -> bool:
        """Whether the depth passes the limit inside this chunk: walked by runs of brackets, so a file that
        stays just under the limit costs a few steps per record."""
        brackets = structure.translate(None, _NOT_BRACKETS)
        # Each replace takes away one level of empty pairs ({} and [] side by side always match), so the
        # peak is at most what stays open plus the levels taken: flat records cost no walk at all.
        reduced = brackets
        for _ in range(_PAIR_PASSES):
            reduced = reduced.replace(b"{}", b"").replace(b"[]", b"")
        if self.depth + reduced.count(b"[") + reduced.count(b"{") + 2 * _PAIR_PASSES <= self.limit:
            return False
        depth = self.depth
        for run in _BRACKET_RUNS.findall(brackets):
            if run[0] in _OPENERS:
                depth += len(run)
                if depth > self.limit:
                    return True
            else:
                depth = max(0, depth - len(run))
        return False

    def _crossing(self, data: bytes, start: int) -> int:
        """Where in `data` the depth first passes the limit (run once, on the chunk where it does)."""
        depth = self.depth
        for match in _TOKEN.finditer(data, start):
            byte = data[match.start()]
            if byte in _OPENERS:
                depth += 1
                if depth > self.limit:
                    return match.start()
            elif byte != 0x22:
                depth = max(0, depth - 1)
            elif match.end() - match.start() == 1:  # a string that runs past this chunk: no structure after
                break
        return len(data)  # not reached: _passes_limit said it is


def _whole_records(pending: bytes) -> tuple[list | None, int]:
    """The records that end before the last usable closing brace of `pending` (which starts where a record
    may start), and the length they take; (None, 0) when none is found. A cut that parses as "[" + cut + "]"
    is exactly at the end of a top-level record: JSON parses left to right, so a cut inside a string or a
    nested value leaves something open."""
    cut = pending.rfind(b"}")
    for _ in range(FAST_CUT_TRIES):
        if cut < 0:
            break
        try:
            return _RAW_RECORDS.decode(b"[" + pending[:cut + 1] + b"]"), cut + 1
        except (msgspec.DecodeError, RecursionError):  # msgspec stops past ~1,000 levels
            cut = pending.rfind(b"}", 0, cut)
    return None, 0


def _sound(region: bytes, raws: list) -> bool:
    """Whether the records of `region` are what the streaming parser would pass: valid UTF-8 (msgspec skips
    strings without checking it) and no record nested deeper than MAX_DEPTH. A record nests at most as deep
    as it has opening brackets, and every other record that is an array or object has one at least, so the
    count over the region bounds the deepest record without walking any of them."""
    if not region.isascii():
        try:
            region.decode()
        except UnicodeDecodeError:
            return False
    opens = region.count(b"{") + region.count(b"[")
    if opens <= MAX_DEPTH:
        return True
    containers = sum(1 for raw in raws if memoryview(raw)[0] in _OPENING)
    return opens - max(containers - 1, 0) <= MAX_DEPTH


def _odd_backslashes(data: bytes, start: int) -> bool:
    """Whether `data` ends in an odd run of backslashes (after `start`): the next byte is escaped."""
    run = len(data) - len(data.rstrip(b"\\"))
    return min(run, len(data) - start) % 2 == 1


class RawBatch:
    """Records `first` to `first + count - 1` of a source, as one JSON array of the text they were read as.

    Every record in it is well-formed JSON of at most MAX_DEPTH levels in valid UTF-8: what the streaming
    parser would have yielded, unchanged (whitespace between records aside)."""

    __slots__ = ("first", "count", "payload")

    def __init__(self, first: int, count: int, payload: bytes):
        self.first, self.count, self.payload = first, count, payload

    def records(self) -> list:
        """The records decoded, for a caller that wants them one by one (a RawBatch sent on is decoded by the
        server alone). A record msgspec refuses to decode (a number out of a double's range: 1e400) is a
        RecordError saying so; the others are kept."""
        try:
            return msgspec.json.decode(self.payload)
        except (msgspec.DecodeError, RecursionError):
            return split_records(self.payload)


class _Resumed:
    """The rest of a source after `prefix`, read as a file: the streaming parser resumes where the fast path
    stopped, seeing "[" and the records from there (its byte counts are then offsets from that "[")."""

    def __init__(self, prefix: bytes, handle):
        self.prefix = prefix
        self.handle = handle

    def read(self, size: int = -1) -> bytes:
        if self.prefix:
            if size < 0:
                data, self.prefix = self.prefix + self.handle.read(), b""
            else:
                data, self.prefix = self.prefix[:size], self.prefix[size:]
            return data
        return self.handle.read(size)


class SourceReader:
    """Iterate `(record_number, record_or_error)`; afterwards `damage` is None or one line of reason.

    `record_or_error` is the decoded JSON value, or a RecordError for a JSON Lines line that is not JSON.
    """

    def __init__(self, path: Path, handle=None):
        """handle: the file already open (binary, seekable), read from its start and left open; the watcher
        passes the one it checked, so what is read is what was checked."""
        self.path = Path(path)
        self._handle = handle
        self.damage: str | None = None
        self.records = 0
        self.size = 0
        self._position = 0
        self._guard: _Guard | None = None

    @property
    def position(self) -> int:
        """Bytes read so far (what the parser has been handed), for a progress bar."""
        return self._guard.consumed if self._guard is not None else self._position

    def __iter__(self) -> Iterator[tuple[int, object]]:
        for part in self.parts():
            if part.__class__ is RawBatch:
                yield from enumerate(part.records(), start=part.first)
            else:
                yield part

    def parts(self, batch_size: int = 1000) -> Iterator[RawBatch | tuple[int, object]]:
        """The source as RawBatches of up to `batch_size` records, where the fast path reads it, and single
        `(record_number, record_or_error)` pairs elsewhere; record numbers run on without a gap."""
        if self._handle is not None:
            self._handle.seek(0)
        with nullcontext(self._handle) if self._handle is not None else open(self.path, "rb") as handle:
            self.size = _file_size(handle)
            head = handle.read(4096)
            start = len(BOM) if head.startswith(BOM) else 0
            body = head[start:]
            first = body.lstrip()[:1]
            handle.seek(start)
            if not first:
                self.damage = "file is empty"
                return
            if head.startswith((b"\xff\xfe", b"\xfe\xff")):
                self.damage = "file is UTF-16, not UTF-8"
                return
            if self.path.suffix.lower() in LINE_SUFFIXES or (first == b"{" and _looks_like_lines(body)):
                yield from self._lines(handle)
            elif first == b"[":
                if FAST_CHUNK > 0:
                    yield from self._fast_array(handle, start, batch_size)
                else:
                    yield from self._array(handle, start)
            elif first == b"{":
                self.damage = "top-level JSON object; expected an array of users or JSON Lines"
            else:
                self.damage = f"not JSON: starts with {_show(body.lstrip()[:12])}"

    def _fast_array(self, handle, start: int, batch_size: int) -> Iterator[RawBatch | tuple[int, object]]:
        """An array read FAST_CHUNK at a time and cut after its last whole record: msgspec checks the records
        and splits them (without decoding them) in one call, and they go out as RawBatches. Whatever this path
        cannot vouch for (a record nested too deep, invalid UTF-8, a record whose end it cannot find, damage,
        anything after the array) goes, from the first record not yet yielded, to the streaming parser, which
        keeps every record before it and says what is wrong as it always has."""
        pending = handle.read(FAST_CHUNK)
        eof = not pending
        pending = pending.lstrip()[1:]  # after the "[" (__iter__ saw it there)
        offset = handle.tell() - len(pending)  # the file offset of pending[0]
        carry: list = []  # records checked but not yet yielded (less than a batch)
        expect_comma = False  # after a record: "," or the closing "]" comes next
        while True:
            stripped = pending.lstrip()
            closing = stripped[:1] == b"]" and (expect_comma or (self.records == 0 and not carry))
            if (not stripped or (closing and not stripped[1:].strip())) and not eof:
                if len(pending) > FAST_MAX_PENDING:  # whitespace without end: the streaming parser's
                    break
                more = handle.read(FAST_CHUNK)  # more to decide on (what follows a closing "]" too)
                eof = not more
                pending += more
                continue
            if closing:
                if not stripped[1:].strip():  # the array's end, and nothing after it but whitespace
                    yield from self._raw_batches(carry, batch_size)
                    self._position = self.size
                    return
                break  # something after the array: the streaming parser says what
            if expect_comma:
                if stripped[:1] != b",":
                    break  # damage after a record, or the file ends: the streaming parser says which
                offset += len(pending) - len(stripped) + 1
                pending, expect_comma = stripped[1:], False
                continue
            raws, cut = _whole_records(pending)
            if raws is None:
                if eof or len(pending) > FAST_MAX_PENDING:
                    break
                more = handle.read(FAST_CHUNK)
                eof = not more
                pending += more
                continue
            if not _sound(pending[:cut], raws):
                break
            carry += raws
            pending, offset, expect_comma = pending[cut:], offset + cut, True
            self._position = offset  # read and checked so far (a progress bar's figure)
            if len(carry) >= batch_size:
                whole = len(carry) - len(carry) % batch_size
                yield from self._raw_batches(carry[:whole], batch_size)
                del carry[:whole]
        yield from self._raw_batches(carry, batch_size)
        self._position = offset
        # The streaming parser sees "[" then the rest from the first record not yet yielded, so its byte
        # counts, from start = offset - 1, are offsets in the file.
        yield from self._array(_Resumed(b"[" + pending, handle), offset - 1)

    def _raw_batches(self, raws: list, batch_size: int) -> Iterator[RawBatch]:
        for at in range(0, len(raws), batch_size):
            yield from self._raw_batch(raws[at:at + batch_size])

    def _raw_batch(self, raws: list) -> Iterator[RawBatch]:
        payload = b"[" + b",".join(raws) + b"]"
        if len(payload) > RAW_BATCH_BYTES and len(raws) > 1:
            half = len(raws) // 2
            yield from self._raw_batch(raws[:half])
            yield from self._raw_batch(raws[half:])
            return
        batch = RawBatch(self.records, len(raws), payload)
        self.records += len(raws)
        yield batch

    def _array(self, handle, start: int) -> Iterator[tuple[int, object]]:
        guard = self._guard = _Guard(handle)
        try:
            for record in ijson.items(guard, "item", use_float=True, buf_size=READ_CHUNK):
                yield self.records, record
                self.records += 1
        except (ijson.JSONError, RecursionError, UnicodeDecodeError) as error:
            if guard.stopped:  # the parser saw the end where the guard cut the stream
                self.damage = (f"record {self.records + 1} {guard.stopped} (at byte {start + guard.consumed}); "
                               f"the records before it are kept")
            elif isinstance(error, ijson.IncompleteJSONError):
                self.damage = self._describe(error, start + guard.consumed)
            else:
                self.damage = (f"invalid JSON after record {self.records} near byte {start + guard.consumed}: "
                               f"{_first_line(str(error))}")

    def _describe(self, error: Exception, near: int) -> str:
        text = str(error if not isinstance(error.args[0], bytes) else error.args[0].decode("utf-8", "replace"))
        first_line = text.strip().splitlines()[0] if text.strip() else "parse error"
        if "premature EOF" in first_line:
            return f"truncated: the file ends inside record {self.records + 1} (at byte {self.size})"
        if "UTF8" in first_line:
            return f"invalid UTF-8 in record {self.records + 1} (near byte {near})"
        return f"invalid JSON in record {self.records + 1} (near byte {near}): {first_line}"

    def _lines(self, handle) -> Iterator[tuple[int, object]]:
        offset = handle.tell()
        line_number = 0
        while line := handle.readline(MAX_TOKEN_BYTES):
            line_number += 1
            start, offset = offset, offset + len(line)
            if len(line) == MAX_TOKEN_BYTES and not line.endswith(b"\n"):
                offset += _skip_line(handle)  # never buffered whole: memory stays bounded
                self._position = offset
                yield self.records, RecordError(f"line {line_number} is over {MAX_TOKEN_BYTES} bytes")
                self.records += 1
                continue
            self._position = offset
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                if not line.endswith(b"\n") and offset == self.size:
                    self.damage = f"truncated: the last line ({line_number}) is cut off (at byte {start})"
                    return
                record = RecordError(f"line {line_number} is not JSON: {_first_line(str(error))}")
            else:
                # Counting brackets is cheap and bounds the depth, so only a suspect line is walked.
                if line.count(b"[") + line.count(b"{") > MAX_DEPTH and nesting_exceeds(record):
                    record = RecordError(f"line {line_number} is nested deeper than {MAX_DEPTH} levels")
            yield self.records, record
            self.records += 1


def _skip_line(handle) -> int:
    """Read past the rest of an over-long line; the bytes skipped."""
    skipped = 0
    while chunk := handle.readline(READ_CHUNK):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "parse error"


def _looks_like_lines(body: bytes) -> bool:
    """A `.json` file that starts with an object is JSON Lines when its first line is a whole object."""
    first_line, newline, _ = body.partition(b"\n")
    if not newline:
        return False
    try:
        return isinstance(orjson.loads(first_line), dict)
    except orjson.JSONDecodeError:
        return False


def _file_size(handle) -> int:
    if isinstance(handle, io.BytesIO):  # a file the client already read whole (core/intake/client.py)
        return len(handle.getbuffer())
    return os.fstat(handle.fileno()).st_size


def _show(data: bytes) -> str:
    return repr(data.decode("utf-8", "replace"))
