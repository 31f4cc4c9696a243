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
