"""Read one input file as a stream of records: a JSON array or JSON Lines, salvaging damaged input.

Files are read incrementally (ijson's C backend for arrays, line by line for JSON Lines) so memory
stays flat whatever the file size. Damage never throws the good records away: everything complete
before it is yielded, and `damage` says where and why the file broke.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import ijson
import orjson

from core.records import MAX_DEPTH, MAX_TOKEN_BYTES, RecordError, nesting_exceeds

LINE_SUFFIXES = (".jsonl", ".ndjson")
BOM = b"\xef\xbb\xbf"
READ_CHUNK = 64 * 1024
# Files up to this size are parsed in one go when sound; memory stays well within bounds at this size.
WHOLE_FILE_BYTES = 8 * 1024 * 1024


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


def _odd_backslashes(data: bytes, start: int) -> bool:
    """Whether `data` ends in an odd run of backslashes (after `start`): the next byte is escaped."""
    run = len(data) - len(data.rstrip(b"\\"))
    return min(run, len(data) - start) % 2 == 1


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
        self._whole = False

    @property
    def position(self) -> int:
        """Bytes read so far (what the parser has been handed), for a progress bar."""
        return self._guard.consumed if self._guard is not None else self._position

    def __iter__(self) -> Iterator[tuple[int, object]]:
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
                yield from self._small_array(handle) if self.size <= WHOLE_FILE_BYTES else ()
                if self.records == 0 and not self._whole:
                    handle.seek(start)
                    yield from self._array(handle, start)
            elif first == b"{":
                self.damage = "top-level JSON object; expected an array of users or JSON Lines"
            else:
                self.damage = f"not JSON: starts with {_show(body.lstrip()[:12])}"

    def _small_array(self, handle) -> Iterator[tuple[int, object]]:
        """A small, sound file in one orjson call (3x faster than streaming); anything else streams."""
        data = handle.read(WHOLE_FILE_BYTES + 1)
        if len(data) > WHOLE_FILE_BYTES:
            return  # it grew since we looked: stream it
        try:
            records = orjson.loads(data)
        except orjson.JSONDecodeError:
            return  # damaged: the streaming parser salvages the records before the damage
        if not isinstance(records, list):
            return
        try:
            # orjson decodes 1,024 levels but encodes 254: a record nested deeper than MAX_DEPTH would fail
            # in its batch, so such a file streams, and the guard stops it at that record.
            orjson.dumps(records)
        except orjson.JSONEncodeError:
            return
        self._whole = True
        self._position = self.size
        for self.records, record in enumerate(records, start=1):
            yield self.records - 1, record

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
