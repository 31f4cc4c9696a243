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
