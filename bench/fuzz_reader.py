"""Fuzz the reader (core.intake.ingest.SourceReader): generated and mutated inputs, each checked against the rules.

    python bench/fuzz_reader.py [--count 100000] [--seed 1]

Rules checked on every input: the reader never raises; `damage` is None or one line; a sound file gives back
exactly its records; a sound file cut anywhere gives exactly the records completed before the cut; no record
it yields is nested deeper than core.records.MAX_DEPTH (so each encodes in a batch). Inputs: random JSON
values, user files (array and JSON Lines) with hostile strings, the same cut at a random byte, byte flips,
inserted brackets, quotes and backslashes, deep nesting around the limit, and noise. Half of the arrays are
read through the streaming parser (as files over 8 MB are). Prints what it ran and every rule broken.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core.intake.ingest  # noqa: E402
from core.records import MAX_DEPTH, RecordError, nesting_exceeds  # noqa: E402

ALPHABET = 'ab"\\[]{}/:,\n\t\u2028\u00e9\U0001F600 \x00'


def text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 12)))


def value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 6 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randrange(-(2**40), 2**40)
    if kind == 3:
        return rng.uniform(-1e6, 1e6)
    if kind == 4:
        return text(rng)
    if kind in (5, 6):
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {text(rng): value(rng, depth + 1) for _ in range(rng.randrange(4))}


def user(rng: random.Random, n: int) -> dict:
    record = {"id": n, "email": f"{text(rng)}{n}@x.org", "first_name": text(rng), "agent": text(rng)}
    if rng.random() < 0.2:
        record["extra"] = value(rng)
    return record


def users_file(rng: random.Random, lines: bool) -> tuple[bytes, list, list[int]]:
    users = [user(rng, n) for n in range(rng.randrange(1, 6))]
    parts = [orjson.dumps(u) for u in users]
    data, ends = (b"", []) if lines else (b"[", [])
    for n, part in enumerate(parts):
        if not lines and n:
            data += b", "
        data += part
        ends.append(len(data))
        if lines:
            data += b"\n"
    return (data if lines else data + b"]"), users, ends


def deep(rng: random.Random) -> tuple[bytes, int]:
    depth = MAX_DEPTH + rng.randrange(-3, 4)
    opener = rng.choice([b"[", b'{"k":'])
    closer = b"]" if opener == b"[" else b"}"
    record = b'{"id": 1, "x": ' + opener * (depth - 1) + b"1" + closer * (depth - 1) + b"}"
    return record, depth


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        where = rng.randrange(len(data) + 1)
        choice = rng.randrange(3)
        if choice == 0 and data:
            data[min(where, len(data) - 1)] = rng.randrange(256)
        elif choice == 1:
            data[where:where] = rng.choice([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b"\\\\", b"\xff"])
        else:
            del data[where:where + rng.randrange(1, 4)]
    return bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="fuzz-reader-"))
    ran, broken, outcomes = Counter(), [], Counter()
    whole = core.intake.ingest.WHOLE_FILE_BYTES
    started = time.monotonic()

    for n in range(args.count):
        kind = rng.choice(["value", "users", "cut", "mutated", "deep", "noise"])
        lines = rng.random() < 0.4
        expect = None  # the exact records, when the rules fix them
        if kind == "value":
            data = orjson.dumps(value(rng))
        elif kind in ("users", "cut", "mutated"):
            data, users, ends = users_file(rng, lines)
            if kind == "users":
                expect = users
            elif kind == "cut":
                size = rng.randrange(len(data) + 1)
                data = data[:size]
                expect = [u for u, end in zip(users, ends) if end <= size]
            else:
                data = mutate(rng, data)
        elif kind == "deep":
            record, depth = deep(rng)
            data = (record + b"\n") if lines else (b"[" + record + b"]")
            kind = f"deep {'under' if depth <= MAX_DEPTH else 'over'}"
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        suffix = ".jsonl" if lines else ".json"
        streamed = rng.random() < 0.5
        label = f"{kind} {'lines' if lines else 'array'}{' streamed' if streamed and not lines else ''}"
        ran[label] += 1
        path = folder / f"input{suffix}"
        path.write_bytes(data)
        core.intake.ingest.WHOLE_FILE_BYTES = 0 if streamed else whole
        try:
            reader = core.intake.ingest.SourceReader(path)
            records = [record for _, record in reader]
        except Exception as error:  # the one thing that must never happen
            broken.append(f"{label}: raised {type(error).__name__}: {error} on {data[:80]!r}")
            continue
        finally:
            core.intake.ingest.WHOLE_FILE_BYTES = whole
        damage = reader.damage
        outcomes["damaged" if damage else "sound"] += 1
        if damage is not None and (not isinstance(damage, str) or "\n" in damage or not damage):
            broken.append(f"{label}: damage is not one line: {damage!r}")
        if expect is not None and records != expect:
            broken.append(f"{label}: {len(records)} records, expected {len(expect)} on {data[:80]!r}")
        for record in records:
            if not isinstance(record, RecordError) and nesting_exceeds(record, MAX_DEPTH):
                broken.append(f"{label}: a record nested deeper than {MAX_DEPTH} was yielded")
                break
        if n and n % 20_000 == 0:
            print(f"  {n:,} inputs, {len(broken)} rule(s) broken so far", flush=True)

    seconds = time.monotonic() - started
    print(f"ran {sum(ran.values()):,} inputs through SourceReader in {seconds:.1f} s (seed {args.seed}):")
    for label, count in sorted(ran.items()):
        print(f"  {count:>7,}  {label}")
    print(f"  outcomes: {outcomes['sound']:,} sound, {outcomes['damaged']:,} damaged (each with one line of reason)")
    print(f"found: {len(broken)} rule(s) broken")
    for line in broken[:20]:
        print("  " + line)
    for leftover in folder.iterdir():
        leftover.unlink()
    folder.rmdir()
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
