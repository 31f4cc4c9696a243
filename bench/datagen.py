"""Users in the shape of the challenge files (tests/data/challenge/*.json), generated deterministically.

Each file is a JSON array, one record a line, ids restarting at 1 in every file (as in the real
drop folder) and emails unique across all files so every user survives the merge.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import orjson

FIRST = ("Andrus", "Ingar", "Merrill", "Dulcy", "Ber", "Konstance", "Ruthie", "Claudell", "Tabbitha", "Osbourne",
         "Ailina", "Rickert", "Jobye", "Hewie", "Ardelis", "Giovanni")
LAST = ("Gerber", "Ashment", "Pashby", "Kondratenya", "Stoffer", "MacElane", "Beadle", "Treby", "Wyldish",
        "Cornhill", "Pattullo", "Ellingsworth")
DOMAINS = ("blogger.com", "ning.com", "wikia.com", "usatoday.com", "nih.gov", "stanford.edu", "tinyurl.com")
COUNTRIES = ("Indonesia", "Sweden", "China", "Brazil", "Portugal", "France", "Philippines", "Russia", "Peru")
GENDERS = ("Male", "Female", "Non-binary", "Genderfluid", "Agender")
AGENTS = (
    "Mozilla/5.0 (Macintosh; U; Intel Mac OS X 10_5_6; en-gb) AppleWebKit/528.10+ (KHTML, like Gecko) "
    "Version/4.0dp1 Safari/526.11.2",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/535.1 (KHTML, like Gecko) Chrome/13.0.782.20 Safari/535.1",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/41.0.2228.0 "
    "Safari/537.36",
    "Mozilla/5.0 (compatible; MSIE 10.0; Windows NT 6.1; Trident/6.0)",
    "Opera/9.80 (X11; Linux i686; U; ru) Presto/2.8.131 Version/11.11",
)

# The challenge files hold 489 distinct agents in 9,000 users; a pool of 2,000 variants keeps the store's
# string dictionary (core/storage/codec.py) from looking better here than on real data.
AGENT_POOL = tuple(
    agent.replace("5.0", f"5.{n % 10}", 1) + f" Build/{n:04d}" for n in range(400) for agent in AGENTS
)


def users(count: int, start: int = 0, seed: int = 7) -> Iterator[dict]:
    """`count` users numbered from `start`; `start` keeps emails unique across files and runs."""
    rng = random.Random(seed + start)
    for n in range(start, start + count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        handle = f"{first[0].lower()}{last.lower()}{n}"
        yield {
            "id": n - start + 1,
            "first_name": first,
            "last_name": last,
            "email": f"{handle}@{rng.choice(DOMAINS)}",
            "gender": rng.choice(GENDERS),
            "ip_address": ".".join(str(rng.randrange(1, 255)) for _ in range(4)),
            "user_name": handle,
            "agent": rng.choice(AGENT_POOL),
            "country": rng.choice(COUNTRIES),
        }


def write_array(path: Path, records: Iterator[dict], chunk: int = 10_000) -> int:
    """Write records as a JSON array, one record a line, in chunks so a million users stay off the heap."""
    written = 0
    with open(path, "wb") as out:
        out.write(b"[")
        lines: list[bytes] = []
        for record in records:
            lines.append(orjson.dumps(record))
            if len(lines) == chunk:
                out.write((b"" if written == 0 else b",\n") + b",\n".join(lines))
                written += len(lines)
                lines = []
        if lines:
            out.write((b"" if written == 0 else b",\n") + b",\n".join(lines))
            written += len(lines)
        out.write(b"]\n")
    return written


def write_files(folder: Path, total: int, per_file: int = 1000, start: int = 0) -> list[Path]:
    """Split `total` users over files of `per_file` users (named 1.json, 2.json, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    offset = 0
    while offset < total:
        count = min(per_file, total - offset)
        path = folder / f"{len(paths) + 1}.json"
        write_array(path, users(count, start + offset))
        paths.append(path)
        offset += count
    return paths
