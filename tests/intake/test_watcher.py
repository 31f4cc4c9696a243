"""The drop folder, live: stable-file detection, the ledger, quarantine, after-merge, back-pressure."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import orjson
import pytest

from core.intake.quarantine import replay_file
from tests.conftest import CHALLENGE, copy_challenge, make_users, reports_by_name, wait_for, wait_pipeline


def merged_events(runtime, name):
    return [e for e in runtime.events.recent(2000) if e.data.get("file") == name and e.data.get("state") in
            ("merged", "partial")]


def test_a_file_written_slowly_in_chunks_is_read_once_complete(runtime_factory, tmp_path):
    runtime = runtime_factory(quiet_period=0.5)
    payload = orjson.dumps(make_users(2000, "slow"))
    chunks = [payload[i:i + len(payload) // 5 + 1] for i in range(0, len(payload), len(payload) // 5 + 1)]
    target = runtime.settings.watch / "slow.json"
    writer_done = threading.Event()

    def write_slowly():
        with open(target, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                handle.flush()
                writer_done.wait(0.4)  # an upload arriving piece by piece, not a synchronisation point
        writer_done.set()

    threading.Thread(target=write_slowly).start()
    wait_for(lambda: merged_events(runtime, "slow.json"), message="slow.json to merge")
    report = reports_by_name(runtime.store)["slow.json"]
    assert report["records"] == 2000 and report["accepted"] == 2000 and not report.get("damage")
    assert len(merged_events(runtime, "slow.json")) == 1
    assert runtime.store.count() == 2000


def test_a_file_renamed_into_the_folder_is_read_without_waiting_for_quiet(runtime_factory, tmp_path):
    runtime = runtime_factory(quiet_period=3600)  # only the complete-file rule can let it through
    staging = runtime.settings.watch / "incoming.json.part"
    staging.write_bytes(orjson.dumps(make_users(300, "renamed")))
    os.rename(staging, runtime.settings.watch / "incoming.json")
    wait_pipeline(runtime, lambda: runtime.store.count() == 300, message="the renamed file to merge")


def test_files_dropped_while_running_are_merged_once_each(runtime_factory, tmp_path):
    runtime = runtime_factory(quiet_period=0.2)
    for source in sorted(CHALLENGE.glob("*.json"))[:4]:
        shutil.copy(source, runtime.settings.watch / source.name)
        wait_for(lambda: merged_events(runtime, source.name), message=f"{source.name} to merge")
    names = [e.data["file"] for e in runtime.events.recent(2000) if e.data.get("state") in ("merged", "partial")]
    assert sorted(names) == sorted(set(names)) and len(names) == 4


def test_restart_resumes_unfinished_files_and_skips_merged_ones(runtime_factory, tmp_path):
    drop = tmp_path / "drop"
    copy_challenge(drop, {"1.json", "2.json"})
    first = runtime_factory(watch=False)
    first.run_once()
    # A console that died mid-file leaves its report in "streaming"; the next one must read the file again.
    stuck = drop / "3.json"
    shutil.copy(CHALLENGE / "3.json", stuck)
    from core.intake.dropfiles import fingerprint

    first.store.update_report(fingerprint(stuck), name="3.json", state="streaming", records=400)
    first.stop()
    second = runtime_factory(watch=False)
    summary = second.run_once()
    assert summary.skipped == 2 and summary.accepted == 1000
    assert second.store.count() == 3000


def test_same_content_under_a_new_name_is_recognised_and_a_changed_file_is_read_again(runtime_factory, tmp_path):
    drop = tmp_path / "drop"
    copy_challenge(drop, {"4.json"})
    runtime = runtime_factory(watch=False)
    runtime.run_once()
    shutil.copy(CHALLENGE / "4.json", drop / "4-again.json")
    again = runtime.run_once()
    assert again.skipped == 2 and again.accepted == 0
    users = json.loads((drop / "4.json").read_text())
    users[0]["country"] = "Atlantis"
    (drop / "4.json").write_text(json.dumps(users))
    changed = runtime.run_once()
    assert changed.accepted == 1000 and changed.duplicates == 999
    merged = json.loads(runtime.settings.output_path.read_text())
    assert sum(u["country"] == "Atlantis" for u in merged) == 1 and len(merged) == 1000


BAD_INPUTS = {
    "empty.json": b"",
    "empty-array.json": b"[]",
    "blank.json": b"   \n\t  \n",
    "page.json": b"<html><body>502 Bad Gateway</body></html>",
    "noise.json": bytes(range(256)) * 4,
    "object.json": b'{\n  "users": [\n    {"id": 1, "email": "x@y.z"}\n  ]\n}\n',
    "latin1.json": '[{"id": 1, "email": "ok@latin.example"}, {"id": 2, "first_name": "Jos\u00e9", "email": "j@l.example"}]'
    .encode("latin-1"),
    "nested.json": b"[" * 100000 + b"]" * 100000,
}


def test_tour_of_bad_inputs_reports_each_and_keeps_every_valid_record(runtime_factory, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    for name, content in BAD_INPUTS.items():
        (drop / name).write_bytes(content)
    big = make_users(3, "big")
    big[1]["agent"] = "A" * (3 * 1024 * 1024)
    (drop / "bigfield.json").write_bytes(orjson.dumps(big))
    mixed = make_users(5, "mixed")
    mixed.insert(1, {"id": "seven", "email": "bad-id@x.org"})
    mixed.insert(3, {"id": 2**31, "email": "huge-id@x.org"})
    mixed.insert(4, {"id": 3, "email": ["not", "a", "string"]})
    mixed.insert(5, "just a string")
    (drop / "mixed.jsonl").write_bytes(b"\n".join(orjson.dumps(u) for u in mixed) + b"\n{broken line\n")
    outside = tmp_path / "outside.json"
    outside.write_bytes(orjson.dumps(make_users(2, "outside")))
    (drop / "link.json").symlink_to(outside)
    (drop / "upload.json.part").write_bytes(orjson.dumps(make_users(2, "part")))
    (drop / ".hidden.json").write_bytes(orjson.dumps(make_users(2, "hidden")))

    runtime = runtime_factory(watch=False)
    summary = runtime.run_once()
    reports = reports_by_name(runtime.store)
    merged = {u["email"] for u in json.loads(runtime.settings.output_path.read_text())}

    assert reports["empty.json"]["damage"] == "file is empty"
    assert reports["blank.json"]["damage"] == "file is empty"
    assert reports["empty-array.json"]["state"] == "merged" and not reports["empty-array.json"].get("damage")
    assert reports["page.json"]["damage"].startswith("not JSON")
    assert reports["noise.json"]["state"] == "rejected"
    assert "top-level JSON object" in reports["object.json"]["damage"]
    assert "UTF-8" in reports["latin1.json"]["damage"] and "ok@latin.example" in merged
    assert reports["nested.json"]["rejected"] + bool(reports["nested.json"].get("damage")) >= 1
    assert reports["bigfield.json"]["accepted"] == 2 and "limit" in reports["bigfield.json"]["reasons"][0]
    assert {"big0@example.org", "big2@example.org"} <= merged
    assert reports["mixed.jsonl"]["accepted"] == 5 and reports["mixed.jsonl"]["rejected"] == 5
    reasons = " ".join(reports["mixed.jsonl"]["reasons"])
    assert "not an integer" in reasons and "int32" in reasons and "not a string" in reasons and "not JSON" in reasons
    assert {f"mixed{i}@example.org" for i in range(5)} <= merged
    assert "outside the watched folder" in reports["link.json"]["damage"]
    assert "upload.json.part" not in reports and ".hidden.json" not in reports
    assert not any(e.startswith(("outside", "part", "hidden")) for e in merged)
    for name in ("empty.json", "page.json", "noise.json", "object.json", "latin1.json"):
        reason = json.loads((runtime.settings.data_dir / "quarantine" / f"{name}.error.json").read_text())
        assert reason["reason"] == reports[name]["damage"]
    assert not summary.clean


def test_quarantined_file_can_be_fixed_and_replayed(runtime_factory, tmp_path):
    drop = tmp_path / "drop"
    copy_challenge(drop, {"6.json"})
    runtime = runtime_factory(watch=False)
    runtime.run_once()
    assert runtime.store.count() == 977
    quarantined = runtime.settings.data_dir / "quarantine" / "6.json"
    users = json.loads(quarantined.read_bytes()[: quarantined.read_bytes().rfind(b"},") + 1] + b"]")
    users.append(make_users(1, "fixed")[0])
    quarantined.write_bytes(orjson.dumps(users))
    replay_file(runtime.settings.data_dir, drop, "6.json")
    assert not (runtime.settings.data_dir / "quarantine" / "6.json.error.json").exists()
    runtime.run_once()
    assert runtime.store.count() == 978


@pytest.mark.parametrize("policy", ["move", "delete"])
def test_after_merge_policy(runtime_factory, tmp_path, policy):
    runtime = runtime_factory(after_merge=policy, quiet_period=0.2)
    shutil.copy(CHALLENGE / "7.json", runtime.settings.watch / "7.json")
    wait_for(lambda: not (runtime.settings.watch / "7.json").exists(), message=f"7.json to be {policy}d")
    assert (runtime.settings.watch / "processed" / "7.json").exists() == (policy == "move")
    assert runtime.store.count() == 1000


def test_polling_mode_sees_new_files(runtime_factory, tmp_path):
    runtime = runtime_factory(poll=True, quiet_period=0.2)
    shutil.copy(CHALLENGE / "8.json", runtime.settings.watch / "8.json")
    wait_pipeline(runtime, lambda: runtime.store.count() == 1000, message="8.json to merge in polling mode")


def test_backlog_bound_holds_the_reader_until_workers_drain(runtime_factory, tmp_path):
    """30 batches wait behind a bound of 3 queued jobs: the server stops reading the stream at the bound."""
    runtime = runtime_factory(workers=0, max_backlog=3, batch_size=100, quiet_period=0.2)
    (runtime.settings.watch / "many.json").write_bytes(orjson.dumps(make_users(3000, "many")))
    wait_for(lambda: len(runtime.queue) >= 3, message="the backlog to fill")
    peak = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # observe a while: the reader must stay held at the bound
        peak = max(peak, len(runtime.queue))
    assert peak <= 3 and reports_by_name(runtime.store)["many.json"]["state"] == "streaming"
    runtime.supervisor.scale(2)
    wait_pipeline(runtime, lambda: runtime.store.count() == 3000, timeout=60, message="every user once workers start")


def test_brackets_inside_strings_never_count_as_nesting(runtime_factory, tmp_path, monkeypatch):
    """The streaming path (big or damaged files) guards nesting depth; brackets in strings are data."""
    import core.intake.ingest

    monkeypatch.setattr(core.intake.ingest, "FAST_CHUNK", 0)  # the streaming parser, even for this small file
    drop = tmp_path / "drop"
    drop.mkdir()
    users = make_users(2000, "brackets")
    for user in users:
        user["first_name"] = 'a{b[c "quoted" \\ {'
    (drop / "brackets.json").write_bytes(orjson.dumps(users))
    runtime = runtime_factory(watch=False)
    summary = runtime.run_once()
    assert summary.accepted == 2000 and summary.clean


def test_a_streaming_file_reports_how_far_it_has_been_read(runtime_factory, tmp_path, monkeypatch):
    import core.intake.ingest

    monkeypatch.setattr(core.intake.ingest, "WHOLE_FILE_BYTES", 0)
    runtime = runtime_factory(watch=False, workers=0, max_backlog=2, batch_size=100)
    path = runtime.settings.watch / "slowly.json"
    path.write_bytes(orjson.dumps(make_users(30_000, "progress")))  # ~7 MB: more than gRPC's window holds
    threading.Thread(target=runtime.watcher.ingest, args=(path,), daemon=True).start()
    # No workers: the server holds the stream at the backlog bound, so the file stays part-way read.
    report = wait_for(lambda: (r := reports_by_name(runtime.store).get("slowly.json")) and r.get("read_bytes") and r,
                      message="progress to be reported")
    assert 0 < report["read_bytes"] < report["size"] and report["state"] == "streaming"
    runtime.supervisor.scale(1)
    wait_pipeline(runtime, lambda: runtime.store.count() == 30_000, timeout=120, message="the file to finish once a worker starts")
