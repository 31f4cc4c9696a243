"""Back-pressure bounds the bytes staged in Redis, not only the number of queued jobs.

Before, 200 queued jobs could each hold a 16 MB message's users (~16 GB of Redis); now a stream is held once
the queued jobs' staged users reach SWORDSEC_MAX_STAGED_BYTES, whatever the job count.
"""

from __future__ import annotations

from core.service.backpressure import StagedBytes
from tests.conftest import make_users, stream_in_background, wait_for, wait_pipeline

BOUND = 200_000  # bytes; one 500-user batch stages about 110 KB


def staged(runtime) -> int:
    store = runtime.store
    return sum(store.redis.strlen(k) for k in store.redis.scan_iter(match=store.key("batch", "*"), count=1000))


def test_streams_are_held_at_the_staged_bytes_bound(runtime_factory):
    # A job-count bound far away (1,000 jobs), so only the byte bound can hold the stream.
    runtime = runtime_factory(watch=False, workers=0, max_backlog=1000, max_staged_bytes=BOUND, batch_size=500)
    batches = [make_users(500, f"b{n}-") for n in range(12)]
    sender, result = stream_in_background(runtime, batches, "bytes")
    # No worker: the stream stops once the bound is reached, with most of its batches unsent.
    wait_for(lambda: staged(runtime) >= BOUND, 30, message="the staged bytes to reach the bound")
    # Held, not refused, while nothing merges. The bound is checked before a batch is staged, from a reading
    # at most 0.1 s old, so it can be passed by a batch or two, never by the rest of the stream.
    for _ in range(10):
        sender.join(0.2)
        assert staged(runtime) < BOUND + 2 * 120_000 and len(runtime.queue) <= 4
    assert sender.is_alive()
    assert StagedBytes(runtime.queue, BOUND).total() == staged(runtime)
    runtime.supervisor.scale(1)
    sender.join(120)
    assert result["reply"].accepted == 500 * len(batches)
    wait_pipeline(runtime, lambda: runtime.store.count() == 500 * len(batches), 120, message="every batch merged")
    assert staged(runtime) == 0
