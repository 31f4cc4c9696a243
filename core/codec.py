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
import threading
import uuid
import zlib
from importlib import resources

import orjson
import redis

from core.config import USER_FIELDS

BUCKETS = 16384
INTERNED = ("gender", "agent", "country")
INTERNED_POSITIONS = tuple(USER_FIELDS.index(name) for name in INTERNED)
# Bounds the dictionary when a field turns out not to repeat (every agent unique): past this, literals.
DICTIONARY_CAP = 65536


@functools.cache
def lua(name: str) -> str:
    return resources.files("core.lua").joinpath(name).read_text()


def bucket_of(key: str) -> int:
    return zlib.crc32(key.encode()) % BUCKETS


class StaleDictionary(redis.RedisError):
    """The dictionary was cleared since this process cached indexes from it.

    A RedisError, so every caller that already rides out a store hiccup (the exporter, the watcher, RPCs
    answering UNAVAILABLE, RQ retrying a job) treats a namespace cleared under it the same way.
    """


class Dictionary:
    """The shared string dictionary, cached in this process both ways (string -> index, index -> string)."""

    def __init__(self, connection: redis.Redis, namespace: str):
        self.redis = connection
        self.keys = [f"{namespace}:dict", f"{namespace}:dict:list", f"{namespace}:dict:epoch"]
        self._intern = connection.register_script(lua("intern.lua"))
        self._lock = threading.Lock()
        self.epoch = ""
        self._ids: dict[str, int | None] = {}  # None: kept literal, the dictionary was full
        self._strings: list[str] = []

    def forget(self) -> None:
        with self._lock:
            self.epoch, self._ids, self._strings = "", {}, []

    def ids_for(self, strings) -> tuple[str, dict[str, int | None]]:
        """Make sure every string has its index (or is known to stay literal); return (epoch, index map)."""
        with self._lock:
            for _ in range(3):
                missing = [s for s in strings if s not in self._ids]
                if not missing:
                    return self.epoch, self._ids
                epoch, *ids = self._intern(keys=self.keys, args=[DICTIONARY_CAP, uuid.uuid4().hex[:12], *missing])
                epoch = epoch.decode()
                if epoch != self.epoch:
                    had = bool(self._ids)
                    self.epoch, self._ids, self._strings = epoch, {}, []
                    if had:  # what was cached belongs to a cleared dictionary: ask again for all of it
                        continue
                self._ids.update((s, i if i >= 0 else None) for s, i in zip(missing, ids))
            raise StaleDictionary("the string dictionary keeps being cleared")

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
            self.epoch, self._ids, self._strings = epoch, {}, []
            more = self.redis.lrange(self.keys[1], 0, -1)
        self._strings.extend(s.decode() for s in more)


class Codec:
    """Encodes users into stored values and back, through a Dictionary."""

    def __init__(self, dictionary: Dictionary):
        self.dictionary = dictionary

    def encode(self, users: list[dict]) -> tuple[str, list[bytes]]:
        """The JSON arrays of these users (without sequence numbers), and the dictionary epoch they use."""
        wanted = {user.get(USER_FIELDS[p], "") for user in users for p in INTERNED_POSITIONS} - {""}
        epoch, ids = self.dictionary.ids_for(wanted) if wanted else ("", {})
        used = False
        rows = []
        for user in users:
            row = [user.get(name, "") for name in USER_FIELDS]
            for position in INTERNED_POSITIONS:
                index = ids.get(row[position])
                if index is not None:
                    row[position] = index
                    used = True
            rows.append(orjson.dumps(row))
        return (epoch if used else ""), rows

    def decode(self, values) -> list[dict]:
        """Stored values ("<seq>\\t<array>") back to user objects.

        The export decodes every user, so the dictionary is read from a local reference, not through
        its lock, for every index it already holds.
        """
        strings = self.dictionary.strings
        known = len(strings)
        users = []
        for stored in values:
            row = orjson.loads(stored[stored.index(b"\t") + 1:])
            for position in INTERNED_POSITIONS:
                index = row[position]
                if index.__class__ is int:
                    row[position] = strings[index] if index < known else self.dictionary.string(index)
            users.append(dict(zip(USER_FIELDS, row)))
        return users
