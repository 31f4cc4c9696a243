"""How this program's processes set Python's cyclic garbage collector.

A process of ours allocates hundreds of thousands of short-lived objects a second (users decoded, validated,
encoded; a screen's rendered segments) beside a large heap that lives as long as it does (a Textual screen and
its caches, gRPC, RQ, the string dictionary). Nearly all the short-lived ones die by reference counting; the
collector's defaults (a collection every 700 net allocations, a full one every hundred) still scan the long-lived
heap again and again. Measured in the console's process through a 1,000,000-user ingest (bench/console_load.py
with gc.callbacks): 2.2 s in collections, the full ones up to 113 ms each with the GIL held, the event loop and
the gRPC server standing still meanwhile. Collecting every 20,000 allocations, and freezing what exists once
the process has started (never scanned again), took that to 0.24 s and no full collection.
"""

from __future__ import annotations

import gc

YOUNG = 20_000  # net allocations between two collections of the young generation (the default is 700)


def tune() -> None:
    """At a process's start: collect less often."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)


def settle() -> None:
    """Once a process has started its parts: what exists now lives as long as it does; stop scanning it."""
    gc.collect()
    gc.freeze()
