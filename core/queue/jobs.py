"""RQ job functions. Workers run these and nothing else (see core.queue.taskqueue.SafeJob).

Both are idempotent, so RQ's at-least-once delivery (retries, recovery of abandoned jobs) never
duplicates a user: the merge is keyed, sequence-guarded and applied atomically in one Lua script.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rq import get_current_job

from core.ops.trace import mark
from core.storage.store import Store

# Crash tests need a batch that is provably mid-flight: when this names a file that exists, a job
# writes "<pid>" to <file>.started and waits until the file is removed. Unset in production.
FAILPOINT = "SWORDSEC_FAILPOINT_GATE"


def _failpoint() -> None:
    gate = os.environ.get(FAILPOINT)
    if not gate or not Path(gate).exists():
        return
    Path(gate + ".started").write_text(str(os.getpid()))
    while Path(gate).exists():
        time.sleep(0.02)


# One Store per namespace for the life of the worker process: its string dictionary cache (core/storage/codec.py)
# then outlives a job. Made afresh per job, every job asked Redis for the indexes of all its strings again:
# about 9 ms of CPU per 1,000-user job, as much as the merge itself (bench/stages.py, "RQ").
_stores: dict[str, Store] = {}


def _store(namespace: str) -> Store:
    connection = get_current_job().connection
    store = _stores.get(namespace)
    if store is None or store.redis is not connection:
        store = _stores[namespace] = Store(connection, namespace)
    return store


def merge_batch(batch: dict) -> dict:
    """Merge one batch of validated users into the store.

    Args:
        batch (dict): ``namespace``, ``report`` (file report id), ``attempt`` (ingest attempt of the
            report), ``span`` (the batch's identity in its report: a file's record range "first:count",
            see UserBatch in protobufs/users.proto, or the batch's ordinal in an ad-hoc stream),
            ``seq`` (ingest sequence of the first user), ``key`` (merge key field) and ``blob`` (the
            Redis key where the server staged the normalised users; see Store.stage_batch).

    Returns:
        dict: Counts of ``new``, ``updated`` and ``duplicate`` users, and ``already_merged`` when a
        retry found the batch applied before.
    """
    _failpoint()
    return _merge_one(batch)


def _merge_one(batch: dict) -> dict:
    mark("merge", batch["blob"])
    result = _store(batch["namespace"]).merge_staged(batch["report"], batch["attempt"], batch["span"],
                                                     batch["seq"], batch["blob"], batch["key"])
    mark("merged", batch["blob"])
    return result


def merge_batches(batches: list[dict]) -> dict:
    """Merge several staged batches, each as merge_batch does (its own exactly-once checks, its own merge.lua
    call, so Redis is never held longer than by one batch). One job then pays RQ's bookkeeping for them all.

    A batch that fails does not stop the others: they are merged, then the first error is raised, so RQ
    retries the job and the batches merged before answer "already merged".

    Returns:
        dict: The summed counts, and ``batches`` (how many were merged now) and ``already_merged`` (how
        many a retry found applied before).
    """
    _failpoint()
    totals = {"new": 0, "updated": 0, "duplicate": 0, "batches": 0, "already_merged": 0}
    failure: Exception | None = None
    for batch in batches:
        try:
            counts = _merge_one(batch)
        except Exception as error:  # re-raised below, once the other batches are merged
            failure = failure or error
            continue
        for name in ("new", "updated", "duplicate"):
            totals[name] += counts[name]
        totals["already_merged" if counts["already_merged"] else "batches"] += 1
    if failure is not None:
        raise failure
    return totals


def drain_inbox(namespace: str) -> int:
    """Merge every user that unary calls left in the inbox.

    Args:
        namespace (str): Key namespace of the store.

    Returns:
        int: How many users were merged.
    """
    store = _store(namespace)
    total = 0
    while taken := store.drain_inbox():
        total += taken
    return total


# Jobs queued by a version from before core/ was grouped by role name their function by its old module:
# they still run after an upgrade, and nothing else is added to what a job may call.
FORMER_NAMES = {"core.jobs.merge_batch": merge_batch, "core.jobs.drain_inbox": drain_inbox}

ALLOWED = frozenset({f"{__name__}.merge_batch", f"{__name__}.merge_batches", f"{__name__}.drain_inbox",
                     *FORMER_NAMES})
