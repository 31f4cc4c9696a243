"""Files set aside because they were damaged or unreadable, each with a `.error.json` saying why."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import orjson

from core.privacy import file_mode


def quarantined(data_dir: Path) -> list[dict]:
    folder = Path(data_dir) / "quarantine"
    if not folder.is_dir():
        return []
    items = []
    for error_file in sorted(folder.glob("*.error.json")):
        try:
            items.append(orjson.loads(error_file.read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            continue
    return items


def replay_file(data_dir: Path, watch: Path, name: str) -> Path:
    """Move quarantine/NAME back into the watched folder (replacing the damaged original there)."""
    folder = Path(data_dir) / "quarantine"
    source = folder / Path(name).name
    if not source.is_file():
        raise FileNotFoundError(f"{name} is not in {folder}")
    Path(watch).mkdir(parents=True, exist_ok=True)
    target = Path(watch) / source.name
    shutil.move(source, target)  # the data and drop folders may sit on different filesystems
    (folder / (source.name + ".error.json")).unlink(missing_ok=True)
    return target


def set_aside(folder: Path, path: Path, report_id: str, reason: str | None, kept: int) -> None:
    """Copy a damaged file here with NAME.error.json beside it; the original stays where the user put it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, folder / path.name)
    error = {"file": path.name, "id": report_id, "reason": reason, "records_kept": kept,
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (folder / (path.name + ".error.json")).write_bytes(orjson.dumps(error, option=orjson.OPT_INDENT_2))
    for name in (path.name, path.name + ".error.json"):  # personal data: private unless --group-readable
        os.chmod(folder / name, file_mode())
