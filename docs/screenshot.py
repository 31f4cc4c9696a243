"""Redraw docs/dashboard.svg: the real console (embedded Redis, gRPC, 2 workers) during a 100,000-user ingest.

    .venv/bin/python docs/screenshot.py [--users 100000] [--at 40000]

Generates the users into files of 1,000 in a temporary drop folder, starts the app under Textual's
Pilot at 140x44, and saves the screen once the merged count passes --at.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import datagen  # noqa: E402

from console.app import make_app  # noqa: E402
from core.config import Settings  # noqa: E402
from core.runtime import Runtime  # noqa: E402


async def shoot(users: int, at: int, out: Path) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="swordsec-shot-"))
    settings = Settings.build(dict(watch=scratch / "drop", data_dir=scratch / "data", grpc_listen="127.0.0.1:0",
                                   workers=2), environ={})
    app = make_app(Runtime(settings))
    async with app.run_test(size=(140, 44)) as pilot:
        while app.snapshot is None:
            await pilot.pause(0.1)
        await asyncio.to_thread(datagen.write_files, scratch / "drop", users)
        deadline = time.monotonic() + 300
        while (app.snapshot.users if app.snapshot else 0) < at:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {app.snapshot.users} users merged after 300 s")
            await pilot.pause(0.05)
        app.save_screenshot(filename=out.name, path=str(out.parent))
        await pilot.press("q")
    print(f"saved {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--at", type=int, default=40_000, help="take the picture once this many users are merged")
    args = parser.parse_args()
    asyncio.run(shoot(args.users, args.at, ROOT / "docs" / "dashboard.svg"))


if __name__ == "__main__":
    main()
