"""A whole write shared with a helper process (core/storage/splitwrite.py): the same file, byte for byte, and the
same layout as one process writes; a helper that fails only costs time; a stop or a reset ends both."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from core.storage import splitwrite, viewfile
from core.storage.codec import BUCKETS, StaleDictionary, bucket_of
from core.storage.exporter import Exporter
from core.storage.store import Store
from core.storage.viewfile import ViewFile
from tests.conftest import make_users, wait_for
from tests.storage.test_viewfile import in_store, merge

# Each test starts the helper process, a real one, on real Redis: the end-to-end layer.
pytestmark = pytest.mark.slow


def key_in(buckets: range) -> str:
    return next(key for n in range(10**6) if bucket_of(key := f"damaged{n}@x.com") in buckets)


# Undecodable values in the first slice (this process's) and in the last (the helper's, which takes it first).
DAMAGED = {key_in(range(16)): b"not a value", key_in(range(BUCKETS - 16, BUCKETS)): b"1\t[1,2]"}


@pytest.fixture
def store(connection, namespace, monkeypatch):
    store = Store(connection, namespace)
    merge(store, make_users(3000, "split"))
    for key, value in DAMAGED.items():
        store.redis.hset(store.bucket_key(key), key, value)
    # slices of 16 buckets: thousands of claims, the two processes meeting somewhere in the middle
    monkeypatch.setattr(splitwrite, "SLICE_USERS", 1)
    yield store
    store.clear()


def written(view: ViewFile) -> tuple[bytes, tuple]:
    copy = view.copies[view.current]
    return view.path.read_bytes(), (copy.start, copy.room, copy.users, copy.used, copy.first, copy.bad)


def single(store: Store, folder, patch_from: int = 0) -> tuple[bytes, tuple]:
    """What this process alone writes."""
    view = ViewFile(store, folder / "single" / "all_users.json", patch_from=patch_from)
    view.write()
    return written(view)


def split_view(store: Store, folder, redis_url: str) -> ViewFile:
    return ViewFile(store, folder / "split" / "all_users.json", patch_from=0, split_url=redis_url, split_from=1)


def helper_took_a_slice(monkeypatch) -> list:
    """This process writes nothing until the helper has taken its first slice (read from the claims file), so
    both shares are certain to be written; the running SplitWrite is put in the returned list."""
    running = []
    front = splitwrite.SplitWrite.front

    def waiting_front(self):
        running.append(self)
        high = lambda: struct.unpack("<qq", os.pread(self._claims.fd, 16, 0))[1]  # noqa: E731
        wait_for(lambda: high() < self.slices - 1 or self._process.poll() is not None, timeout=60,
                 message="the helper to take a slice")
        yield from front(self)

    monkeypatch.setattr(splitwrite.SplitWrite, "front", waiting_front)
    return running


def no_split_files(view: ViewFile) -> bool:
    return not [p for p in view.path.parent.iterdir() if p.name.startswith(".split-") or p.name.endswith(".tmp")]


@pytest.mark.parametrize("roomy", [True, False])
def test_a_split_write_is_the_single_write_byte_for_byte(store, tmp_path, redis_url, monkeypatch, roomy):
    helper_took_a_slice(monkeypatch)
    view = split_view(store, tmp_path, redis_url)
    view.patch_from = 0 if roomy else 10**9  # regions with room to grow, or end to end
    info = view.write()
    mine, helpers = view.split_shares
    assert mine > 0 and helpers > 0 and not view.split_failures
    assert written(view) == single(store, tmp_path, view.patch_from)
    assert info["undecodable"] == 2 and sorted(b["key"] for b in info["bad"]) == sorted(DAMAGED)
    assert json.loads(view.path.read_bytes()) == in_store(store)
    assert no_split_files(view)


def test_a_split_copy_is_patched_like_any_other(store, tmp_path, redis_url, monkeypatch):
    """The regions the helper wrote are where the layout says: a later patch lands on them."""
    helper_took_a_slice(monkeypatch)
    view = split_view(store, tmp_path, redis_url)
    view.write()
    view.write()  # the other copy, whole and split too
    merge(store, make_users(40, "split") + make_users(40, "after"), "g")  # users in both shares' buckets
    view.write()
    assert view.patched == 1
    assert json.loads(view.path.read_bytes()) == in_store(store)


@pytest.mark.parametrize("how", ["cannot start", "cannot reach Redis", "killed half-way"])
def test_a_helper_that_fails_only_costs_time(store, tmp_path, redis_url, monkeypatch, how):
    url = redis_url
    if how == "cannot start":
        monkeypatch.setattr(splitwrite, "spawn", lambda args, **kwargs: subprocess.Popen(["/nonexistent/python"]))
    elif how == "cannot reach Redis":
        url = "redis://127.0.0.1:1/0"
    else:
        running = helper_took_a_slice(monkeypatch)
        front = splitwrite.SplitWrite.front

        def killing_front(self):
            """The helper is killed once it has taken a slice, thousands of slices before it could be done."""
            for number, bounds in enumerate(front(self)):
                if number == 0:
                    self._process.kill()
                yield bounds

        monkeypatch.setattr(splitwrite.SplitWrite, "front", killing_front)
    view = split_view(store, tmp_path, url)
    view.write()
    assert written(view) == single(store, tmp_path)
    [failure] = view.split_failures
    if how == "cannot start":
        assert failure.startswith("the export's helper could not start: [Errno 2] No such file or directory")
    else:
        assert failure.startswith("the export's helper exited with ")
        assert ("ConnectionError" in failure) if how == "cannot reach Redis" else ("-9" in failure and running)
    assert no_split_files(view)


def test_a_stopped_write_stops_the_helper_and_leaves_no_file(store, tmp_path, redis_url, monkeypatch):
    running = helper_took_a_slice(monkeypatch)
    view = split_view(store, tmp_path, redis_url)
    monkeypatch.setattr(viewfile, "STOP_AFTER", 0.0)
    view.stopping = lambda: True
    with pytest.raises(viewfile.ExportStopped):
        view.write()
    [split] = running
    assert split._process.returncode is not None  # killed and reaped
    assert not view.path.exists() and no_split_files(view)


def test_a_reset_during_a_split_write_is_a_stale_export(store, tmp_path, redis_url, monkeypatch):
    """A clear after the write began (here, once the helper has read a slice): the write ends, the next starts over."""
    helper_took_a_slice(monkeypatch)
    front = splitwrite.SplitWrite.front

    def clearing_front(self):
        for number, bounds in enumerate(front(self)):
            if number == 0:
                store.clear()
                merge(store, make_users(5, "after-reset"), "g")
            yield bounds

    asked = []
    rest = splitwrite.SplitWrite.rest
    monkeypatch.setattr(splitwrite.SplitWrite, "front", clearing_front)
    monkeypatch.setattr(splitwrite.SplitWrite, "rest", lambda self, check: asked.append(1) or rest(self, check))
    view = split_view(store, tmp_path, redis_url)
    with pytest.raises(StaleDictionary):
        view.write()
    assert not asked, "this process's own slice saw the reset, before it waited for the helper"
    assert no_split_files(view)
    monkeypatch.undo()
    info = view.write()
    assert info["count"] == 5


def test_a_reset_seen_by_the_helper_alone_is_a_stale_export(store, tmp_path, redis_url, monkeypatch):
    """The helper reads against another epoch than this process's (as after a clear only it saw)."""
    helper_took_a_slice(monkeypatch)
    spawn = splitwrite.spawn

    def spawn_told_another_epoch(args, **kwargs):
        args[7] = "not-the-epoch"
        return spawn(args, **kwargs)

    monkeypatch.setattr(splitwrite, "spawn", spawn_told_another_epoch)
    view = split_view(store, tmp_path, redis_url)
    with pytest.raises(StaleDictionary):
        view.write()
    assert no_split_files(view)


def test_the_helper_refuses_another_epoch(store, tmp_path, redis_url, monkeypatch):
    claims = tmp_path / "claims"
    claims.write_bytes(struct.pack("<qq", 0, 3))
    monkeypatch.setenv(splitwrite.URL_VARIABLE, redis_url)
    code = splitwrite.run([store.ns, str(claims), str(tmp_path / "part"), str(tmp_path / "index"), "not-the-epoch",
                           "1", "16"])
    assert code == splitwrite.STALE_EXIT and not (tmp_path / "index").exists()


def test_the_console_s_exporter_gives_its_writer_the_store_s_url(runtime_factory):
    runtime = runtime_factory(watch=False)
    assert runtime.exporter.view.split_url == runtime.broker.url


def test_the_exporter_says_when_its_helper_failed(store, tmp_path):
    events = []
    exporter = Exporter(store, tmp_path / "all_users.json", 1.0, on_event=lambda *event: events.append(event),
                        redis_url="redis://127.0.0.1:1/0")
    exporter.view.split_from = 1
    info = exporter.write()
    assert info["count"] == 3000
    [(level, text)] = [event for event in events if "helper" in event[1]]
    assert level == "warning" and text.startswith("the export's helper exited with 1: ConnectionError")
    assert text.endswith("; all_users.json was written whole here")


def test_the_files_of_a_killed_console_s_split_write_are_swept(store, tmp_path, redis_url):
    """Those of a console that no longer runs go with the next split write; those of one still running stay."""
    view = split_view(store, tmp_path, redis_url)
    view.path.parent.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = view.path.parent / f".split-part.{gone.pid}.abc.tmp"
    alive = view.path.parent / f".split-part.{os.getppid()}.abc.tmp"
    for path in (dead, alive):
        path.write_bytes(b"x" * 1000)
    view.write()
    assert not dead.exists() and alive.exists()
