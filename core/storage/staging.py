"""Staged batches live as long as their job: a blob whose job is gone is swept.

The server stages a batch's users in Redis (Store.stage_batch) and enqueues a job that names them;
the merge that applies them deletes them. A job that is deleted (by an operator, or by RQ when a
failed job's time in the failed registry ends) never runs again, and its users would stay for good.
A failed job keeps its users while it exists, so requeueing it from the console still works.
"""

from __future__ import annotations

from rq.job import Job

from core.storage.store import Store

# Longer than any stage -> enqueue gap (microseconds; a crash in between leaves a blob with no job).
STAGED_GRACE = 60.0


def sweep_staged(store: Store, grace: float = STAGED_GRACE) -> int:
    """Delete staged batches older than `grace` whose job no longer exists (or never did); how many."""
    gone = [blob for blob, job_id in store.staged_older_than(grace)
            if job_id is None or not Job.exists(job_id, connection=store.redis)]
    store.drop_staged(gone)
    return len(gone)
