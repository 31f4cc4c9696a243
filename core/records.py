"""One user record: validation, normalisation and its merge key (GUIDE §2)."""

from __future__ import annotations

import hashlib
import numbers
from typing import Annotated

import msgspec
import orjson

from core.config import USER_FIELDS

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
STRING_FIELDS = USER_FIELDS[1:]
USER_FIELD_SET = frozenset(USER_FIELDS)
# One user is a few hundred characters; anything far larger is garbage that would bloat a batch message.
MAX_RECORD_BYTES = 64 * 1024
# orjson encodes at most 254 nested arrays/objects (one more raises "Recursion limit reached") and a batch wraps
# its records in one more array, so a record may nest one level less. One limit for the reader (core/intake/ingest.py
# refuses deeper records, so every record it yields encodes), the client's batch encoder and the server (which
# can test a decoded record with nesting_exceeds). The record object itself is level 1.
ENCODER_MAX_DEPTH = 254
MAX_DEPTH = ENCODER_MAX_DEPTH - 1
# One JSON string, or one JSON Lines line, longer than this can never be sent (a batch message is at most
# 8 MB), so the reader stops there instead of buffering it: memory stays bounded whatever the file holds.
MAX_TOKEN_BYTES = 8 * 1024 * 1024


class RecordError(ValueError):
    """Why one record was rejected; the message is the reason shown in reports."""


def normalise(record: object) -> dict:
    """Return the user with every field present, strings trimmed, or raise RecordError.

    Missing or null string fields become "" (the wire format cannot tell them apart); a missing id
    becomes 0. Unknown fields are dropped: the merged file keeps the input's field names only.
    The server runs this once per user on the hot path (the client sends records as read), so the common
    case is kept cheap: exact type checks first, the rarer cases after.
    """
    if type(record) is not dict and not isinstance(record, dict):
        if isinstance(record, RecordError):  # a record that did not decode (split_records)
            raise record
        raise RecordError(f"record is a {_json_type(record)}, not an object")
    raw_id = record.get("id", 0)
    if raw_id.__class__ is not int:
        if raw_id is None:
            raw_id = 0
        elif isinstance(raw_id, bool) or not isinstance(raw_id, int):
            raise RecordError(f"id is a {_json_type(raw_id)}, not an integer")
    if not INT32_MIN <= raw_id <= INT32_MAX:
        raise RecordError(f"id {raw_id} does not fit in int32")
    user = {"id": raw_id}
    get = record.get
    size = 0
    for name in STRING_FIELDS:
        value = get(name)
        if value.__class__ is str:
            value = value.strip()
            size += len(value)
        elif value is None:
            value = ""
        elif isinstance(value, str):
            value = str(value).strip()
            size += len(value)
        else:
            raise RecordError(f"{name} is a {_json_type(value)}, not a string")
        user[name] = value
    if size > MAX_RECORD_BYTES:
        raise RecordError(f"record is {size} characters long, over the {MAX_RECORD_BYTES} limit")
    if size == 0 and raw_id == 0 and not record.keys() & USER_FIELD_SET:
        raise RecordError("record has none of the user fields")
    return user


_RAW_RECORDS = msgspec.json.Decoder(list[msgspec.Raw])


class _WireUser(msgspec.Struct):
    """A user as nearly every sender sends one: the fields of USER_FIELDS with the types normalise accepts
    (null or missing for any of them), anything else ignored. msgspec checks that while it decodes, in C."""

    id: Annotated[int, msgspec.Meta(ge=INT32_MIN, le=INT32_MAX)] | None = 0
    first_name: str | None = ""
    last_name: str | None = ""
    email: str | None = ""
    gender: str | None = ""
    ip_address: str | None = ""
    user_name: str | None = ""
    agent: str | None = ""
    country: str | None = ""


_WIRE_USERS = msgspec.json.Decoder(list[_WireUser])
assert _WireUser.__struct_fields__ == USER_FIELDS  # the dicts below are built in this order


def normalise_json(payload: bytes) -> list[dict] | None:
    """The users of a JSON array, exactly as normalise makes them, when every record is valid; None when any
    is not, or may not be (the caller then decodes the array and normalises record by record, for the exact
    reasons). The common case costs one typed decode in C and a trim per field, instead of building every
    record as read and checking it in Python.

    None also for an array that is not valid UTF-8 throughout (msgspec checks only the strings it keeps),
    and for an all-empty record, which normalise accepts only when it names a user field."""
    if not payload.isascii():
        try:
            payload.decode()
        except UnicodeDecodeError:
            return None
    try:
        wire = _WIRE_USERS.decode(payload)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    users = []
    for u in wire:
        user = {"id": u.id or 0, "first_name": (u.first_name or "").strip(), "last_name": (u.last_name or "").strip(),
                "email": (u.email or "").strip(), "gender": (u.gender or "").strip(),
                "ip_address": (u.ip_address or "").strip(), "user_name": (u.user_name or "").strip(),
                "agent": (u.agent or "").strip(), "country": (u.country or "").strip()}
        size = (len(user["first_name"]) + len(user["last_name"]) + len(user["email"]) + len(user["gender"])
                + len(user["ip_address"]) + len(user["user_name"]) + len(user["agent"]) + len(user["country"]))
        if size > MAX_RECORD_BYTES or (size == 0 and not user["id"]):
            return None
        users.append(user)
    return users


def split_records(payload: bytes) -> list:
    """A JSON array's records one by one, for an array that does not decode whole: a record that does not
    decode (a number out of range, 1e400) becomes a RecordError saying so, the others are decoded.
    Raises msgspec.DecodeError when `payload` is not a JSON array at all."""
    records: list = []
    for raw in _RAW_RECORDS.decode(payload):
        try:
            records.append(msgspec.json.decode(raw))
        except (msgspec.DecodeError, RecursionError) as error:
            records.append(RecordError(f"record is not valid JSON: {str(error).split(' - ')[0]}"))
    return records


def merge_key(user: dict, key_field: str = "email") -> str:
    """The identity of a user: the key field trimmed and case-folded, or a content fingerprint.

    The fingerprint leaves `id` out on purpose: ids restart in every file, so the same person
    in two files carries two ids and must still be one user.
    """
    value = user.get(key_field)
    if key_field == "id":
        if value:
            return f"id:{value}"
    elif value:
        return value.casefold()
    content = {name: user.get(name, "") for name in STRING_FIELDS}
    digest = hashlib.blake2b(orjson.dumps(content, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()
    return f"fp:{digest}"


def nesting_exceeds(value: object, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays/objects nest deeper than `limit` levels in `value` (a scalar is level 0).

    Iterative, so any depth orjson can decode is measured without recursion.
    """
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if item.__class__ is dict or isinstance(item, dict):
            children = item.values()
        elif item.__class__ is list or isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, numbers.Number):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
