"""The tree passes pyflakes' checks (ruff's F rules and syntax errors) and keeps its imports sorted (ruff's I rules)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_no_unused_or_undefined_names():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extras: pip install -e '.[test]')")
    done = subprocess.run([ruff, "check", "--select", "F,E9,I", "--output-format", "concise", "--no-cache",
                           "core", "console", "tests", "bench", "protobufs/generate.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
