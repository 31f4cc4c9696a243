"""core/ must stay importable without Textual: the headless mode and workers never load the UI."""

import subprocess
import sys

MODULES = ["core.config", "core.records", "core.ingest", "core.store", "core.jobs", "core.taskqueue",
           "core.server", "core.client", "core.watcher", "core.broker", "core.supervisor", "core.runtime",
           "core.exporter", "core.events", "core.worker_process", "core.quarantine", "core.dropfiles", "core.status",
           "core.snapshot", "core.codec", "core.aftermerge", "core.control", "core.doctor", "core.security",
           "core.metrics"]


def test_core_imports_without_textual():
    code = ("import importlib, sys\n"
            f"for name in {MODULES!r}: importlib.import_module(name)\n"
            "loaded = [m for m in sys.modules if m == 'textual' or m.startswith('textual.')]\n"
            "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
