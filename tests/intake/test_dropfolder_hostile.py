"""The drop folder against hostile entries: non-regular files, swaps after the check, files that always fail,
records nested past the shared limit, names reused, and a watcher that runs for a long time."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import threading

import orjson
import pytest

import core.intake.watcher
from core.intake.quarantine import quarantined, replay_file
from core.records import MAX_DEPTH
from tests.conftest import make_users, reports_by_name, wait_for, wait_pipeline


def emails(runtime) -> set[str]:
    return {user["email"] for user in json.loads(runtime.settings.output_path.read_text())}


def write_users(path, users) -> bytes:
    data = orjson.dumps(users)
    path.write_bytes(data)
    return data


def hostile_entries(drop):
    """A FIFO, a folder, a socket and (where allowed) a device, all named like input; the socket is returned
    so it stays bound while the test runs."""
    os.mkfifo(drop / "pipe.json")
    (drop / "sub.json").mkdir()
    (drop / "sub.json" / "inner.json").write_bytes(orjson.dumps(make_users(2, "inner")))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(drop / "sock.json"))
    expected = {"pipe.json": "FIFO", "sub.json": "folder", "sock.json": "socket"}
    try:
        os.mknod(drop / "dev.json", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        expected["dev.json"] = "device"
    except (PermissionError, OSError):
        pass
    return listener, expected


@pytest.mark.timeout(120)
def test_once_refuses_fifo_socket_device_and_folder_unopened_and_merges_the_rest(runtime_factory, tmp_path):
    """On 9f703c0 the FIFO hung --once in looks_complete and the folder ended it with exit 3 (Is a directory)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    write_users(drop / "good.json", make_users(50, "good"))
    listener, expected = hostile_entries(drop)
    runtime = runtime_factory(watch=False)
    summary = runtime.run_once()
    reports = reports_by_name(runtime.store)
    assert emails(runtime) == {f"good{i}@example.org" for i in range(50)}
    for name, what in expected.items():
        assert reports[name]["state"] == "rejected" and what in reports[name]["damage"], reports[name]
        assert "\n" not in reports[name]["damage"]
    assert summary.damaged == len(expected) and summary.accepted == 50
    with pytest.raises(OSError) as no_reader:  # nothing holds the FIFO open for reading
        os.open(drop / "pipe.json", os.O_WRONLY | os.O_NONBLOCK)
    assert no_reader.value.errno == errno.ENXIO
    assert not (runtime.settings.data_dir / "quarantine" / "pipe.json").exists()
    listener.close()


def test_a_fifo_in_the_folder_never_stalls_discovery(runtime_factory, tmp_path):
    runtime = runtime_factory(quiet_period=0.2)
    listener, expected = hostile_entries(runtime.settings.watch)
    write_users(runtime.settings.watch / "after.json", make_users(30, "after"))
    wait_pipeline(runtime, lambda: runtime.store.count() == 30, message="the file dropped after the FIFO to merge")
    wait_for(lambda: all(reports_by_name(runtime.store).get(name, {}).get("state") == "rejected" for name in expected),
             message="each non-regular entry to be refused")
    listener.close()


def test_open_checked_refuses_without_opening_and_follows_links_only_inside(tmp_path):
    from core.intake.dropfiles import Refused, open_checked

    drop = tmp_path / "drop"
    drop.mkdir()
    os.mkfifo(drop / "pipe.json")
    (drop / "real.json").write_bytes(b"[]")
    (drop / "inside.json").symlink_to(drop / "real.json")
    (drop / "fifo-link.json").symlink_to(drop / "pipe.json")
    (drop / "null.json").symlink_to("/dev/null")
    (drop / "dangling.json").symlink_to(drop / "missing")
    with open_checked(drop / "inside.json", drop) as handle:
        assert handle.read() == b"[]"
    for name, reason in [("pipe.json", "FIFO"), ("fifo-link.json", "FIFO"), ("null.json", "outside the watched"),
                         ("dangling.json", "symlink to nothing")]:
        with pytest.raises(Refused, match=reason):
            open_checked(drop / name, drop)


def test_a_swap_after_the_check_cannot_read_outside_the_folder(runtime_factory, tmp_path, monkeypatch):
    """The file is swapped for a link out of the folder right after the watcher looked at it. On 9f703c0 the
    fingerprint, the stream and the quarantine copy all reopened the path and read the outside file."""
    drop = tmp_path / "drop"
    drop.mkdir()
    inside = orjson.dumps(make_users(20, "inside"))[:-40]  # damaged, so a copy goes to quarantine too
    (drop / "swapped.json").write_bytes(inside)
    secret = tmp_path / "secret.json"
    write_users(secret, make_users(5, "secret"))
    real_read = core.intake.watcher.Source.read  # the watcher's one read of the file: fingerprint, parse, copy
    swapped = threading.Event()

    def swap_then_read(handle):
        if not swapped.is_set():
            swapped.set()
            (drop / "swap.tmp").symlink_to(secret)
            os.replace(drop / "swap.tmp", drop / "swapped.json")
        return real_read(handle)

    monkeypatch.setattr(core.intake.watcher.Source, "read", staticmethod(swap_then_read))
    runtime = runtime_factory(watch=False)
    runtime.run_once()
    assert swapped.is_set() and (drop / "swapped.json").is_symlink()
    merged = emails(runtime)
    assert merged and all(email.startswith("inside") for email in merged)
    assert (runtime.settings.data_dir / "quarantine" / "swapped.json").read_bytes() == inside


def failing_client(runtime, monkeypatch, bad: str):
    attempts = []
    real = runtime.client.send_file

    def send_file(path, *args, **kwargs):
        if path.name == bad:
            attempts.append(path.name)
            raise RuntimeError(f"simulated failure #{len(attempts)} of this file\nsecond line")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(runtime.client, "send_file", send_file)
    return attempts


def test_a_file_that_keeps_failing_is_set_aside_and_the_others_go_on(runtime_factory, monkeypatch):
    """On 9f703c0 the watcher retried such a file every 2 s forever, reporting nothing."""
    monkeypatch.setattr(core.intake.watcher, "RETRY_DELAY", 0.05)
    runtime = runtime_factory(quiet_period=0.2)
    attempts = failing_client(runtime, monkeypatch, "bad.json")
    bad = write_users(runtime.settings.watch / "bad.json", make_users(10, "bad"))
    write_users(runtime.settings.watch / "good.json", make_users(10, "good"))
    report = wait_for(lambda: (r := reports_by_name(runtime.store).get("bad.json")) and r.get("state") == "rejected"
                      and r, message="bad.json to be set aside")
    assert report["damage"].startswith(f"set aside after {core.intake.watcher.MAX_ATTEMPTS} failed attempts: simulated")
    assert "\n" not in report["damage"] and len(attempts) == core.intake.watcher.MAX_ATTEMPTS
    assert (runtime.settings.data_dir / "quarantine" / "bad.json").read_bytes() == bad
    wait_pipeline(runtime, lambda: runtime.store.count() == 10, message="good.json to merge")
    assert not runtime.watcher.failures


def test_once_sets_a_failing_file_aside_instead_of_ending_the_run(runtime_factory, tmp_path, monkeypatch):
    drop = tmp_path / "drop"
    drop.mkdir()
    write_users(drop / "bad.json", make_users(10, "bad"))
    write_users(drop / "good.json", make_users(10, "good"))
    runtime = runtime_factory(watch=False)
    failing_client(runtime, monkeypatch, "bad.json")
    summary = runtime.run_once()
    assert summary.accepted == 10 and summary.damaged == 1 and not summary.clean
    assert reports_by_name(runtime.store)["bad.json"]["state"] == "rejected"


def deep_record(depth: int) -> bytes:
    return b'{"id": 99, "email": "deep@x.org", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 256])
def test_a_record_nested_past_the_limit_never_stalls_its_file(runtime_factory, tmp_path, depth):
    """On 9f703c0 a 254-256 deep record passed the reader, failed orjson's encoder in its batch (RPC UNKNOWN) and
    the file was retried forever; --once ended with exit 3."""
    drop = tmp_path / "drop"
    drop.mkdir()
    users = make_users(5, "around")
    parts = [orjson.dumps(user) for user in users]
    (drop / "deep.json").write_bytes(b"[" + b",".join(parts[:3] + [deep_record(depth)] + parts[3:]) + b"]")
    (drop / "deep.jsonl").write_bytes(b"\n".join(parts[:3] + [deep_record(depth).replace(b"deep@", b"deep2@")]
                                                 + [orjson.dumps(u) for u in make_users(2, "lines")]) + b"\n")
    runtime = runtime_factory(watch=False)
    summary = runtime.run_once()
    reports = reports_by_name(runtime.store)
    assert "record 4 is nested deeper than" in reports["deep.json"]["damage"]
    assert "nested deeper than" in reports["deep.jsonl"]["reasons"][0]
    assert emails(runtime) == {f"around{i}@example.org" for i in range(3)} | {"lines0@example.org",
                                                                               "lines1@example.org"}
    assert summary.accepted == 3 + 5


def test_processed_and_quarantine_copies_never_overwrite_an_earlier_file(runtime_factory, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    runtime = runtime_factory(watch=False, after_merge="move")
    first = write_users(drop / "a.json", make_users(3, "first"))
    runtime.run_once()
    second = write_users(drop / "a.json", make_users(3, "second"))
    runtime.run_once()
    processed = drop / "processed"
    assert (processed / "a.json").read_bytes() == first and (processed / "a.2.json").read_bytes() == second

    damaged = [orjson.dumps(make_users(4, tag))[:-30] for tag in ("one", "two", "three")]
    for data in damaged:
        (drop / "b.json").write_bytes(data)
        runtime.run_once()
    folder = runtime.settings.data_dir / "quarantine"
    assert [(folder / name).read_bytes() for name in ("b.json", "b.2.json", "b.3.json")] == damaged
    items = [item for item in quarantined(runtime.settings.data_dir) if item["file"] == "b.json"]
    assert [item["copy"] for item in items] == ["b.json", "b.2.json", "b.3.json"]
    assert all("truncated" in item["reason"] for item in items)
    # replay by the original name takes the latest copy back under that name; by a copy's name, that copy
    (drop / "b.json").unlink(missing_ok=True)  # moved to processed/ (partial files merge too)
    assert replay_file(runtime.settings.data_dir, drop, "b.json") == drop / "b.json"
    assert (drop / "b.json").read_bytes() == damaged[2] and not (folder / "b.3.json.error.json").exists()
    assert replay_file(runtime.settings.data_dir, drop, "b.json") == drop / "b.json"
    assert (drop / "b.json").read_bytes() == damaged[1]


def test_the_watchers_maps_hold_only_what_is_in_the_folder(runtime_factory, tmp_path, monkeypatch):
    """On 9f703c0 `known` kept every path ever handled and `inflight` every file whose report went away."""
    drop = tmp_path / "drop"
    drop.mkdir()
    runtime = runtime_factory(watch=False, after_merge="delete")
    watcher = runtime.watcher
    for round_ in range(3):
        for n in range(15):
            write_users(drop / f"r{round_}-{n}.json", make_users(2, f"r{round_}-{n}-"))
        runtime.run_once()
    watcher.scan()
    assert not list(drop.glob("*.json")) and runtime.store.count() == 90
    assert watcher.known == {} and watcher.candidates == {} and watcher.inflight == {} and watcher.failures == {}
    assert watcher.queued == set() and watcher.ready.empty()



def test_inflight_is_capped_and_drops_files_whose_report_went_away(runtime_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(core.intake.watcher, "INFLIGHT_LIMIT", 2)
    runtime = runtime_factory(watch=False, workers=0, max_backlog=100)  # nothing merges: every file stays in flight
    watcher = runtime.watcher
    for n in range(4):
        write_users(runtime.settings.watch / f"held{n}.json", make_users(2, f"held{n}-"))
        assert watcher.ingest(runtime.settings.watch / f"held{n}.json")[1] == "sent"
        assert len(watcher.inflight) == min(n + 1, 2)
    assert any("no longer followed" in e.text for e in runtime.events.recent(200))
    for report_id in list(watcher.inflight):
        runtime.store.forget_report(report_id)  # a reset: nothing will ever merge these
    watcher.check_inflight()
    assert watcher.inflight == {}
