"""Files that hold personal data are private by default: 0600 files in a 0700 data folder.

`--group-readable` (SWORDSEC_GROUP_READABLE) makes them 0640 in 0750, for a group (say, a reporting job's)
that needs to read all_users.json, quarantined files and their reports. The mode is process-wide: the
runtime sets it once from its settings and every writer (exporter, quarantine) reads it here.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_FILE, PRIVATE_FOLDER = 0o600, 0o700
GROUP_FILE, GROUP_FOLDER = 0o640, 0o750

_group_readable = False


def set_group_readable(enabled: bool) -> None:
    global _group_readable
    _group_readable = bool(enabled)


def file_mode() -> int:
    return GROUP_FILE if _group_readable else PRIVATE_FILE


def folder_mode() -> int:
    return GROUP_FOLDER if _group_readable else PRIVATE_FOLDER


def make_private(folder: Path) -> str | None:
    """Set the data folder's mode; a folder we do not own keeps its mode and the reason is returned."""
    try:
        os.chmod(folder, folder_mode())
    except OSError as error:
        return f"cannot make {folder} private (mode {folder_mode():o}): {error.strerror}"
    return None
