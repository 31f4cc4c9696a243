"""RQ jobs in the seed's shape: one job per user, and one last job that writes all_users.json.

Imported by name (`seed_jobs.save_user`) in the forked work-horses, so it must stay importable from
bench/ alone and import nothing of core/.
"""

from __future__ import annotations

import json
import os
import tempfile

from rq import get_current_job


def save_user(namespace: str, user: dict) -> bool:
    """Store one user under its email, the unit of work the seed gave each job."""
    connection = get_current_job().connection
    connection.hset(f"{namespace}:users", user["email"].strip().lower(), json.dumps(user))
    return True


def write_all_users(namespace: str, path: str) -> int:
    """Write every stored user as one JSON array, atomically, and return how many."""
    connection = get_current_job().connection
    users = [json.loads(v) for v in connection.hgetall(f"{namespace}:users").values()]
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        json.dump(users, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return len(users)
