"""What happens once every user of a dropped file is merged: its one log line and the --after-merge policy."""

from __future__ import annotations

import os
from pathlib import Path

from core.dropfiles import fingerprint


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
    if path.parent != folder or not path.exists() or fingerprint(path) != report["id"]:
        return False
    if policy == "delete":
        path.unlink()
    else:
        target = folder / "processed"
        target.mkdir(exist_ok=True)
        os.replace(path, target / path.name)
    return True
