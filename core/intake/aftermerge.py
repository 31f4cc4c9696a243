"""What happens once every user of a dropped file is merged: its one log line and the --after-merge policy.

Naming: `move` puts the file in processed/NAME; when that name is taken by an earlier file, the first free
processed/STEM.2.SUFFIX, STEM.3.SUFFIX, ... (core.intake.dropfiles.numbered). The name is claimed by a hard link,
which fails rather than replace an existing file, so no earlier file is ever overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.intake.dropfiles import Refused, fingerprint, numbered, open_checked


def merged_line(name: str, report: dict, seconds: float) -> tuple[str, str, dict]:
    """(level, text, structured fields) of the line logged once per merged file."""
    damage = report.get("damage")
    reasons = report.get("reasons") or []
    text = (f"{name}: {'partial' if damage else 'merged'}: {report.get('accepted', 0)} users accepted "
            f"({report.get('new', 0)} new, {report.get('updated', 0)} updated, "
            f"{report.get('duplicate', 0)} duplicates), {report.get('rejected', 0)} rejected, "
            f"{report.get('size', 0)} bytes in {seconds:.2f} s")
    if reasons:
        text += f"; first rejection: {reasons[0]}"
    if damage:
        text += f"; {damage}"
    fields = dict(file=name, id=report["id"], state="partial" if damage else "merged",
                  accepted=report.get("accepted", 0), rejected=report.get("rejected", 0),
                  duplicates=report.get("duplicate", 0), bytes=report.get("size", 0), seconds=seconds)
    return ("warning" if damage or reasons else "info"), text, fields


def dispose(policy: str, folder: Path, path: Path, report: dict) -> bool:
    """Apply --after-merge (keep, move to processed/, delete) to a merged file; True when it was applied.

    Only when the file at that path still holds the merged content: a file replaced meanwhile under the
    same name is new input, never ours to move or delete.
    """
    if policy == "keep":
        return False
    if path.parent != folder or not _holds(folder, path, report["id"]):
        return False
    if policy == "delete":
        path.unlink()
    else:
        target = folder / "processed"
        target.mkdir(exist_ok=True)
        move_to_free_name(path, target)
    return True


def _holds(folder: Path, path: Path, report_id: str) -> bool:
    try:
        with open_checked(path, folder) as handle:
            return fingerprint(handle) == report_id
    except (Refused, OSError):
        return False


def move_to_free_name(path: Path, folder: Path) -> Path:
    """Move `path` into `folder` under the first free name of numbered(path.name); never replaces a file."""
    for name in numbered(path.name):
        target = folder / name
        try:
            os.link(path, target, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError:  # no hard links here (some network or FUSE filesystems): check, then rename
            if os.path.lexists(target):
                continue
            os.replace(path, target)
            return target
        os.unlink(path)
        return target
    raise FileExistsError(f"no free name for {path.name} in {folder}")
