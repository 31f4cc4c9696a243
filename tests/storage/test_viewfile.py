"""all_users.json patched bucket by bucket (core/storage/viewfile.py): always exactly the store, always whole."""

from __future__ import annotations

import json
import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.storage import codec, viewfile
from core.storage.store import Store
from core.storage.viewfile import ViewFile
from tests.conftest import make_users


def merge(store: Store, users: list[dict], report: str = "f") -> dict:
    attempt = store.begin_attempt(report, state="streaming")
    span = f"{store.reserve_seq(0)}:{len(users)}"
    return store.merge_batch(report, attempt, span, store.reserve_seq(len(users)), users, "email")


def in_store(store: Store) -> list[dict]:
    """What a whole export writes, in its order."""
    return [orjson.loads(raw) for raw in store.iter_users(on_bad=lambda key, reason: None)]


def in_file(view: ViewFile) -> list[dict]:
    return json.loads(view.path.read_bytes())


def same_bucket(bucket: int, count: int, tag: str) -> list[dict]:
    """`count` users whose merge keys all fall into `bucket`."""
    found, n = [], 0
    while len(found) < count:
        user = make_users(1, tag, start=n)[0]
        if codec.bucket_of(user["email"]) == bucket:
            found.append(user)
        n += 1
    return found


@pytest.fixture
def view(connection, namespace, tmp_path):
    store = Store(connection, namespace)
    merge(store, make_users(2000, "base"))
    view = ViewFile(store, tmp_path / "all_users.json", patch_from=0)  # room to grow at any size
    view.write()
    view.write()
    assert view.patched == 0, "the first export of a process writes each copy whole"
    yield view
    store.clear()


def test_new_and_updated_users_reach_the_file_by_patching_it(view):
    store = view.store
    assert in_file(view) == in_store(store)
    merge(store, make_users(5, "new"), "g")
    info = view.write()
    assert view.patched == 1 and info["count"] == 2005
    assert in_file(view) == in_store(store)
    # an update of a user the previous patch appended, and of an old one, right in the file after the next
    changed = [make_users(5, "new")[2] | {"first_name": "Renamed"}, make_users(2000, "base")[7] | {"country": "Peru"}]
    merge(store, changed, "h")
    view.write()
    assert view.patched == 2
    users = in_file(view)
    assert users == in_store(store) and len(users) == 2005
    by_email = {u["email"]: u for u in users}
    assert by_email[changed[0]["email"]]["first_name"] == "Renamed"
    assert by_email[changed[1]["email"]]["country"] == "Peru"


def test_the_link_switches_between_two_copies_and_each_is_whole(view):
    first = os.readlink(view.path)
    merge(view.store, make_users(3, "switch"), "g")
    view.write()
    second = os.readlink(view.path)
    assert {first, second} == {".all_users.json.a", ".all_users.json.b"}
    for name in (first, second):
        json.loads((view.path.parent / name).read_bytes())
    assert in_file(view) == in_store(view.store)


def test_a_duplicate_marks_no_bucket_changed(view):
    store = view.store
    merge(store, make_users(3, "base"), "again")  # the same users again: duplicates
    assert store.take_changes()[1] == set()
    merge(store, make_users(1, "fresh"), "g")
    assert store.take_changes()[1] == {codec.bucket_of(make_users(1, "fresh")[0]["email"])}


def test_a_copy_someone_is_reading_is_written_whole_not_patched(view):
    store = view.store
    merge(store, make_users(2, "one"), "g")
    view.write()  # now the link points at the other copy; the first one is next
    next_copy = view.copy_path("a" if view.current == "b" else "b")
    with open(next_copy, "rb") as reader:
        before = reader.read(100)
        merge(store, make_users(2, "two"), "h")
        view.write()
        assert view.patched == 1, "the open copy was not patched"
        reader.seek(0)
        assert reader.read(100) == before
        json.loads(before + reader.read())  # the reader's copy is still whole
    assert in_file(view) == in_store(store)


def test_a_bucket_that_outgrows_its_room_has_the_copy_written_whole(view):
    store = view.store
    merge(store, make_users(1, "x"), "g")
    view.write()
    view.write()
    assert view.patched == 2
    bucket = codec.bucket_of(make_users(1, "x")[0]["email"])
    merge(store, same_bucket(bucket, 12, "crowd"), "h")  # far more than an eighth of its bytes
    view.write()
    assert view.patched == 2
    assert in_file(view) == in_store(store)


def test_an_export_that_fails_half_way_leaves_the_file_whole_and_the_next_one_right(view, monkeypatch):
    store = view.store
    before = in_file(view)
    merge(store, make_users(1, "first"), "g")
    view.write()  # the other copy holds it; the copy patched next holds the state before
    before = in_file(view)
    merge(store, make_users(300, "crash"), "h")
    real, calls = os.pwrite, []

    def crash(fd, data, offset):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(viewfile.os, "pwrite", crash)
    with pytest.raises(OSError):
        view.write()
    monkeypatch.undo()
    assert in_file(view) == before, "the file readers open is the last whole export"
    view.write()
    assert in_file(view) == in_store(store) and len(in_file(view)) == 2301


def test_a_whole_write_that_fails_leaves_no_temporary_file(view, monkeypatch):
    store = view.store
    before = in_file(view)
    merge(store, make_users(10, "w"), "g")
    view.copies = {"a": None, "b": None}  # as in a new process: the next export writes a copy whole

    def broken(*args, **kwargs):
        yield 0, []
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store, "iter_buckets", broken)
    with pytest.raises(OSError):
        view.write()
    monkeypatch.undo()
    assert in_file(view) == before
    # the layout of the copy that failed is gone with it (deleted before the write began)
    assert sorted(p.name for p in view.path.parent.iterdir()) == [
        ".all_users.json.a", ".all_users.json.b", ".all_users.json.b.layout", "all_users.json"]
    view.write()
    assert in_file(view) == in_store(store)


def stop_writes(view: ViewFile, monkeypatch) -> None:
    """As after a second signal: the next write gives up at its first step (no time allowed)."""
    monkeypatch.setattr(viewfile, "STOP_AFTER", 0.0)
    view.stopping = lambda: True


def no_temporary_files(view: ViewFile) -> bool:
    return not [p for p in view.path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("how", ["patched", "written whole", "made anew from the current copy"])
def test_a_write_asked_to_stop_gives_up_and_leaves_the_export_before(view, monkeypatch, how):
    store = view.store
    if how == "written whole":
        view.copies = {"a": None, "b": None}  # as in a new process
    merge(store, make_users(300, "late"), "g")
    before = in_file(view)
    if how == "made anew from the current copy":
        view.write()  # the other copy is patched; the next write makes the stale one anew from it
        before = in_file(view)
        merge(store, make_users(10, "later"), "h")
        view.copies["a" if view.current == "b" else "b"] = None
    patched, spliced = view.patched, view.spliced
    stop_writes(view, monkeypatch)
    with pytest.raises(viewfile.ExportStopped, match="stopped after"):
        view.write()
    assert in_file(view) == before and no_temporary_files(view)
    assert (view.patched, view.spliced) == (patched, spliced)
    view.stopping = lambda: False
    view.write()
    assert in_file(view) == in_store(store)


def test_a_write_asked_to_stop_finishes_when_it_is_short(view, monkeypatch):
    monkeypatch.setattr(viewfile, "STOP_AFTER", 3600.0)
    view.stopping = lambda: True
    merge(view.store, make_users(5, "quick"), "g")
    view.write()
    assert in_file(view) == in_store(view.store)


def test_a_cleared_namespace_is_written_whole(view):
    store = view.store
    store.clear()
    merge(store, make_users(4, "after"), "g")
    info = view.write()
    assert view.patched == 0 and info["count"] == 4
    assert in_file(view) == in_store(store)


def test_an_undecodable_value_is_counted_once_across_patches(view):
    store = view.store
    store.redis.hset(store.bucket_key("broken@x.com"), "broken@x.com", b"not a value")
    view.copies = {"a": None, "b": None}
    assert view.write()["undecodable"] == 1
    merge(store, make_users(1, "again"), "g")
    assert view.write()["undecodable"] == 1  # the other copy, written whole
    merge(store, same_bucket(codec.bucket_of("broken@x.com"), 1, "beside"), "h")  # its bucket read again
    info = view.write()
    assert view.patched == 1
    assert info["undecodable"] == 1 and info["bad"][0]["key"] == "broken@x.com"
    assert in_file(view) == in_store(store)


def test_the_exporter_brings_the_other_copy_up_to_date_once_quiet(connection, namespace, tmp_path):
    """After a long ingest the copy not shown is far behind: written while quiet, a later drop only patches."""
    from core.storage.exporter import Exporter
    from tests.conftest import wait_for

    store = Store(connection, namespace)
    exporter = Exporter(store, tmp_path / "all_users.json", 0.05)
    exporter.view.patch_from = 0
    try:
        merge(store, make_users(300, "quiet"))
        exporter.start()
        wait_for(lambda: not exporter.view.behind and exporter.view.copies["a"] and exporter.view.copies["b"],
                 message="both copies written")
        merge(store, make_users(2, "later"), "g")
        wait_for(lambda: exporter.view.patched >= 1, message="the drop patched in")
        wait_for(lambda: len(in_file(exporter.view)) == 302, message="the drop in all_users.json")
        assert in_file(exporter.view) == in_store(store)
    finally:
        exporter.stop()
        store.clear()


@pytest.fixture
def small(connection, namespace, tmp_path, monkeypatch):
    """A store too small to leave room (the default patch_from): each export makes its copy anew."""
    store = Store(connection, namespace)
    merge(store, make_users(2000, "base"))
    view = ViewFile(store, tmp_path / "all_users.json")
    view.write()
    yield view
    store.clear()


def walking_forbidden(store: Store, monkeypatch) -> None:
    def walk(*args, **kwargs):
        raise AssertionError("the export walked every bucket of the store")

    monkeypatch.setattr(store, "iter_buckets", walk)


def test_a_small_store_s_copy_is_made_from_the_current_one_reading_only_the_changed_buckets(small, monkeypatch):
    store = small.store
    merge(store, make_users(5, "new"), "g")
    merge(store, [make_users(2000, "base")[7] | {"country": "Peru"}], "h")
    walking_forbidden(store, monkeypatch)
    read = []
    real = store.read_buckets
    monkeypatch.setattr(store, "read_buckets", lambda numbers, on_bad=None: read.extend(numbers) or real(numbers, on_bad))
    info = small.write()
    assert small.spliced == 1 and small.patched == 0 and info["count"] == 2005
    changed = {codec.bucket_of(u["email"]) for u in make_users(5, "new") + [make_users(2000, "base")[7]]}
    assert set(read) == changed
    monkeypatch.undo()
    users = in_file(small)
    assert users == in_store(store) and {u["email"]: u for u in users}[make_users(2000, "base")[7]["email"]][
        "country"] == "Peru"
    merge(store, make_users(3, "more"), "i")  # and again, from the copy just made
    small.write()
    assert small.spliced == 2 and in_file(small) == in_store(store)
    assert (small.path.parent / os.readlink(small.path)).stat().st_size < 2 * len(orjson.dumps(in_store(store))), \
        "no room to grow in a small store's file"


def test_a_user_before_the_first_region_gives_the_old_first_one_its_comma(connection, namespace, tmp_path,
                                                                           monkeypatch):
    store = Store(connection, namespace)
    try:
        merge(store, same_bucket(codec.BUCKETS - 1, 2, "last"))
        view = ViewFile(store, tmp_path / "all_users.json")
        view.write()
        merge(store, same_bucket(3, 1, "early"), "g")
        walking_forbidden(store, monkeypatch)
        view.write()
        monkeypatch.undo()
        assert view.spliced == 1
        assert in_file(view) == in_store(store) and len(in_file(view)) == 3
    finally:
        store.clear()


def test_a_current_copy_changed_on_disk_is_not_copied_from(small):
    current = small.path.parent / os.readlink(small.path)
    current.write_bytes(current.read_bytes().replace(b"base", b"BASE", 1))  # someone edited all_users.json
    merge(small.store, make_users(1, "new"), "g")
    small.write()
    assert small.spliced == 0
    assert in_file(small) == in_store(small.store)


def test_a_copy_that_fails_half_way_leaves_the_file_whole_and_no_temporary_file(small, monkeypatch):
    store = small.store
    before = in_file(small)
    merge(store, make_users(300, "crash"), "g")
    real, calls = viewfile._write_all, []

    def crash(fd, data):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(viewfile, "_write_all", crash)
    with pytest.raises(OSError):
        small.write()
    monkeypatch.undo()
    assert in_file(small) == before
    assert sorted(p.name for p in small.path.parent.iterdir()) == [".all_users.json.a", "all_users.json"]
    small.write()
    assert in_file(small) == in_store(store) and len(in_file(small)) == 2300


def test_a_copy_made_anew_keeps_the_count_of_undecodable_values(small):
    store = small.store
    store.redis.hset(store.bucket_key("broken@x.com"), "broken@x.com", b"not a value")
    small.copies = {"a": None, "b": None}
    assert small.write()["undecodable"] == 1  # whole
    merge(store, make_users(1, "again"), "g")
    assert small.write()["undecodable"] == 1 and small.spliced == 1  # its bucket copied as it was
    merge(store, same_bucket(codec.bucket_of("broken@x.com"), 1, "beside"), "h")  # its bucket read again
    info = small.write()
    assert small.spliced == 2 and info["undecodable"] == 1 and info["bad"][0]["key"] == "broken@x.com"
    assert in_file(small) == in_store(store)


def test_the_kernel_s_copy_missing_falls_back_to_read_and_write(small, monkeypatch):
    def unsupported(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(viewfile.os, "copy_file_range", unsupported)
    merge(small.store, make_users(4, "plain"), "g")
    small.write()
    assert small.spliced == 1 and in_file(small) == in_store(small.store)


# -- a restarted process takes up the copies it left (saved layouts) -----------------------------------------
def restarted(view: ViewFile) -> ViewFile:
    """The exporter of a new process on the same store and path."""
    return ViewFile(view.store, view.path, patch_from=0)


def test_a_restarted_process_patches_the_copies_it_left_without_walking_the_store(view, monkeypatch):
    store = view.store
    merge(store, make_users(3, "before-restart"), "g")
    view.write()
    merge(store, make_users(4, "while-down"), "h")
    again = restarted(view)
    walking_forbidden(store, monkeypatch)
    again.write()
    monkeypatch.undo()
    assert again.restored == 2 and again.patched == 1
    assert in_file(again) == in_store(store) and len(in_file(again)) == 2007
    again.write()  # the other copy too: it still misses what the last export before the restart took
    assert again.patched == 2
    assert json.loads(again.copy_path("a").read_bytes()) == json.loads(again.copy_path("b").read_bytes())


def test_changes_taken_by_an_export_that_never_finished_leave_the_saved_copies_unused(view):
    store = view.store
    merge(store, make_users(5, "lost-take"), "g")
    store.take_changes()  # an export that took these changes, then its process died before writing
    again = restarted(view)
    again.write()
    assert again.restored == 0 and again.patched == 0
    assert in_file(again) == in_store(store) and len(in_file(again)) == 2005


def test_a_copy_changed_on_disk_since_its_layout_was_saved_is_not_taken_up(view):
    store = view.store
    current = view.path.resolve()
    current.write_bytes(current.read_bytes().replace(b"\n]", b" \n]"))  # still JSON, another size
    merge(store, make_users(2, "edited"), "g")
    again = restarted(view)
    again.write()
    assert again.restored == 0
    assert in_file(again) == in_store(store)


@pytest.fixture
def saved_layouts(view):
    """A view whose two copies have saved layouts, and those layouts' bytes."""
    merge(view.store, make_users(1, "damage"), "g")
    view.write()
    return view, {name: view.layout_path(name).read_bytes() for name in ("a", "b")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_layout_is_never_taken_up(saved_layouts, data):
    """Any truncation or flipped byte of a saved layout: that copy is not taken up (it is written anew), never
    patched at offsets the damage made up; the undamaged copy still is."""
    view, originals = saved_layouts
    name = data.draw(st.sampled_from(["a", "b"]))
    raw = bytearray(originals[name])
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, 2**32)) % len(raw)]
    else:  # positions drawn from a fixed range: the layout's length varies between examples
        raw[data.draw(st.integers(0, 2**32)) % len(raw)] ^= data.draw(st.integers(1, 255))
    view.layout_path(name).write_bytes(bytes(raw))
    try:
        again = restarted(view)
        again._restore()
        assert again.copies[name] is None
        if name == view.current:  # the copy readers see is what any other is made from: without it, none
            assert again.restored == 0
        else:
            assert again.restored == 1 and again.current == view.current
    finally:
        view.layout_path(name).write_bytes(originals[name])


def test_undamaged_layouts_are_taken_up_and_give_the_store(saved_layouts):
    view, _ = saved_layouts
    merge(view.store, make_users(3, "after-damage-check"), "h")
    again = restarted(view)
    again.write()
    assert again.restored == 2 and again.patched == 1
    assert in_file(again) == in_store(view.store)
