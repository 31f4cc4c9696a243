"""The reader (core.intake.ingest.SourceReader) on hostile files: nesting and size limits, truncation, any JSON value.

No services here: the reader alone, on files in tmp_path. The memory and time cases run the reader in a child
process (bench/reader_limits.py) so the peak RSS measured is the reader's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import core.intake.ingest
from core.intake.ingest import SourceReader
from core.records import MAX_DEPTH, MAX_TOKEN_BYTES, RecordError
from tests.conftest import ROOT, make_users

HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read(path: Path) -> tuple[list, str | None]:
    reader = SourceReader(path)
    records = [record for _, record in reader]
    return records, reader.damage


@pytest.fixture(params=["fast", "fast-tiny-chunks", "streamed"])
def path_kind(request, monkeypatch):
    """Each test runs on every path: the fast path (msgspec cuts a chunk after its last whole record), the same
    with chunks of a few bytes (every record boundary, and every place that is not one, is tried), and the
    streaming parser alone."""
    if request.param == "streamed":
        monkeypatch.setattr(core.intake.ingest, "FAST_CHUNK", 0)
    elif request.param == "fast-tiny-chunks":
        monkeypatch.setattr(core.intake.ingest, "FAST_CHUNK", 7)
    return request.param


def nested(depth: int) -> bytes:
    """A user record nested `depth` levels (the record itself is level 1), as JSON text."""
    return b'{"id": 1, "email": "deep@x.org", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "reader_limits.py"), "--run-one",
                          str(ROOT / "core" / "intake" / "ingest.py"), str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_deep_tail_behind_a_string_ending_in_a_backslash_stays_small_and_fast(tmp_path):
    """On 9f703c0 the quote count lost track at "C:\\\\" and ijson built 20,000 levels: 976 MB RSS."""
    path = tmp_path / "deep.json"
    path.write_bytes(b'[{"id": 1, "email": "a@b.c", "agent": "C:\\\\"},\n' + b"[" * 20_000 + b"]" * 20_000 + b"]")
    result = measure(path)
    assert result["records"] == 1 and f"nested deeper than {MAX_DEPTH} levels" in result["damage"]
    assert result["peak_rss_mb"] < 100 and result["seconds"] < 5


@pytest.mark.slow
def test_a_40_mb_string_is_cut_at_the_token_limit_in_bounded_time_and_memory(tmp_path):
    """On 9f703c0 the carried text was re-joined on every chunk: 25-56 s for this file."""
    path = tmp_path / "string.json"
    path.write_bytes(b'[{"id": 1, "email": "a@b.c"}, {"id": 2, "agent": "' + b"a" * (40 * 1024 * 1024) + b'"}]')
    result = measure(path)
    assert result["records"] == 1 and "a string over 8 MB" in result["damage"]
    assert result["seconds"] < 10 and result["peak_rss_mb"] < 100


def test_a_string_over_the_limit_across_many_chunks_is_refused_and_earlier_records_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(core.intake.ingest, "MAX_TOKEN_BYTES", 1000)
    monkeypatch.setattr(core.intake.ingest, "READ_CHUNK", 64)
    path = tmp_path / "long.json"
    users = make_users(3, "long")
    users[2]["agent"] = "\\" * 600  # 1,200 bytes escaped
    path.write_bytes(orjson.dumps(users))
    monkeypatch.setattr(core.intake.ingest, "FAST_CHUNK", 0)  # the streaming parser's limit
    records, damage = read(path)
    assert records == users[:2] and damage.startswith("record 3 holds a string over")


def test_valid_users_before_a_deep_tail_are_kept(tmp_path, path_kind):
    """On 9f703c0 the streamed file kept 0 of them, and the whole-file path passed the 301-level record on
    to a batch that orjson cannot encode (the file then stalled forever)."""
    users = make_users(100, "tail")
    path = tmp_path / "tail.json"
    path.write_bytes(orjson.dumps(users)[:-1] + b",\n" + b"[" * 300 + b"]" * 300 + b"]")
    records, damage = read(path)
    assert records == users
    assert damage.startswith("record 101 is nested deeper than") and "\n" not in damage


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 2, MAX_DEPTH + 3, 1100])
def test_nesting_around_the_limit_in_an_array(tmp_path, path_kind, depth):
    before, after = make_users(2, "before"), make_users(2, "after", start=10)
    path = tmp_path / "depth.json"
    path.write_bytes(b"[" + b",".join([orjson.dumps(before[0]), orjson.dumps(before[1]), nested(depth),
                                       orjson.dumps(after[0]), orjson.dumps(after[1])]) + b"]")
    records, damage = read(path)
    if depth <= MAX_DEPTH:
        assert damage is None and len(records) == 5
        orjson.dumps(records)  # every record the reader yields encodes in a batch
    else:
        assert records == before and damage.startswith("record 3 is nested deeper than")


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 2, 1100])
def test_nesting_around_the_limit_in_json_lines(tmp_path, depth):
    users = make_users(2, "lines")
    path = tmp_path / "depth.jsonl"
    path.write_bytes(orjson.dumps(users[0]) + b"\n" + nested(depth) + b"\n" + orjson.dumps(users[1]) + b"\n")
    records, damage = read(path)
    assert damage is None and records[0] == users[0] and records[2] == users[1]
    if depth <= MAX_DEPTH:
        orjson.dumps([records[1]])
    else:
        assert isinstance(records[1], RecordError) and "line 2" in str(records[1])


def test_an_over_long_json_lines_line_is_rejected_without_being_buffered(tmp_path, monkeypatch):
    monkeypatch.setattr(core.intake.ingest, "MAX_TOKEN_BYTES", 400)
    users = make_users(2, "short")
    path = tmp_path / "long.jsonl"
    path.write_bytes(orjson.dumps(users[0]) + b"\n" + b'{"agent": "' + b"a" * 900 + b'"}\n' + orjson.dumps(users[1]))
    records, damage = read(path)
    assert damage is None and records[0] == users[0] and records[2] == users[1]
    assert isinstance(records[1], RecordError) and "over 400 bytes" in str(records[1])


# -- properties -----------------------------------------------------------------------------------------------

TRICKY = st.text(st.sampled_from('ab"\\[]{}/\n\t\u2028é😀 \x00'), max_size=12)
USER = st.fixed_dictionaries({"id": st.integers(0, 2**31 - 1), "email": TRICKY},
                             optional={"first_name": TRICKY, "agent": TRICKY, "extra": st.lists(TRICKY, max_size=2)})
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False,
                    allow_infinity=False) | TRICKY,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY, inner, max_size=4),
                    max_leaves=20)


def assert_one_line(damage):
    assert damage is None or (isinstance(damage, str) and damage and "\n" not in damage)


@HYPOTHESIS
@given(value=JSON, suffix=st.sampled_from([".json", ".jsonl"]), streamed=st.booleans())
def test_any_json_value_is_read_without_raising(tmp_path_factory, value, suffix, streamed):
    path = tmp_path_factory.mktemp("any") / f"value{suffix}"
    path.write_bytes(orjson.dumps(value))
    original = core.intake.ingest.FAST_CHUNK
    core.intake.ingest.FAST_CHUNK = 0 if streamed else original
    try:
        records, damage = read(path)
    finally:
        core.intake.ingest.FAST_CHUNK = original
    assert_one_line(damage)
    if suffix == ".json" and isinstance(value, list):
        assert damage is None and records == value


@HYPOTHESIS
@given(data=st.binary(max_size=300) | st.text(st.sampled_from('[]{}",:\\ 1a\n'), max_size=300).map(str.encode),
       suffix=st.sampled_from([".json", ".jsonl"]))
def test_any_bytes_are_read_without_raising(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"noise{suffix}"
    path.write_bytes(data)
    records, damage = read(path)
    assert_one_line(damage)


@settings(max_examples=25, deadline=None)
@given(users=st.lists(USER, min_size=1, max_size=5), chunk=st.integers(1, 9))
def test_strings_and_escapes_across_every_chunk_boundary(tmp_path_factory, users, chunk):
    """Tiny reads put a chunk boundary inside every string, escape and bracket: nothing is miscounted."""
    path = tmp_path_factory.mktemp("chunks") / "users.json"
    deep = {"id": 9, "email": 'x\\"[{', "extra": []}
    inner = deep["extra"]
    for _ in range(MAX_DEPTH - 2):  # exactly at the limit, with brackets in strings all the way down
        deeper = []
        inner.extend(["[\\", deeper])
        inner = deeper
    path.write_bytes(orjson.dumps(users + [deep]))
    original = (core.intake.ingest.FAST_CHUNK, core.intake.ingest.READ_CHUNK)
    core.intake.ingest.FAST_CHUNK, core.intake.ingest.READ_CHUNK = 0, chunk
    try:
        records, damage = read(path)
    finally:
        core.intake.ingest.FAST_CHUNK, core.intake.ingest.READ_CHUNK = original
    assert damage is None and records == users + [deep]


def record_ends(users: list, layout: str) -> tuple[bytes, list[int]]:
    """The file's bytes and, for each record, the offset just past its closing brace."""
    parts = [orjson.dumps(user) for user in users]
    if layout == "lines":
        data, ends = b"", []
        for part in parts:
            data += part
            ends.append(len(data))
            data += b"\n"
        return data, ends
    data, ends = b"[", []
    for n, part in enumerate(parts):
        data += (b",\n " if n else b"") + part
        ends.append(len(data))
    return data + b"]\n", ends


@settings(max_examples=15, deadline=None)
@given(users=st.lists(USER, min_size=1, max_size=4), layout=st.sampled_from(["array", "lines"]))
def test_a_file_cut_at_every_byte_keeps_exactly_its_complete_records(tmp_path_factory, users, layout):
    data, ends = record_ends(users, layout)
    folder = tmp_path_factory.mktemp("cut")
    for size in range(len(data) + 1):
        path = folder / f"cut{size}.{'jsonl' if layout == 'lines' else 'json'}"
        path.write_bytes(data[:size])
        records, damage = read(path)
        complete = [user for user, end in zip(users, ends) if end <= size]
        assert records == complete, (size, data[:size])
        assert_one_line(damage)
        partial = data[ends[len(complete) - 1] if complete else 0:size].strip()  # bytes of a record cut off
        if size == 0 or (size < len(data.rstrip()) if layout == "array" else partial):
            assert damage, (size, data[:size])
        else:
            assert damage is None, (size, data[:size])
        path.unlink()


def test_the_token_limit_is_the_batch_budget():
    from core.intake.client import MAX_BATCH_BYTES

    assert MAX_TOKEN_BYTES <= MAX_BATCH_BYTES


def test_a_record_the_encoder_refuses_is_rejected_alone_never_its_batch():
    from core.intake.client import _payloads

    batch = [{"id": 1}, {"id": 2, "x": 2**70}, {"id": 3}]  # orjson encodes 64-bit integers at most
    sent = list(_payloads(batch, 10))
    assert [(start, why is None) for _, start, why in sent] == [(10, True), (11, False), (12, True)]
    assert "cannot be encoded" in sent[1][2] and sent[1][0] is None


# -- the fast path against the streaming parser -----------------------------------------------------------------

def read_with(path: Path, fast_chunk: int) -> tuple[list, str | None]:
    original = core.intake.ingest.FAST_CHUNK
    core.intake.ingest.FAST_CHUNK = fast_chunk
    try:
        return read(path)
    finally:
        core.intake.ingest.FAST_CHUNK = original


@settings(max_examples=15, deadline=None)
@given(users=st.lists(USER, min_size=1, max_size=4), chunk=st.integers(1, 40))
def test_the_fast_path_keeps_what_the_streaming_parser_keeps_at_every_cut(tmp_path_factory, users, chunk):
    """A file cut at any byte, read in chunks of any size: the same records, and damage where the streaming
    parser finds damage (its wording too, but for the byte it names, which depends on where it was handed over)."""
    data, _ = record_ends(users, "array")
    folder = tmp_path_factory.mktemp("fastcut")
    for size in range(len(data) + 1):
        path = folder / f"cut{size}.json"
        path.write_bytes(data[:size])
        fast, streamed = read_with(path, chunk), read_with(path, 0)
        assert fast[0] == streamed[0], (size, data[:size])
        assert (fast[1] is None) == (streamed[1] is None), (size, fast[1], streamed[1])
        if fast[1]:
            assert fast[1].split(" (")[0] == streamed[1].split(" (")[0], (fast[1], streamed[1])
        path.unlink()


def test_a_big_array_goes_out_in_raw_batches_of_the_exact_records(tmp_path):
    users = make_users(5000, "raw")
    path = tmp_path / "big.json"
    path.write_bytes(orjson.dumps(users, option=orjson.OPT_INDENT_2))
    original = core.intake.ingest.FAST_CHUNK
    core.intake.ingest.FAST_CHUNK = 4096  # many chunks, cut anywhere
    try:
        reader = SourceReader(path)
        parts = list(reader.parts(batch_size=700))
    finally:
        core.intake.ingest.FAST_CHUNK = original
    assert all(isinstance(part, core.intake.ingest.RawBatch) for part in parts)
    assert [part.count for part in parts] == [700] * 7 + [100]
    assert [part.first for part in parts] == list(range(0, 5000, 700))
    assert [user for part in parts for user in orjson.loads(part.payload)] == users
    assert reader.damage is None and reader.position == path.stat().st_size


def test_invalid_utf8_deep_in_a_big_file_keeps_every_record_before_it(tmp_path):
    users = make_users(3000, "utf8")
    data = orjson.dumps(users)
    at = data.index(b'"email"', len(data) // 2)  # a record past the first chunks
    before = data[:at].count(b'"email"')
    path = tmp_path / "bad.json"
    path.write_bytes(data[:at] + b'"x\xff":1,' + data[at:])
    original = core.intake.ingest.FAST_CHUNK
    core.intake.ingest.FAST_CHUNK = 8192
    try:
        records, damage = read(path)
    finally:
        core.intake.ingest.FAST_CHUNK = original
    assert records == users[:before] and damage.startswith(f"invalid UTF-8 in record {before + 1}")


def test_a_number_out_of_range_is_that_record_s_error_alone(tmp_path):
    """msgspec splits 1e400 as a number but will not decode it (nor will orjson): that record is an error, and
    the records beside it are read."""
    users = make_users(3, "range")
    path = tmp_path / "range.json"
    path.write_bytes(b"[" + b",".join([orjson.dumps(users[0]), b'{"id": 1e400}', orjson.dumps(users[2])]) + b"]")
    records, damage = read(path)
    assert damage is None and records[0] == users[0] and records[2] == users[2]
    assert isinstance(records[1], RecordError) and "not valid JSON" in str(records[1])


def test_a_raw_batch_fits_a_batch_message():
    from core.intake.client import MAX_BATCH_BYTES

    assert core.intake.ingest.RAW_BATCH_BYTES <= MAX_BATCH_BYTES
    assert core.intake.ingest.FAST_MAX_PENDING + core.intake.ingest.FAST_CHUNK <= MAX_TOKEN_BYTES
