"""One record: validation reasons, normalisation and the merge key."""

import pytest

from core.records import RecordError, merge_key, normalise


def test_normalise_trims_fills_and_drops_unknown_fields():
    user = normalise({"id": 7, "email": "  A@B.c ", "first_name": None, "extra": [1, 2]})
    assert user == {"id": 7, "first_name": "", "last_name": "", "email": "A@B.c", "gender": "", "ip_address": "",
                    "user_name": "", "agent": "", "country": ""}


@pytest.mark.parametrize("record, reason", [
    ([1, 2], "record is a array, not an object"),
    ("text", "record is a string, not an object"),
    ({"unrelated": 1}, "record has none of the user fields"),
    ({"id": "7", "email": "x@y.z"}, "id is a string, not an integer"),
    ({"id": True, "email": "x@y.z"}, "id is a boolean, not an integer"),
    ({"id": 1.5, "email": "x@y.z"}, "id is a number, not an integer"),
    ({"id": 2**31, "email": "x@y.z"}, "does not fit in int32"),
    ({"id": -(2**31) - 1, "email": "x@y.z"}, "does not fit in int32"),
    ({"id": 1, "email": 42}, "email is a number, not a string"),
    ({"id": 1, "email": {"a": 1}}, "email is a object, not a string"),
    ({"id": 1, "agent": "x" * 70000}, "over the 65536 limit"),
])
def test_invalid_records_get_a_reason(record, reason):
    with pytest.raises(RecordError, match=reason.replace("(", r"\(")):
        normalise(record)


def test_int32_bounds_are_valid():
    assert normalise({"id": 2**31 - 1, "email": "a@b"})["id"] == 2**31 - 1
    assert normalise({"id": -(2**31), "email": "a@b"})["id"] == -(2**31)


def test_merge_key_is_the_case_folded_email_or_a_fingerprint_without_id():
    assert merge_key(normalise({"email": " Straße@Example.COM "})) == "strasse@example.com"
    first = merge_key(normalise({"id": 1, "first_name": "No", "last_name": "Mail"}))
    second = merge_key(normalise({"id": 2, "first_name": "No", "last_name": "Mail"}))
    assert first == second and first.startswith("fp:")
    assert merge_key(normalise({"id": 1, "first_name": "Other"})) != first


def test_merge_key_on_another_field():
    user = normalise({"id": 3, "user_name": "Ada", "email": "a@b"})
    assert merge_key(user, "user_name") == "ada"
    assert merge_key(user, "id") == "id:3"


def _nest(depth: int) -> dict:
    record: object = []
    for _ in range(depth - 2):
        record = [record]
    return {"id": 1, "email": "d@x.org", "extra": record}


def test_the_shared_depth_limit_is_what_orjson_encodes_in_a_batch():
    """The reader lets records of MAX_DEPTH through; a batch (one more array) of them must encode, and one level
    more must not (so the limit is not needlessly low). Fails if orjson's encoder limit moves."""
    import orjson

    from core.records import ENCODER_MAX_DEPTH, MAX_DEPTH

    assert MAX_DEPTH == ENCODER_MAX_DEPTH - 1
    orjson.dumps([_nest(MAX_DEPTH)])
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps([_nest(MAX_DEPTH + 1)])


def test_nesting_exceeds_counts_levels_without_recursion():
    from core.records import MAX_DEPTH, nesting_exceeds

    assert not nesting_exceeds(_nest(MAX_DEPTH)) and nesting_exceeds(_nest(MAX_DEPTH + 1))
    assert not nesting_exceeds("text") and not nesting_exceeds({}, 1) and nesting_exceeds({"a": []}, 1)
    assert nesting_exceeds(_nest(50_000))  # far past Python's recursion limit


# -- the typed fast path (normalise_json) against normalise ---------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from core.records import USER_FIELDS, normalise_json  # noqa: E402

_VALUE = (st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False)
          | st.text(st.sampled_from(" \t\n\u2028\xa0aé😀@.\\\""), max_size=6) | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2))
_RECORD = st.dictionaries(st.sampled_from(list(USER_FIELDS) + ["extra", "ID"]), _VALUE, max_size=10) | _VALUE


@settings(max_examples=400, deadline=None)
@given(st.lists(_RECORD, max_size=6))
def test_the_typed_fast_path_gives_normalise_s_users_or_steps_aside(records):
    import orjson

    try:
        expected = [normalise(r) for r in records]
    except RecordError:
        expected = None
    got = normalise_json(orjson.dumps(records))
    assert got is None or got == expected
    if expected is not None and all(isinstance(r, dict) and r.get("email") for r in records):
        assert got == expected  # the common case is not left to the slow path


def test_the_typed_fast_path_takes_ordinary_users():
    import orjson

    from tests.conftest import make_users

    users = make_users(50, "fast")
    users[3]["email"] = "  Padded@Example.org\t"
    users[4]["first_name"] = None
    del users[5]["agent"]
    assert normalise_json(orjson.dumps(users)) == [normalise(u) for u in users]
    assert normalise_json(b'[{"email": "a@b.c", "x": "\xff"}]') is None  # invalid UTF-8 anywhere: the slow path
