"""The doctor: what is wrong right now, said in words, with what to do about it.

Rules read a status snapshot (core.ops.status) and the settings; they never touch Redis themselves,
so diagnosing is free and the same words appear in the console and in a test.
"""

from __future__ import annotations

from dataclasses import dataclass

GROWING_BACKLOG = 20


@dataclass(frozen=True)
class Problem:
    level: str  # "error" stops the pipeline, "warning" slows or loses sight of something
    what: str
    fix: str


def diagnose(snap, settings) -> list[Problem]:
    problems: list[Problem] = []
    redis = snap.redis
    if not redis.connected:
        fix = ("the console starts its redis-server again from its AOF; if that keeps failing, read "
               "<data-dir>/redis/redis.log" if redis.embedded
               else "start Redis there, or point --redis-url at one that runs; the console retries by itself")
        problems.append(Problem("error", f"Redis at {redis.url} is unreachable ({redis.error or 'no answer'})", fix))
        return problems
    if redis.error:  # it answers but refuses writes: a full disk under its AOF, or a read-only replica
        problems.append(Problem("error", redis.error, "free space on that disk; writes resume by themselves, "
                                                      "no restart needed"))
    if export_error := snap.export.get("error"):
        problems.append(Problem("error", export_error, "free space on that disk (or fix its permissions); "
                                                       "all_users.json is written again by itself"))
    pipeline = snap.pipeline
    if pipeline is not None and not pipeline.alive:
        problems.append(Problem("error", f"no pipeline runs namespace {pipeline.namespace!r}: its owner has not "
                                         f"spoken in Redis for 5 s (stopped, or never started)",
                                "start it (`swordsec-console --no-ui` or the console, same Redis and namespace); "
                                "until then scaling, pausing and replaying cannot be carried out"))
    watcher = snap.watcher
    if watcher is not None and not watcher.folder_ok:
        problems.append(Problem("error", f"watched folder {watcher.folder} is {watcher.folder_error}",
                                "create it or fix its permissions (mkdir -p / chmod u+rx); files dropped meanwhile "
                                "are picked up by the next scan"))
    if snap.grpc is not None and not snap.grpc.serving:
        problems.append(Problem("error", f"gRPC server on {snap.grpc.address} is not serving",
                                "restart the console; check that the port is free"))
    alive = snap.alive_workers
    dead = sum(1 for w in snap.workers if w.state == "dead")
    stale = sum(1 for w in snap.workers if w.state == "stale")
    if alive == 0 and snap.desired_workers == 0 and snap.backlog:
        problems.append(Problem("error", f"no worker is running and {snap.backlog} job(s) wait",
                                "press + to add a worker, or run `swordsec-console worker` elsewhere"))
    elif alive == 0 and snap.desired_workers > 0:
        problems.append(Problem("error", "no worker is alive", "workers are restarting; if they keep dying, "
                                "check that Redis is reachable from them and read the event log"))
    if dead:
        problems.append(Problem("warning", f"{dead} worker(s) died recently",
                                "the supervisor restarts them and requeues their jobs; see the event log"))
    if frozen := sum(1 for w in snap.workers if w.state == "frozen"):
        problems.append(Problem("warning", f"{frozen} worker(s) frozen (stopped by a signal)",
                                "send SIGCONT to resume it; otherwise it is stopped and its job handed back "
                                "15 s after it froze"))
    if stale:
        problems.append(Problem("warning", f"{stale} worker(s) stopped sending heartbeats",
                                "a stuck or remote worker: restart it from the Workers panel (R)"))
    if snap.backlog_trend >= GROWING_BACKLOG and snap.backlog > GROWING_BACKLOG:
        problems.append(Problem("warning", f"backlog growing (+{snap.backlog_trend} jobs in 10 s, "
                                           f"{snap.backlog} waiting)", "add workers with +"))
    if snap.failed:
        problems.append(Problem("warning", f"{len(snap.failed)} failed job(s)",
                                "open Failed jobs, read the traceback (enter), then requeue (r) or delete (d)"))
    if watcher is not None and watcher.paused and watcher.waiting:
        problems.append(Problem("warning", f"watcher paused with {watcher.waiting} file(s) waiting",
                                "press p to resume"))
    undecodable = (snap.export or {}).get("undecodable", 0)
    if undecodable:
        bad = (snap.export.get("bad") or [{}])[0]
        first = f" (first: merge key {bad['key']!r}: {bad['reason']})" if bad else ""
        problems.append(Problem("error", f"{undecodable} stored user value(s) cannot be decoded and are left out of "
                                         f"all_users.json{first}",
                                "every other user is still exported; send those users again (a newer record "
                                "replaces the damaged value), or delete the value from its bucket:<n> hash"))
    if snap.unreadable_inbox:
        problems.append(Problem("warning", f"{snap.unreadable_inbox} inbox item(s) could not be read and were set "
                                           f"aside, not merged", "they were not written by this release; read them "
                                "with redis-cli LRANGE <namespace>:inbox:unreadable 0 -1, then DEL the list"))
    damaged = [f for f in snap.files if f.get("state") == "rejected"]
    if damaged:
        problems.append(Problem("warning", f"{len(damaged)} file(s) rejected",
                                "open the file's report (enter in Files), fix it, then replay it (x)"))
    return problems
