"""The scale curve: one running `swordsec-console --no-ui` filled step by step to 100k, 1M and 10M users.

Run from the repository root with the project's venv:

    .venv/bin/python bench/scale.py                           # steps 100000,1000000,10000000
    .venv/bin/python bench/scale.py --steps 100000,1000000    # the quick curve (~2 min)

Generated users (bench/datagen.py, unique emails) in files of --file-users are written once into --data
(reused by later runs: 10M users are ~3.3 GB) and hard-linked into the watched folder step by step. The
console runs with its embedded Redis, so every process of the product is in the sampled tree. At each
step, once the store holds the step's users, it prints:

- ingest: users/s over the whole step, and over its last fifth (the rate *at* that store size);
- export lag: from the last merge of the step until all_users.json holds every user;
- full export: seconds to write every stored user into a fresh file (the product's code, run by this script);
- drop: a 1,000-user file renamed into the folder until all_users.json holds its users (3 drops, each
  time to the export record; the last one also checked in the file itself);
- memory: Redis's used_memory and the peak RSS of every process during the step;
- restart: with --restart, the console is stopped after the last step and started again on the same data:
  seconds until its Redis answers, and until a 1,000-user file dropped at once is in all_users.json (a
  console that must write the file whole first takes as long as a whole export);
- export cost: with --export-cost N, two fresh consoles ingest the same first N users, one watching (its
  exporter rewrites all_users.json all along) and one with --once (no export until the end): the ratio of
  their ingest rates (first merged user to last) is what exporting during a long ingest costs it.

Figures from a shared 2-core machine move by tens of percent: compare ratios inside one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine
import orjson
import redis
from rss import TreeSampler

import datagen

PROBE_START = 900_000_000  # probe users' numbers: never collide with the step files' users
NAMESPACE = "swordsec"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="100000,1000000,10000000", help="store sizes, comma-separated")
    parser.add_argument("--file-users", type=int, default=100_000, help="users per generated file (default 100000)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "swordsec-scale-data",
                        help="where generated files are kept between runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--drops", type=int, default=3, help="1,000-user drops per step (default 3)")
    parser.add_argument("--export-cost", type=int, default=0, metavar="N",
                        help="also compare the ingest of N users with and without exports meanwhile")
    parser.add_argument("--restart", action="store_true", help="after the last step, restart the console and time a drop")
    parser.add_argument("--generate-only", action="store_true", help="write the data files and stop")
    parser.add_argument("--keep", action="store_true", help="keep the run folder and print its path")
    return parser.parse_args(argv)


# -- data ------------------------------------------------------------------------------------------
def data_files(folder: Path, total: int, per_file: int) -> list[Path]:
    """Files of `per_file` users covering `total` users, written when missing (a partial file is redone)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(-(-total // per_file)):
        path = folder / f"users-{per_file}-{n:05d}.json"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            datagen.write_array(tmp, datagen.users(per_file, start=n * per_file))
            os.replace(tmp, path)
        paths.append(path)
    return paths


def probe_file(folder: Path, number: int) -> Path:
    path = folder / f"probe-{number:03d}.json"
    if not path.exists():
        datagen.write_array(path, datagen.users(1000, start=PROBE_START + number * 1000))
    return path


# -- the running console ---------------------------------------------------------------------------
class Console:
    def __init__(self, root: Path, workers: int, flags: tuple = (), feed: list[Path] = ()):
        self.root = root
        self.drop = root / "drop"
        self.data = root / "data"
        self.output = self.data / "all_users.json"
        self.drop.mkdir(parents=True, exist_ok=True)  # exists when the console is started again on the same data
        self.feed(feed)
        script = Path(sys.executable).with_name("swordsec-console")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "console.cli"]
        command += ["--no-ui", "--workers", str(workers), "--grpc-listen", "127.0.0.1:0", "--watch", str(self.drop),
                    "--data-dir", str(self.data), "--quiet-period", "0.2", *flags]
        self.log = open(root / "console.log", "ab")
        self.process = subprocess.Popen(command, cwd=root, stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.sampler = TreeSampler(self.process.pid, 0.25).start()
        self.redis = self._connect()

    def _connect(self) -> redis.Redis:
        deadline = time.monotonic() + 60
        folder = self.data / "redis"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the console exited with {self.process.returncode}: see {self.root}/console.log")
            try:
                client = redis.Redis(unix_socket_path=(folder / "socket").read_text().strip(),
                                     password=(folder / "password").read_text().strip())
                if client.exists(f"{NAMESPACE}:merge-key"):
                    return client
            except (OSError, redis.RedisError):
                pass
            time.sleep(0.2)
        raise SystemExit("the console's Redis did not come up within 60 s")

    def merged(self) -> int:
        return int(self.redis.get(f"{NAMESPACE}:users:count") or 0)

    def exported(self) -> tuple[int, int]:
        """(users, store version) of the last all_users.json write."""
        raw = self.redis.hmget(f"{NAMESPACE}:export", "count", "version")
        return int(raw[0] or -1), int(raw[1] or -1)

    def version(self) -> int:
        return int(self.redis.get(f"{NAMESPACE}:version") or 0)

    def feed(self, paths: list[Path]) -> None:
        for path in paths:
            os.link(path, self.drop / path.name)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.sampler.stop()
        self.log.close()


def wait(condition, timeout: float, what: str, period: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(period)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def ingest(console: Console, paths: list[Path], target: int, timeout: float) -> dict:
    """Feed files until the store holds `target` users; the rate over the whole step and its last fifth."""
    start_count, started = console.merged(), time.monotonic()
    mark = start_count + (target - start_count) * 4 // 5
    console.feed(paths)
    marked_at = None
    deadline = started + timeout
    while (count := console.merged()) < target:
        if marked_at is None and count >= mark:
            marked_at, mark = time.monotonic(), count
        if time.monotonic() > deadline or console.process.poll() is not None:
            raise SystemExit(f"stuck at {count:,} of {target:,} users: see {console.root}/console.log")
        time.sleep(0.05)
    ended = time.monotonic()
    tail = (target - mark) / (ended - marked_at) if marked_at and ended > marked_at else float("nan")
    return {"seconds": ended - started, "rate": (target - start_count) / (ended - started), "tail_rate": tail,
            "ended": ended}


def drop_latency(console: Console, data: Path, number: int, expected: int) -> float:
    path = probe_file(data, number)
    staged = console.drop / ("." + path.name)  # hidden: the watcher ignores it until the rename
    shutil.copyfile(path, staged)
    started = time.monotonic()
    os.rename(staged, console.drop / path.name)
    wait(lambda: console.exported()[0] >= expected, 600, f"the drop of {path.name} in all_users.json")
    return time.monotonic() - started


def last_user_in_file(console: Console, email: str) -> bool:
    """Whether all_users.json (read by a reader that opens it now) is valid around its end and holds `email`."""
    with open(console.output, "rb") as handle:
        return email.encode() in handle.read()


def full_export(console: Console) -> float:
    """Seconds to write every user of the store into a fresh file, from this process, with the product's code."""
    from core.storage.store import Store, write_json_array

    target = console.root / "full-export.json"
    started = time.monotonic()
    write_json_array(target, Store(console.redis, NAMESPACE).iter_users())
    seconds = time.monotonic() - started
    target.unlink()
    return seconds


def step(console: Console, args, files: list[Path], target: int, probes: int) -> dict:
    console.sampler.peaks.clear()
    fed = ingest(console, files, target, timeout=3600)
    wait(lambda: console.exported()[0] >= target, 900, "all_users.json to hold the step's users", 0.1)
    lag = time.monotonic() - fed["ended"]
    full = full_export(console)
    drops = []
    for _ in range(args.drops):
        expected = console.merged() + 1000
        drops.append(drop_latency(console, args.data, probes, expected))
        probes += 1
    info = console.redis.info("memory")
    peaks = {}
    for peak in console.sampler.peaks.values():
        peaks[peak.role] = max(peaks.get(peak.role, 0), peak.rss)
    return {**fed, "users": console.merged(), "lag": lag, "full_export": full, "drops": drops,
            "used_memory": info["used_memory"], "redis_rss": info["used_memory_rss"], "peaks": peaks,
            "size": console.output.stat().st_size, "probes": probes}


def restart(console: Console, args, probes: int) -> tuple[Console, dict]:
    """Stop the console, start it again on the same data, and drop a 1,000-user file as soon as it is up."""
    console.stop()
    started = time.monotonic()
    again = Console(console.root, args.workers)
    up = time.monotonic() - started
    expected = again.merged() + 1000
    return again, {"up": up, "drop": drop_latency(again, args.data, probes, expected)}


def export_cost(args, files: list[Path], users: int) -> tuple[float, float]:
    """Users/s of the same ingest while watching (exports all along) and with --once (one export at the end)."""
    rates = []
    for flags in ((), ("--once",)):
        root = Path(tempfile.mkdtemp(prefix="swordsec-scale-cost-"))
        console = Console(root, args.workers, flags, files[:-(-users // args.file_users)])
        try:
            wait(lambda: console.merged() > 0, 600, "the first merged user", 0.005)
            started = time.monotonic()
            wait(lambda: console.merged() >= users, 3600, f"{users:,} merged users", 0.02)
            rates.append((users - 0) / (time.monotonic() - started))
        finally:
            if flags:
                console.process.wait(timeout=900)
            console.stop()
            shutil.rmtree(root, ignore_errors=True)
    return rates[0], rates[1]


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the console on the way out
    steps = [int(s) for s in args.steps.split(",")]
    print(f"data: {args.data} (generating what is missing)", flush=True)
    started = time.monotonic()
    files = data_files(args.data, max(steps[-1], args.export_cost), args.file_users)
    for n in range(len(steps) * args.drops + 1):
        probe_file(args.data, n)
    print(f"data ready in {time.monotonic() - started:.0f} s", flush=True)
    if args.generate_only:
        return 0
    for line in machine.describe("embedded redis-server"):
        print(line)
    root = Path(tempfile.mkdtemp(prefix="swordsec-scale-"))
    console = Console(root, args.workers)
    rows, done, probes = [], 0, 0
    try:
        for target in steps:
            count = -(-target // args.file_users) - done
            # The probes of earlier steps are in the store too: the step's target counts them.
            row = step(console, args, files[done:done + count], target + probes * 1000, probes)
            probes, done = row["probes"], done + count
            rows.append((target, row))
            print(f"{target:>11,} users: " + orjson.dumps({k: v for k, v in row.items() if k != "ended"}).decode(),
                  flush=True)
        if args.restart:
            console, again = restart(console, args, probes)
            print(f"restarted at {console.merged():,} users: up (Redis answering) after {again['up']:.1f} s, a 1,000-user "
                  f"drop then in all_users.json after {again['drop']:.2f} s", flush=True)
    finally:
        console.stop()
        if args.keep:
            print(f"run folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    if args.export_cost:
        watching, once = export_cost(args, files, args.export_cost)
        print(f"export cost, {args.export_cost:,} users: {watching:,.0f} users/s with exports meanwhile, {once:,.0f} "
              f"with none (--once): {1 - watching / once:.0%} slower")
    return 0


def print_table(rows) -> None:
    mb = 2 ** 20
    print()
    print("| stored users | ingest users/s (step / last fifth) | export lag after last merge | full export "
          "| 1,000-user drop in all_users.json | redis used / RSS | peak RSS console / workers |")
    print("|---|---|---|---|---|---|---|")
    for target, r in rows:
        workers = max((v for k, v in r["peaks"].items() if k.startswith("worker")), default=0)
        drops = " / ".join(f"{d:.2f}" for d in r["drops"])
        print(f"| {target:,} | {r['rate']:,.0f} / {r['tail_rate']:,.0f} | {r['lag']:.1f} s | {r['full_export']:.1f} s "
              f"({r['size'] / 1e9:.2f} GB) | {drops} s | {r['used_memory'] / mb:,.0f} / "
              f"{r['peaks'].get('redis-server', 0) / mb:,.0f} MB | {r['peaks'].get('console', 0) / mb:,.0f} / "
              f"{workers / mb:,.0f} MB |")
    base = rows[0][1]["tail_rate"]
    for target, r in rows[1:]:
        print(f"ingest rate at {target:,} / at {rows[0][0]:,}: {r['tail_rate'] / base:.2f}")


if __name__ == "__main__":
    sys.exit(main())
