"""How one user is kept in Redis, compactly enough that a million users fit in a few hundred megabytes.

A user is stored as "<seq>\\t<JSON array of USER_FIELDS in order>" in one of BUCKETS small hashes,
chosen by a hash of its merge key. Small hashes stay in Redis's listpack encoding (no per-entry
pointers), field names are not repeated in every user, and the sequence number rides inside the value
instead of in a second hash. Strings that repeat across users (gender, agent, country) are kept once
in a shared dictionary and referred to by their index, an integer in the array; a string the full
dictionary cannot take stays a literal string, so the array always decodes without ambiguity.

A dictionary belongs to an epoch (a random token made with it). Clearing the namespace drops it, so a
process holding indexes from the old epoch is told so by the scripts that check it, and starts over.
"""

from __future__ import annotations

import functools
import operator
import threading
import uuid
import zlib
from importlib import resources

import msgspec
import orjson
import redis

from core.config import USER_FIELDS

# 65,536 buckets hold 150 users each at ten million: far below the embedded Redis's listpack bound (512),
# where a bucket kept as a hash table costs a third more memory; a bucket is also what an export rewrites
# when one of its users changes (core/storage/viewfile.py), so small buckets keep that cheap.
BUCKETS = 65536
LEGACY_BUCKETS = 16384  # the layout before, under users:<n>: moved on start (Store.upgrade_layout)
INTERNED = ("gender", "agent", "country")
INTERNED_POSITIONS = tuple(USER_FIELDS.index(name) for name in INTERNED)
# The email is most often the merge key itself, which the bucket already holds as the field name: the array
# then says so with KEY_MARK (an integer, never a string email) instead of repeating it (a fifth of a value).
EMAIL = USER_FIELDS.index("email")
_PICK_FIELDS = operator.itemgetter(*USER_FIELDS)
_PICK_INTERNED = operator.itemgetter(*INTERNED_POSITIONS)
KEY_MARK = 0
FIELD_COUNT = len(USER_FIELDS)
# Bounds the dictionary when a field turns out not to repeat (every agent unique): past this, literals.
DICTIONARY_CAP = 65536
# The export's fast path (Codec.render): a stored array of the shape Codec.encode writes, decoded by msgspec in C
# as typed (which also validates its UTF-8 and escapes), and the user encoded again by msgspec from a struct, where
# the reference path builds a dict per user and encodes it (bench/README.md: 7-22% less of this process's CPU per
# exported user). Any other array takes the reference path (decode), which says why a value cannot be read.
_TEXT_OR_INDEX = int | str
_STORED_ROW = msgspec.json.Decoder(tuple[int, str, str, _TEXT_OR_INDEX, _TEXT_OR_INDEX, str, str,
                                         _TEXT_OR_INDEX, _TEXT_OR_INDEX])
_User = msgspec.defstruct("User", [(name, object) for name in USER_FIELDS])
_ENCODE_USER = msgspec.json.Encoder().encode
# orjson reads a larger integer as a float: such an id takes the reference path, so both give the same value.
_ORJSON_INTEGERS = range(-(1 << 63), 1 << 64)


@functools.cache
def lua(name: str, with_counters: bool = False) -> str:
    """A script's source after its preludes: core/storage/lua/checks.lua (the checks made before any write),
    and with_counters core/storage/lua/counters.lua (the Prometheus counters' helpers)."""
    folder = resources.files("core.storage.lua")
    preludes = ["checks.lua", "counters.lua"] if with_counters else ["checks.lua"]
    return "\n".join(folder.joinpath(part).read_text() for part in [*preludes, name])


def bucket_of(key: str) -> int:
    return zlib.crc32(key.encode()) % BUCKETS


class StaleDictionary(redis.RedisError):
    """The dictionary was cleared since this process cached indexes from it.

    A RedisError, so every caller that already rides out a store hiccup (the exporter, the watcher, RPCs
    answering UNAVAILABLE, RQ retrying a job) treats a namespace cleared under it the same way.
    """


class Undecodable(ValueError):
    """A stored value no reader can turn back into a user (damaged in Redis, or written by a bug)."""


class Dictionary:
    """The shared string dictionary, cached in this process both ways (string -> index, index -> string).

    Both caches are bounded by DICTIONARY_CAP: only strings that have an index are cached. Once the
    dictionary is full (within an epoch it never shrinks), this process holds all of it, so a string
    it does not know is known to stay literal without asking Redis, and without being remembered.
    """

    def __init__(self, connection: redis.Redis, namespace: str):
        self.redis = connection
        self.keys = [f"{namespace}:dict", f"{namespace}:dict:list", f"{namespace}:dict:epoch"]
        self._intern = connection.register_script(lua("intern.lua"))
        self._lock = threading.Lock()
        self.epoch = ""
        self._ids: dict[str, int] = {}
        self._strings: list[str] = []
        self._full = False  # the dictionary of this epoch is full and all of it is in _ids

    def forget(self) -> None:
        with self._lock:
            self.epoch, self._ids, self._strings, self._full = "", {}, [], False

    def cached(self) -> int:
        """How many strings this process holds (for the bound's test)."""
        return max(len(self._ids), len(self._strings))

    def ids_for(self, strings) -> tuple[str, dict[str, int]]:
        """Make sure every string that can have an index has it; return (epoch, index map).

        A string missing from the map stays literal (the dictionary was full when it came).
        """
        with self._lock:
            for _ in range(3):
                missing = [s for s in strings if s not in self._ids]
                if not missing or self._full:
                    return self.epoch, self._ids
                epoch, *ids = self._intern(keys=self.keys, args=[DICTIONARY_CAP, uuid.uuid4().hex[:12], *missing])
                epoch = epoch.decode()
                if epoch != self.epoch:
                    had = bool(self._ids) or self._full
                    self.epoch, self._ids, self._strings, self._full = epoch, {}, [], False
                    if had:  # what was cached belongs to a cleared dictionary: ask again for all of it
                        continue
                self._ids.update((s, i) for s, i in zip(missing, ids) if i >= 0)
                if any(i < 0 for i in ids):
                    self._load_all()
                    if self._full:
                        return self.epoch, self._ids
            raise StaleDictionary("the string dictionary keeps being cleared")

    def _load_all(self) -> None:
        """Hold the whole (full) dictionary, so no later string needs a round trip or a cache entry."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys[2])
            pipe.lrange(self.keys[1], 0, -1)
            epoch, everything = pipe.execute()
        if (epoch.decode() if epoch else "") != self.epoch:
            return  # cleared meanwhile: the next call starts over
        self._strings = [s.decode() for s in everything]
        self._ids = {s: i for i, s in enumerate(self._strings)}
        self._full = len(self._strings) >= DICTIONARY_CAP

    def sync(self) -> None:
        """Catch up with the dictionary in Redis, dropping the cache if it was cleared meanwhile."""
        with self._lock:
            self._load()

    @property
    def strings(self) -> list[str]:
        """The strings by index as far as this process knows them (grows in place; replaced on a new epoch)."""
        return self._strings

    def string(self, index: int) -> str:
        with self._lock:
            if index >= len(self._strings):
                self._load()
            if index >= len(self._strings):
                raise StaleDictionary(f"string {index} is missing from the dictionary")
            return self._strings[index]

    def _load(self) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys[2])
            pipe.lrange(self.keys[1], len(self._strings), -1)
            epoch, more = pipe.execute()
        epoch = epoch.decode() if epoch else ""
        if epoch != self.epoch:
            self.epoch, self._ids, self._strings, self._full = epoch, {}, [], False
            more = self.redis.lrange(self.keys[1], 0, -1)
        self._strings.extend(s.decode() for s in more)


class Codec:
    """Encodes users into stored values and back, through a Dictionary."""

    def __init__(self, dictionary: Dictionary):
        self.dictionary = dictionary

    def encode(self, users: list[dict], keys: list[str] | None = None) -> tuple[str, list[bytes]]:
        """The JSON arrays of these users (without sequence numbers), and the dictionary epoch they use.
        keys: each user's merge key (the field name it is stored under), to mark an email equal to it."""
        rows = []
        for user in users:
            try:  # a validated user has every field (core/records.py): picked in C, not field by field
                rows.append(list(_PICK_FIELDS(user)))
            except KeyError:
                rows.append([user.get(name, "") for name in USER_FIELDS])
        wanted = {value for row in rows for value in _PICK_INTERNED(row)} - {""}
        epoch, ids = self.dictionary.ids_for(wanted) if wanted else ("", {})
        used = False
        encoded = []
        for n, row in enumerate(rows):
            if keys is not None and row[EMAIL] == keys[n] and row[EMAIL].__class__ is str:
                row[EMAIL] = KEY_MARK
            for position in INTERNED_POSITIONS:
                index = ids.get(row[position])
                if index is not None:
                    row[position] = index
                    used = True
            encoded.append(orjson.dumps(row))
        return (epoch if used else ""), encoded

    def decode(self, values, on_bad=None, keys=None) -> list[dict]:
        """Stored values ("<seq>\\t<array>") back to user objects; keys: the merge key (bytes) each is stored
        under, which an email marked KEY_MARK stands for (without keys such a value is undecodable).

        A value that cannot be decoded is left out and handed to on_bad(position, reason) (by default
        it raises Undecodable): one damaged value must never stop the others from being read.
        The export decodes every user, so the dictionary is read from a local reference, not through
        its lock, for every index it already holds.
        """
        strings = self.dictionary.strings
        known = len(strings)
        users = []
        for number, stored in enumerate(values):
            try:
                tab = stored.index(b"\t")
                row = orjson.loads(stored[tab + 1:])
                if row.__class__ is not list or len(row) != FIELD_COUNT or not stored[:tab].isdigit():
                    raise Undecodable("not a sequence number and a user array")
                for position in INTERNED_POSITIONS:
                    index = row[position]
                    if index.__class__ is int:
                        if index < 0:
                            raise Undecodable(f"dictionary index {index}")
                        row[position] = strings[index] if index < known else self.dictionary.string(index)
                if row[EMAIL].__class__ is not str:
                    if row[EMAIL] != KEY_MARK or row[EMAIL].__class__ is not int or keys is None:
                        raise Undecodable(f"email {row[EMAIL]!r}")
                    row[EMAIL] = keys[number].decode()
            except (ValueError, StaleDictionary) as error:  # orjson's JSONDecodeError is a ValueError
                if on_bad is None:
                    raise Undecodable(str(error)) from None
                on_bad(number, str(error))
                continue
            users.append(dict(zip(USER_FIELDS, row)))
        return users

    def render(self, values, on_bad=None, keys=None) -> list[bytes]:
        """Stored values as the JSON objects all_users.json holds, one bytes each: exactly what
        orjson.dumps(user) gives for each user decode() gives, and the same values left out (on_bad, or
        Undecodable when on_bad is None). The export's path: every user of the store goes through it."""
        strings = self.dictionary.strings
        known = len(strings)
        decode, rendered = _STORED_ROW.decode, []
        for number, stored in enumerate(values):
            tab = stored.find(b"\t")
            if tab > 0 and stored[:tab].isdigit():
                try:
                    i, first, last, email, gender, ip, name, agent, country = decode(stored[tab + 1:])
                    if email.__class__ is int:
                        email = keys[number].decode() if email == KEY_MARK and keys is not None else None
                except ValueError:  # msgspec's DecodeError, a key not UTF-8
                    pass  # not our shape (damaged, or written otherwise): the reference path says why
                else:
                    if gender.__class__ is int:
                        gender = strings[gender] if 0 <= gender < known else None
                    if agent.__class__ is int:
                        agent = strings[agent] if 0 <= agent < known else None
                    if country.__class__ is int:
                        country = strings[country] if 0 <= country < known else None
                    if (email is not None and gender is not None and agent is not None and country is not None
                            and i in _ORJSON_INTEGERS):
                        rendered.append(_ENCODE_USER(_User(i, first, last, email, gender, ip, name, agent, country)))
                        continue
            report = None if on_bad is None else (lambda _, reason, number=number: on_bad(number, reason))
            rendered += [orjson.dumps(user) for user in
                         self.decode([stored], report, None if keys is None else [keys[number]])]
        return rendered
