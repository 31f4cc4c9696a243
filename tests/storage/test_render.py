"""The export's fast path (Codec.render) against the reference (Codec.decode, then orjson.dumps per user).

render must give byte for byte what the reference gives for every value the reference reads, leave out exactly
the values the reference leaves out (with its reason), and never take a value the reference refuses: for values
the codec wrote from any text, and for hostile ones (any JSON array in the store, arbitrary bytes, keys that are
not UTF-8), since a value in Redis may have been written by anything.
"""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import USER_FIELDS
from core.storage.codec import Codec, Dictionary, Undecodable
from tests.storage.test_roundtrip_property import TEXT, USER

FIXTURES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None, max_examples=300)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), TEXT)
ANY_JSON = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)
# A value of any JSON array of about the right length, or of the stored shape with any integers in it: an id of any
# size, an email KEY_MARK or another integer, dictionary indexes known, negative or beyond the dictionary.
FIELD_COUNT = len(USER_FIELDS)
ROW = st.lists(st.one_of(TEXT, st.integers(-3, 12), ANY_JSON), min_size=FIELD_COUNT - 2, max_size=FIELD_COUNT + 1)
INDEX = st.one_of(TEXT, st.integers(-3, 12))
SHAPED = st.tuples(st.integers(-(2**70), 2**70), TEXT, TEXT, st.one_of(TEXT, st.integers(-1, 2)), INDEX, TEXT, TEXT,
                   INDEX, INDEX).map(list)
SEQ = st.one_of(st.integers(0, 2**64).map(str), st.sampled_from(["", "x", "-1", "1.5", " 1"]))
KEY = st.one_of(TEXT.map(str.encode), st.binary(max_size=6))


@st.composite
def hostile(draw) -> bytes:
    """A stored value written by something other than the codec."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    seq = draw(SEQ).encode()
    row = json.dumps(draw(st.one_of(ROW, SHAPED)), ensure_ascii=False, separators=(",", ":")).encode()  # any int
    kind = draw(st.sampled_from(["as is", "spaced", "cut", "latin"]))
    if kind == "spaced":  # JSON whitespace and escapes where the codec writes none
        row = row.replace(b",", b" , ").replace(b"/", b"\\/")
    elif kind == "cut":
        row = row[:draw(st.integers(0, len(row)))]
    elif kind == "latin":  # not UTF-8 inside a string
        row = row.replace(b'"', b'"\xe9', 1)
    return seq + b"\t" + row


@pytest.fixture
def codec(connection, namespace) -> Codec:
    made = Codec(Dictionary(connection, namespace))
    made.encode([{"gender": f"g{n}", "agent": f"a{n}", "country": f"c{n}"} for n in range(4)])
    made.dictionary.sync()
    return made


def reference(codec: Codec, values: list[bytes], keys: list[bytes]) -> tuple[list[bytes], list[tuple[int, str]]]:
    bad: list[tuple[int, str]] = []
    users = codec.decode(values, lambda n, reason: bad.append((n, reason)), keys)
    return [orjson.dumps(user) for user in users], bad


@FIXTURES
@given(users=st.lists(USER, max_size=8), data=st.data())
def test_render_gives_the_reference_bytes_for_every_value_the_codec_writes(codec, users, data):
    keys = [data.draw(st.one_of(st.just(user["email"]), TEXT)) for user in users]
    _, encoded = codec.encode(users, keys)
    values = [b"%d\t" % n + array for n, array in enumerate(encoded)]
    keys = [key.encode() for key in keys]
    bad: list = []
    assert codec.render(values, lambda n, reason: bad.append((n, reason)), keys) == reference(codec, values, keys)[0]
    assert bad == []


@FIXTURES
@given(values=st.lists(hostile(), max_size=6), keys=st.lists(KEY, min_size=6, max_size=6))
def test_render_takes_and_refuses_exactly_what_the_reference_does(codec, values, keys):
    want, want_bad = reference(codec, values, keys[:len(values)])
    bad: list = []
    assert codec.render(values, lambda n, reason: bad.append((n, reason)), keys[:len(values)]) == want
    assert bad == want_bad
    if want_bad:  # without on_bad, a refused value stops the call, as decode's does
        with pytest.raises(Undecodable):
            codec.render(values, None, keys[:len(values)])
