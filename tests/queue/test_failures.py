"""A job that fails for good is one log line with its file and its reason (core/queue/failures.py)."""

from __future__ import annotations

from core.queue.failures import REMEMBER, FailureLog, reason_of
from core.queue.taskqueue import enqueue_batch, make_queue, make_worker


def test_reason_is_the_last_line_of_the_traceback():
    assert reason_of("Traceback (most recent call last):\n  File x\nRuntimeError: boom\n\n") == "RuntimeError: boom"
    assert reason_of("") == "no reason recorded"


def _doomed_batch(queue, namespace: str, source: str, seq: int):
    # The staged users are missing and the batch was never applied: the merge job fails on every retry.
    return enqueue_batch(queue, {"namespace": namespace, "report": "f" * 32, "attempt": "a", "span": "0:1",
                                 "seq": seq, "key": "email", "source": source, "blob": f"{namespace}:batch:gone",
                                 "count": 1})


def test_a_job_that_failed_for_good_is_told_once_with_its_file_and_reason(connection, namespace):
    queue = make_queue(connection, namespace)
    lines = []
    failures = FailureLog(queue, lambda level, text, **data: lines.append((level, text)))
    old = _doomed_batch(queue, namespace, "old.json", 1)
    make_worker(connection, namespace).work(burst=True)
    assert failures.check() == []  # failed before this start: one summary line, not one per job
    assert lines == [("warning", f"1 job(s) failed before this start; see Failed jobs in the console "
                                 f"or `rq info -S json {namespace}`")]

    job = _doomed_batch(queue, namespace, "2.json", 2)
    make_worker(connection, namespace).work(burst=True)
    assert failures.check() == [job.id]
    level, text = lines[-1]
    assert level == "error" and job.id in text and "merge 1 users of 2.json" in text
    assert "RuntimeError: the users of batch 0:1" in text and "missing" in text
    assert failures.check() == []  # told once

    queue.failed_job_registry.requeue(old.id)  # fixed by hand, failed again: told again
    assert failures.check() == []
    make_worker(connection, namespace).work(burst=True)
    assert failures.check() == [old.id] and "old.json" in lines[-1][1]


def test_what_it_remembers_is_bounded(connection, namespace):
    failures = FailureLog(make_queue(connection, namespace), lambda *a, **k: None)
    failures._remember([str(n) for n in range(REMEMBER + 50)])
    assert len(failures._told) == REMEMBER and "0" not in failures._told
