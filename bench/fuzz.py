"""Fuzz the store (and the file reader): many generated inputs, then what ran and what was found.

Run from the repository root with the project's venv:

    .venv/bin/python bench/fuzz.py                         # 100,000 users, the machine's Redis or an embedded one
    .venv/bin/python bench/fuzz.py --users 300000 --seed 3 --redis-url redis://127.0.0.1:6379

Sections (each prints its counts; the exit code is 1 when anything was found):
  store     users with hostile text in every field (TAB, NUL, newlines, U+2028, quotes, backslashes, emoji,
            any code point but lone surrogates), repeated merge keys (latest wins), sent as batches of random
            size and as unary users, then exported: every user must come out byte-exact, once.
  damaged   garbage values planted in the user buckets: the export must skip exactly those and keep the rest.
  identity  random batch range sequences through the server's range check, against a brute-force model.
  reader    generated files (whole, truncated at a random byte, bytes flipped, JSON Lines) through
            core.intake.ingest.SourceReader: it must never raise, and from a truncated file keep a prefix of the records.

It works in its own namespace and deletes every key it made.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.config import USER_FIELDS  # noqa: E402
from core.records import merge_key, normalise  # noqa: E402
from core.service.server import BadBatch, Ranges  # noqa: E402
from core.storage.codec import BUCKETS  # noqa: E402
from core.storage.store import Store  # noqa: E402

from benchredis import cleanup, open_redis  # noqa: E402

NASTY = "\t\n\r\x00\x1f\x7f\u2028\u2029\"\\'/{}[],: \u00a0\ufeff😀🇹🇷ß İ"


def text(rng: random.Random, size: int = 12) -> str:
    out = []
    for _ in range(rng.randrange(size + 1)):
        pick = rng.random()
        if pick < 0.5:
            out.append(chr(rng.randrange(0x20, 0x7f)))
        elif pick < 0.8:
            out.append(rng.choice(NASTY))
        else:
            code = rng.randrange(0x110000)
            out.append(chr(code) if not 0xD800 <= code <= 0xDFFF else "x")
    return "".join(out)


def user(rng: random.Random, n: int) -> dict:
    record = {"id": rng.randrange(-(2**31), 2**31)}
    for name in USER_FIELDS[1:]:
        record[name] = text(rng)
    record["email"] = f"{text(rng, 6)}#{n}"  # distinct unless reused below
    if rng.random() < 0.3:  # repeated strings, as in real files: they go through the dictionary
        record["agent"] = rng.choice(("Mozilla/5.0", "curl/8\t", "\x00agent"))
        record["country"] = rng.choice(("Turkey", "Türkiye", "🇹🇷", "\u2028"))
    return record


def store_section(connection, namespace: str, users: int, rng: random.Random, scratch: Path) -> dict:
    store = Store(connection, namespace)
    store.claim_merge_key("email")
    found = Counter()
    sent: list[dict] = []
    expected: dict[str, bytes] = {}
    attempt = store.begin_attempt("fuzz", state="streaming")
    made = 0
    while made < users:
        size = rng.choice((1, 7, 100, 1000, 2000))
        batch = []
        for _ in range(min(size, users - made)):
            record = user(rng, made)
            if sent and rng.random() < 0.1:  # same merge key as an earlier user, written differently
                earlier = rng.choice(sent)
                record["email"] = rng.choice((earlier["email"].upper(), f"  {earlier['email']}\t", earlier["email"]))
            batch.append(normalise(record))
            sent.append(batch[-1])
            made += 1
        try:
            if rng.random() < 0.05:
                for one in batch:
                    store.push_unary(one, "email")
                store.drain_inbox()
            else:
                store.merge_batch("fuzz", attempt, f"{made}:{len(batch)}", store.reserve_seq(len(batch)), batch,
                                  "email")
        except Exception:
            found["crash"] += 1
            found.setdefault("first crash", traceback.format_exc(limit=3))
            continue
        for one in batch:
            expected[merge_key(one)] = orjson.dumps(one)
    path = scratch / "all_users.json"
    try:
        info = store.export(path)
    except Exception:
        found["crash"] += 1
        found.setdefault("first crash", traceback.format_exc(limit=3))
        return {"ran": made, "found": found}
    lines = path.read_bytes().split(b"\n")[1:-2]
    got = Counter(line.rstrip(b",") for line in lines)
    want = Counter(expected.values())
    found["missing or different"] = sum((want - got).values())
    found["extra"] = sum((got - want).values())
    found["undecodable"] = info["undecodable"]
    found["count mismatch"] = int(info["count"] != len(expected) or store.count() != len(expected))
    return {"ran": made, "distinct": len(expected), "found": found, "store": store, "expected": len(expected)}


def damaged_section(store: Store, expected: int, planted: int, rng: random.Random, scratch: Path) -> dict:
    found = Counter()
    garbage = [b"", b"\t", b"12", b"12\t", b"12\t[", b"x\t[1]", b"7\tbed@x.com\t[0]", b"3\t{}", b"3\t[1,2]",
               b"3\t[0,\"a\",\"b\",\"c\",-5,\"i\",\"u\",\"a\",\"c\"]", b"3\t[0,\"a\",\"b\",\"c\",99999999,\"i\",\"u\",\"a\",\"c\"]"]
    for n in range(planted):
        value = rng.choice(garbage) if rng.random() < 0.7 else bytes(rng.randrange(256) for _ in range(20))
        store.redis.hset(store.bucket_prefix + str(rng.randrange(BUCKETS)), f"\x00planted{n}", value)
    store.redis.incr(store.key("version"))
    try:
        info = store.export(scratch / "all_users.json")
    except Exception:
        found["crash"] += 1
        found.setdefault("first crash", traceback.format_exc(limit=3))
        return {"ran": planted, "found": found}
    found["wrong count"] = int(info["count"] != expected)
    found["undecodable miscounted"] = int(info["undecodable"] != planted)
    return {"ran": planted, "found": found}


def identity_section(sequences: int, rng: random.Random) -> dict:
    found = Counter()
    ran = 0
    for _ in range(sequences):
        ranges, taken, empties = Ranges(), set(), set()
        for _ in range(rng.randrange(1, 30)):
            start, count = rng.randrange(60), rng.choice((0, 1, 2, 5, 10))
            ran += 1
            covered = set(range(start, start + count))
            clash = bool(covered & taken) if count else start in empties
            try:
                ranges.add(start, start + count)
                refused = False
            except BadBatch:
                refused = True
            if refused != clash:
                found["wrong verdict"] += 1
            elif not refused:
                taken |= covered
                if not count:
                    empties.add(start)
    return {"ran": ran, "found": found}


def reader_section(files: int, rng: random.Random, scratch: Path) -> dict:
    try:
        from core.intake.ingest import SourceReader
    except ImportError as error:
        return {"ran": 0, "found": Counter(), "skipped": str(error)}
    found = Counter()
    for n in range(files):
        records = [user(rng, i) for i in range(rng.randrange(0, 40))]
        kind = rng.choice(("whole", "truncated", "flipped", "lines"))
        if kind == "lines":
            data = b"\n".join(orjson.dumps(r) for r in records) + b"\n"
            path = scratch / f"f{n}.jsonl"
        else:
            data = orjson.dumps(records, option=orjson.OPT_INDENT_2 if rng.random() < 0.5 else 0)
            path = scratch / f"f{n}.json"
        if kind == "truncated" and data:
            data = data[:rng.randrange(len(data))]
        elif kind == "flipped" and data:
            data = bytearray(data)
            for _ in range(rng.randrange(1, 5)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        path.write_bytes(data)
        reader = SourceReader(path)
        try:
            got = [record for _, record in reader]
        except Exception:
            found["crash"] += 1
            found.setdefault("first crash", f"{kind}: " + traceback.format_exc(limit=3))
            continue
        finally:
            path.unlink()
        if kind in ("whole", "lines") and got != records:
            found[f"{kind}: records differ"] += 1
        if kind == "truncated" and got != records[:len(got)]:
            found["truncated: not a prefix"] += 1
    return {"ran": files, "found": found}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000, help="users through the store (default 100,000)")
    parser.add_argument("--damaged", type=int, default=2_000, help="garbage values planted (default 2,000)")
    parser.add_argument("--ranges", type=int, default=10_000, help="batch range sequences (default 10,000)")
    parser.add_argument("--files", type=int, default=3_000, help="generated files through the reader (default 3,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", default=None, help="use this Redis (default: the machine's, else embedded)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    namespace = "fuzz" + uuid.uuid4().hex[:8]
    total = Counter()
    with tempfile.TemporaryDirectory(prefix="swordsec-fuzz-") as tmp:
        scratch = Path(tmp)
        bench = open_redis(args.redis_url, scratch / "redis")
        print(f"fuzz: seed {args.seed}, Redis {bench.version()} ({bench.kind}), namespace {namespace}")
        try:
            sections = []
            started = time.monotonic()
            result = store_section(bench.connection, namespace, args.users, rng, scratch)
            sections.append(("store", result, time.monotonic() - started))
            if "store" in result:
                started = time.monotonic()
                sections.append(("damaged", damaged_section(result["store"], result["expected"], args.damaged, rng,
                                                            scratch), time.monotonic() - started))
            started = time.monotonic()
            sections.append(("identity", identity_section(args.ranges, rng), time.monotonic() - started))
            started = time.monotonic()
            sections.append(("reader", reader_section(args.files, rng, scratch), time.monotonic() - started))
        finally:
            cleanup(bench.connection, namespace, [])
            bench.close()
    for name, result, seconds in sections:
        found = {k: v for k, v in result["found"].items() if v and k != "first crash"}
        extra = f", {result['distinct']} distinct users" if "distinct" in result else ""
        note = f" (skipped: {result['skipped']})" if result.get("skipped") else ""
        print(f"  {name:9s} {result['ran']:>9,} inputs{extra} in {seconds:6.1f} s: "
              f"{', '.join(f'{k} {v}' for k, v in found.items()) or 'nothing found'}{note}")
        if "first crash" in result["found"]:
            print("    first crash:\n      " + result["found"]["first crash"].strip().replace("\n", "\n      "))
        total.update(found)
        total["inputs"] += result["ran"]
    problems = sum(v for k, v in total.items() if k != "inputs")
    print(f"fuzz: {total['inputs']:,} inputs, {total['crash']} crashes, {problems} findings in all")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
