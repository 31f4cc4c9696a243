"""The console under load (issue 15): during a large ingest, how often the local console's screen is redrawn,
how fast it answers a key, and what it costs the ingest against the same pipeline without it (`--no-ui`),
in the same run (rounds alternate without / with, ABBA).

Both sides are the pipeline of `swordsec-console` in this process (core.runtime.Runtime: gRPC server, watcher,
exporter; workers as processes), as the program runs it: alone, as `--no-ui` does, or under the real Textual
app, headless under Pilot. "Screen refreshes" are the screen updates the app hands to its driver (Textual's
App._display; headless, the final write to the terminal is skipped); "data refreshes" are status snapshots
drawn. A key press is `?` (the help screen opens), timed from Pilot's press to the first screen update that
shows it, then `escape` back to the dashboard; one every --key-every seconds of the ingest.

    .venv/bin/python bench/console_load.py [--users 1000000] [--rounds 2] [--workers 2] [--refresh 1.0]
                                            [--key-every 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchredis import cleanup, open_redis  # noqa: E402
from datagen import users, write_array  # noqa: E402

PER_FILE = 10_000
STALL_PROBE = 0.01  # the event loop is asked to wake every 10 ms; how late it wakes is how long it was busy
GOALS = "goals: >= 4 screen refreshes/s, a key answered in < 200 ms, ingest cost <= 10%"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="users per ingest (default 1,000,000)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="pairs of ingests without and with the console, in ABBA order (default 2)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--refresh", type=float, default=None,
                        help="the console's status refresh in seconds (default: the console's own)")
    parser.add_argument("--key-every", type=float, default=5.0, metavar="SECONDS",
                        help="press ? then escape this often during the ingest (default 5): each press redraws "
                             "the whole screen twice, part of what the console costs the ingest")
    parser.add_argument("--redis-url", help="Redis to use (default: the machine's, else an embedded one)")
    return parser.parse_args(argv)


def generate(folder: Path, total: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for index, offset in enumerate(range(0, total, PER_FILE)):
        path = folder / f"{index}.json"
        write_array(path, users(min(PER_FILE, total - offset), start=offset))
        paths.append(path)
    return paths


def settings_for(bench, work: Path, namespace: str, workers: int):
    from core.config import Settings

    return Settings.build(dict(redis_url=bench.url, namespace=namespace, watch=work / "drop", data_dir=work / "data",
                               grpc_listen="127.0.0.1:0", workers=workers, quiet_period=0.3), environ={})


def drop(files: list[Path], folder: Path) -> float:
    began = time.perf_counter()
    for path in files:  # hard links: the same bytes every round, written once
        os.link(path, folder / path.name)
    return began


async def wait_merged(runtime, total: int, began: float, timeout: float = 1800) -> float:
    # The count in a thread: a Redis call on the event loop would add to the stalls measured on it.
    while runtime.store is None or await asyncio.to_thread(runtime.store.count) < total:
        if time.perf_counter() - began > timeout:
            raise TimeoutError(f"{total:,} users not merged in {timeout:g} s")
        await asyncio.sleep(0.1)
    return time.perf_counter() - began


async def without_console(settings, files: list[Path], total: int) -> float:
    from core.runtime import Runtime

    runtime = Runtime(settings).start()
    settle()  # as run_headless does
    try:
        return await wait_merged(runtime, total, drop(files, settings.watch))
    finally:
        runtime.stop()


async def with_console(settings, files: list[Path], total: int, refresh: float | None, key_every: float) -> dict:
    from textual import events

    from console.app import make_app
    from console.screens.dashboard import DashboardScreen
    from console.screens.help import HelpScreen
    from core.runtime import Runtime

    app = make_app(Runtime(settings), on_ready=settle, **({"refresh": refresh} if refresh else {}))
    frames: list[float] = []
    drawn: list[float] = []
    display = app._display

    def counted_display(screen, renderable):
        if renderable is not None:
            frames.append(time.perf_counter())
        return display(screen, renderable)

    app._display = counted_display
    answers: dict[str, list[float]] = {"?": [], "escape": []}
    stalls: list[float] = []

    async def answer(key: str, character: str | None, screen_type) -> float:
        # Sent as the terminal driver sends a key (Pilot's press also waits for the process to go idle, which
        # during an ingest in this process it never does, adding up to a second of its own).
        shown = len(frames)
        began = time.perf_counter()
        event = events.Key(key, character)
        event.set_sender(app)
        app._driver.send_message(event)
        while not (isinstance(app.screen, screen_type) and len(frames) > shown):
            await asyncio.sleep(0.002)
        return time.perf_counter() - began

    async with app.run_test(size=(160, 48)) as pilot:
        while app.snapshot is None:
            await pilot.pause(0.05)
        dashboard = app._dashboard()
        show = dashboard.show

        def counted_show(snapshot):
            drawn.append(time.perf_counter())
            return show(snapshot)

        dashboard.show = counted_show
        began = drop(files, settings.watch)
        merged = asyncio.ensure_future(wait_merged(app.runtime, total, began))

        async def probe_stalls():
            while not merged.done():
                asked = time.perf_counter()
                await asyncio.sleep(STALL_PROBE)
                stalls.append(time.perf_counter() - asked - STALL_PROBE)

        probe = asyncio.ensure_future(probe_stalls())
        while not merged.done():
            await asyncio.wait({merged}, timeout=key_every)
            if merged.done():
                break
            answers["?"].append(await answer("question_mark", "?", HelpScreen))
            answers["escape"].append(await answer("escape", "\x1b", DashboardScreen))
        seconds = merged.result()
        await probe
        app.exit()
    window = [t for t in frames if began <= t <= began + seconds]
    data = [t for t in drawn if began <= t <= began + seconds]
    return {"seconds": seconds, "frames": len(window) / seconds, "data": len(data) / seconds,
            "gap": max((b - a for a, b in zip(window, window[1:])), default=float("nan")), "answers": answers,
            "stalls": stalls}


async def measure(args, bench, files: list[Path], work: Path) -> dict:
    results: dict = {"without": [], "with": []}
    for index in range(args.rounds * 2):
        # ABBA: without-with, then with-without, so the machine's drift favours neither side.
        console = (index % 4) in (1, 2)
        namespace = f"benchload-{uuid.uuid4().hex[:8]}"
        round_dir = work / f"round{index}"
        (round_dir / "drop").mkdir(parents=True)
        settings = settings_for(bench, round_dir, namespace, args.workers)
        try:
            if console:
                results["with"].append(await with_console(settings, files, args.users, args.refresh, args.key_every))
            else:
                results["without"].append(await without_console(settings, files, args.users))
        finally:
            cleanup(bench.connection, namespace, [namespace])
            shutil.rmtree(round_dir, ignore_errors=True)
        last = results["with"][-1]["seconds"] if console else results["without"][-1]
        print(f"round {index + 1}: {'with the console' if console else 'without (--no-ui)'}: {last:.2f} s",
              flush=True)
    return results


def distribution(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (f"median {statistics.median(ordered) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms")


def interpreter():
    """The program's interpreter settings (core.interpreter), where the build has them: the bench does as it does."""
    try:
        from core import interpreter
    except ImportError:
        return None
    return interpreter


def settle() -> None:
    if (policy := interpreter()) is not None:
        policy.settle()


def main(argv=None) -> int:
    args = parse_args(argv)
    if (policy := interpreter()) is not None:
        policy.tune()  # as console.cli.main does
    work = Path(tempfile.mkdtemp(prefix="bench-console-load-"))
    bench = open_redis(args.redis_url, work / "redis")
    try:
        files = generate(work / "files", args.users)
        results = asyncio.run(measure(args, bench, files, work))
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    from console.app import REFRESH

    withs = results["with"]
    without = statistics.median(results["without"])
    with_console = statistics.median(r["seconds"] for r in withs)
    print(f"console under a {args.users:,}-user ingest ({args.workers} workers, {bench.kind} Redis, status refresh "
          f"{args.refresh or REFRESH:g} s), median of {args.rounds} each side; {GOALS}")
    print(f"screen refreshes/s: {statistics.median(r['frames'] for r in withs):.1f} (longest gap "
          f"{max(r['gap'] for r in withs) * 1000:.0f} ms); data refreshes/s: "
          f"{statistics.median(r['data'] for r in withs):.2f}")
    for key in ("?", "escape"):
        if times := [a for r in withs for a in r["answers"][key]]:
            print(f"key {key!r} answered (first screen update showing it; {len(times)} presses): "
                  f"{distribution(times)}")
    print(f"event-loop stalls (a {STALL_PROBE * 1000:g} ms timer's lateness): "
          f"{distribution([s for r in withs for s in r['stalls']])}")
    print(f"ingest: without the console {without:.2f} s ({args.users / without:,.0f} users/s), with it "
          f"{with_console:.2f} s; ratio {with_console / without:.3f} ({(with_console / without - 1) * 100:+.1f}%)")
    print("rounds without:", " ".join(f"{s:.2f}" for s in results["without"]),
          "| with:", " ".join(f"{r['seconds']:.2f}" for r in withs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
