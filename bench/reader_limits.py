"""Hostile files through the reader (core.intake.ingest.SourceReader): seconds and peak RSS of each, one process per case.

    python bench/reader_limits.py [--module path/to/ingest.py] [--cases deep,string,tail,users] [--users 300000]

--module measures another copy of the reader (the code before a change, say) on the same files.
Cases: deep (40 KB, 20,000 levels behind a string ending in a backslash), string (one 40 MB string),
tail (100 users then a 300-deep tail), users (a generated file of --users users, bench/datagen.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make(case: str, folder: Path, users: int) -> Path:
    path = folder / f"{case}.json"
    if path.exists():
        return path
    if case == "deep":
        path.write_bytes(b'[{"id": 1, "email": "a@b.c", "agent": "C:\\\\"},\n' + b"[" * 20_000 + b"]" * 20_000 + b"]")
    elif case == "string":
        path.write_bytes(b'[{"id": 1, "email": "a@b.c", "agent": "' + b"a" * (40 * 1024 * 1024) + b'"}]')
    elif case == "tail":
        sys.path.insert(0, str(ROOT))
        import orjson

        from bench.datagen import users as generate

        body = b",\n".join(orjson.dumps(u) for u in generate(100))
        path.write_bytes(b"[" + body + b",\n" + b"[" * 300 + b"]" * 300 + b"]")
    elif case == "users":
        sys.path.insert(0, str(ROOT))
        from bench.datagen import users as generate
        from bench.datagen import write_array

        write_array(path, generate(users))
    return path


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: ru_maxrss is kept across exec, so a child started by a
    big parent would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(module: str, path: str, no_cap: bool = False) -> None:
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("reader_under_test", module)
    ingest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ingest)
    if no_cap and hasattr(ingest, "MAX_TOKEN_BYTES"):
        ingest.MAX_TOKEN_BYTES = 1 << 40  # to time the scanner on the whole string
    started, cpu = time.perf_counter(), time.process_time()
    reader = ingest.SourceReader(Path(path))
    records = sum(1 for _ in reader)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    rss = peak_rss_mb()
    print(json.dumps({"records": records, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "peak_rss_mb": round(rss, 1),
                      "damage": reader.damage}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", default=str(ROOT / "core" / "intake" / "ingest.py"))
    parser.add_argument("--cases", default="deep,string,tail,users")
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "reader-limits")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--no-cap", action="store_true", help="lift the string limit (time a whole 40 MB string)")
    parser.add_argument("--run-one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        return run_one(*args.run_one, no_cap=args.no_cap)
    args.folder.mkdir(parents=True, exist_ok=True)
    for case in args.cases.split(","):
        path = make(case, args.folder, args.users)
        try:
            command = [sys.executable, __file__, "--run-one", args.module, str(path)] + ["--no-cap"] * args.no_cap
            out = subprocess.run(command, capture_output=True,
                                 text=True, timeout=args.timeout)
            result = out.stdout.strip() or f"failed: {out.stderr.strip().splitlines()[-1:]}"
        except subprocess.TimeoutExpired:
            result = f"gave up after {args.timeout:.0f} s"
        print(f"{case:7} {path.stat().st_size:>11,} bytes  {result}", flush=True)


if __name__ == "__main__":
    main()
