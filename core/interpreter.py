"""How this program's processes set the Python interpreter: its cyclic garbage collector and how long a thread
keeps the GIL before another may take it.

The collector. A process of ours allocates hundreds of thousands of short-lived objects a second (users decoded,
validated, encoded; a screen's rendered segments) beside a large heap that lives as long as it does (a Textual
screen and its caches, gRPC, RQ, the string dictionary). Nearly all the short-lived ones die by reference counting;
the collector's defaults (a collection every 700 net allocations, a full one every hundred) still scan the
long-lived heap again and again. Measured in the console's process through a 1,000,000-user ingest
(bench/console_load.py with gc.callbacks): 2.2 s in collections, the full ones up to 113 ms each with the GIL held,
the event loop and the gRPC server standing still meanwhile. Collecting every 20,000 allocations, and freezing
what exists once the process has started (never scanned again), took that to 0.24 s and no full collection.

The switch interval. The console's process runs a dozen threads (reader, gRPC server and its pollers, staging,
exporter, the UI's event loop). At Python's default of 5 ms the GIL changes hands so often that a key press
waited behind a convoy of them: `?` answered in 134 ms median, 217 ms p95 during a 1,000,000-user ingest; at
20 ms, 69-114 ms median and 137-138 ms p95 in two runs of three rounds, with the ingest no slower (bench/README.md).

The console's and `--no-ui`'s process use these; the worker processes keep Python's defaults (with these in them,
a test ingesting through the seed's client stream under CPU hogs stalled in about one run of three, cause unknown).
"""

from __future__ import annotations

import gc
import sys

YOUNG = 20_000  # net allocations between two collections of the young generation (the default is 700)
SWITCH_INTERVAL = 0.02  # seconds a thread may hold the GIL while others wait (the default is 0.005)


def tune() -> None:
    """At a process's start: collect less often, and hand the GIL over less often."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
    sys.setswitchinterval(SWITCH_INTERVAL)


def settle() -> None:
    """Once a process has started its parts: what exists now lives as long as it does; stop scanning it."""
    gc.collect()
    gc.freeze()
