"""Read one input file as a stream of records: a JSON array or JSON Lines, salvaging damaged input.

Files are read incrementally (ijson's C backend for arrays, line by line for JSON Lines) so memory
stays flat whatever the file size. Damage never throws the good records away: everything complete
before it is yielded, and `damage` says where and why the file broke.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import ijson
import orjson

from core.records import RecordError

LINE_SUFFIXES = (".jsonl", ".ndjson")
BOM = b"\xef\xbb\xbf"
READ_CHUNK = 64 * 1024
# Files up to this size are parsed in one go when sound; memory stays well within bounds at this size.
WHOLE_FILE_BYTES = 8 * 1024 * 1024


MAX_DEPTH = 256
# A whole JSON string (escapes included), in the unrolled form that Python's re runs at C speed.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_OPENERS, _CLOSERS = frozenset(b"[{"), frozenset(b"]}")


class NestingTooDeep(ValueError):
    pass


class _GuardedReader:
    """Feeds the parser, counting bytes (to say where damage is) and refusing absurd nesting.

    ijson keeps a prefix string per open level, so 100,000 nested brackets cost it gigabytes; the depth
    is checked here, before the parser sees a chunk. Strings are cut out first (brackets inside them
    do not nest); a string still open at the end of a chunk is carried into the next one.
    """

    def __init__(self, raw):
        self.raw = raw
        self.consumed = 0
        self.depth = 0
        self._carry = b""

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self._check(data)
        self.consumed += len(data)
        return data

    def _check(self, data: bytes) -> None:
        text = self._carry + data
        quotes = text.count(b'"') - text.count(b'\\"')
        if quotes % 2 and data:
            cut = text.rfind(b'"')
            text, self._carry = text[:cut], text[cut:]
        else:
            self._carry = b""
        structure = _STRING.sub(b"", text)
        opens = structure.count(b"[") + structure.count(b"{")
        if self.depth + opens > MAX_DEPTH:
            self._walk(structure)
        self.depth = max(0, self.depth + opens - structure.count(b"]") - structure.count(b"}"))

    def _walk(self, structure: bytes) -> None:
        depth = self.depth
        for byte in structure:
            if byte in _OPENERS:
                depth += 1
                if depth > MAX_DEPTH:
                    raise NestingTooDeep(f"nested deeper than {MAX_DEPTH} levels near byte {self.consumed}")
            elif byte in _CLOSERS:
                depth = max(0, depth - 1)


class SourceReader:
    """Iterate `(record_number, record_or_error)`; afterwards `damage` is None or one line of reason.

    `record_or_error` is the decoded JSON value, or a RecordError for a JSON Lines line that is not JSON.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.damage: str | None = None
        self.records = 0
        self.size = 0
        self._position = 0
        self._guard: _GuardedReader | None = None
        self.format = "array"
        self._whole = False

    @property
    def position(self) -> int:
        """Bytes read so far (what the parser has been handed), for a progress bar."""
        return self._guard.consumed if self._guard is not None else self._position

    def __iter__(self) -> Iterator[tuple[int, object]]:
        with open(self.path, "rb") as handle:
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
                self.format = "lines"
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
        try:
            records = orjson.loads(handle.read())
        except orjson.JSONDecodeError:
            return  # damaged: the streaming parser salvages the records before the damage
        if not isinstance(records, list):
            return
        self._whole = True
        self._position = self.size
        for self.records, record in enumerate(records, start=1):
            yield self.records - 1, record

    def _array(self, handle, start: int) -> Iterator[tuple[int, object]]:
        counter = self._guard = _GuardedReader(handle)
        try:
            for record in ijson.items(counter, "item", use_float=True, buf_size=READ_CHUNK):
                yield self.records, record
                self.records += 1
        except ijson.IncompleteJSONError as error:
            self.damage = self._describe(error, start + counter.consumed)
        except NestingTooDeep as error:
            self.damage = f"{error} (after record {self.records})"
        except (ijson.JSONError, RecursionError, UnicodeDecodeError) as error:
            self.damage = f"invalid JSON after record {self.records} near byte {start + counter.consumed}: {error}"

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
        for line_number, line in enumerate(handle, start=1):
            start, offset = offset, offset + len(line)
            self._position = offset
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                if not line.endswith(b"\n") and offset == self.size:
                    self.damage = f"truncated: the last line ({line_number}) is cut off (at byte {start})"
                    return
                record = RecordError(f"line {line_number} is not JSON: {str(error).splitlines()[0]}")
            yield self.records, record
            self.records += 1


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
    return os.fstat(handle.fileno()).st_size


def _show(data: bytes) -> str:
    return repr(data.decode("utf-8", "replace"))
