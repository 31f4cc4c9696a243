"""Files set aside because they were damaged or unreadable, each with a `.error.json` saying why.

Naming: a copy is quarantine/NAME with quarantine/NAME.error.json beside it. When NAME is already taken (an
earlier file of the same name, set aside before), the copy takes the first free name of NAME's stem with a
number: STEM.2.SUFFIX, STEM.3.SUFFIX, ... (core.intake.dropfiles.numbered), claimed with O_EXCL so two copies never
overwrite each other; its error file is STEM.N.SUFFIX.error.json and says "file" (the original name) and
"copy" (the name here). A copy's name never ends in ".error.json". `replay NAME` takes either name.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import orjson

from core.intake.dropfiles import numbered
from core.storage.privacy import file_mode

ERROR_SUFFIX = ".error.json"


def quarantined(data_dir: Path) -> list[dict]:
    folder = Path(data_dir) / "quarantine"
    if not folder.is_dir():
        return []
    items, stamps = [], {}
    for error_file in sorted(folder.glob("*" + ERROR_SUFFIX)):
        try:
            item = orjson.loads(error_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(item, dict):
            item.setdefault("copy", error_file.name[: -len(ERROR_SUFFIX)])  # written before copies were numbered
            items.append(item)
            stamps[id(item)] = _mtime(error_file)
    items.sort(key=lambda item: stamps[id(item)])  # oldest first: the order the files were set aside
    return items


def replay_file(data_dir: Path, watch: Path, name: str) -> Path:
    """Move a quarantined copy back into the watched folder under its original name (replacing the damaged
    original there). NAME is an original's name (its latest copy is taken) or a copy's (that one)."""
    folder = Path(data_dir) / "quarantine"
    name = Path(name).name
    items = quarantined(data_dir)
    copies = [item for item in items if item.get("file") == name and item.get("copy")]
    if copies:  # an original's name: its latest copy
        original, source = name, folder / Path(copies[-1]["copy"]).name
    else:  # a copy's name (STEM.N.SUFFIX): that copy, back under its original name
        mine = [item for item in items if item.get("copy") == name]
        original, source = (Path(mine[-1].get("file") or name).name if mine else name), folder / name
    if name.endswith(ERROR_SUFFIX):
        raise FileNotFoundError(f"{name} is not in {folder}")
    if not source.is_file():
        raise FileNotFoundError(f"{name} is not in {folder}")
    Path(watch).mkdir(parents=True, exist_ok=True)
    target = Path(watch) / original
    shutil.move(source, target)  # the data and drop folders may sit on different filesystems
    (folder / (source.name + ERROR_SUFFIX)).unlink(missing_ok=True)
    return target


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def set_aside(folder: Path, path: Path, report_id: str, reason: str | None, kept: int, handle=None) -> Path | None:
    """Copy a damaged file here with its .error.json beside it; the original stays where the user put it.

    handle: the file as already opened and checked (read from its start): the copy is of what was read.
    Without one (a file that could not be opened) only the .error.json is written. Returns the copy's path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    name = _claim(folder, path.name, with_copy=handle is not None)
    copy = folder / name if handle is not None else None
    if copy is not None:
        handle.seek(0)
        with open(copy, "wb") as out:
            shutil.copyfileobj(handle, out, 1 << 20)
        info = os.fstat(handle.fileno())
        os.utime(copy, ns=(info.st_atime_ns, info.st_mtime_ns))
    error = {"file": path.name, "copy": name if copy else None, "id": report_id, "reason": reason,
             "records_kept": kept, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (folder / (name + ERROR_SUFFIX)).write_bytes(orjson.dumps(error, option=orjson.OPT_INDENT_2))
    for written in (copy, folder / (name + ERROR_SUFFIX)):  # personal data: private unless --group-readable
        if written is not None:
            os.chmod(written, file_mode())
    return copy


def _claim(folder: Path, name: str, with_copy: bool) -> str:
    """The first free name for a copy and its .error.json, both created empty (O_EXCL: never an overwrite)."""
    for candidate in numbered(name):
        if candidate.endswith(ERROR_SUFFIX) or (folder / candidate).exists():
            continue
        if not _create(folder / (candidate + ERROR_SUFFIX)):
            continue
        if with_copy and not _create(folder / candidate):
            (folder / (candidate + ERROR_SUFFIX)).unlink(missing_ok=True)
            continue
        return candidate
    raise FileExistsError(f"no free name for {name} in {folder}")


def _create(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode()))
    except FileExistsError:
        return False
    return True
