"""Personal data is private by default: a 0700 data folder, 0600 all_users.json and quarantined files;
`group_readable` (--group-readable / SWORDSEC_GROUP_READABLE) opens them to the group, never to everyone."""

from __future__ import annotations

import os
import stat

import orjson
import pytest

from core.storage import privacy
from tests.conftest import make_users


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def process_wide_mode_restored():
    yield
    privacy.set_group_readable(False)


@pytest.mark.parametrize("group_readable, folder, file", [(False, 0o700, 0o600), (True, 0o750, 0o640)])
def test_data_folder_output_and_quarantine_modes(runtime_factory, tmp_path, group_readable, folder, file):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # a folder made by an older version, or by hand: tightened at start
    runtime = runtime_factory(watch=False, workers=1, group_readable=group_readable)
    drop = runtime.settings.watch
    drop.mkdir(parents=True, exist_ok=True)
    (drop / "good.json").write_bytes(orjson.dumps(make_users(20, "modes")))
    damaged = orjson.dumps(make_users(5, "damaged"))[:-40]  # truncated: its complete records are kept
    (drop / "damaged.json").write_bytes(damaged)
    os.chmod(drop / "damaged.json", 0o644)
    summary = runtime.run_once()
    assert summary.accepted >= 20 and summary.damaged == 1
    assert mode(data) == folder
    assert mode(runtime.settings.output_path) == file
    quarantine = data / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == ["damaged.json", "damaged.json.error.json"]
    for path in quarantine.iterdir():
        assert mode(path) == file, path
    assert not mode(runtime.settings.output_path) & stat.S_IRWXO


def test_output_outside_the_data_folder_is_private_too(runtime_factory, tmp_path):
    output = tmp_path / "shared" / "all_users.json"
    runtime = runtime_factory(watch=False, workers=1, output=output)
    runtime.settings.watch.mkdir(parents=True, exist_ok=True)
    (runtime.settings.watch / "a.json").write_bytes(orjson.dumps(make_users(3, "outside")))
    runtime.run_once()
    assert mode(output) == 0o600
