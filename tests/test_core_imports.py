"""core/ must stay importable without Textual: the headless mode and workers never load the UI.

Every module under core/ is imported (found by walking the package, so a new module is covered the day it
lands), and its sub-packages are the roles of the architecture: a module outside them must be a shared one.
"""

import pkgutil
import subprocess
import sys

import core

ROLES = {"intake", "service", "storage", "queue", "ops"}
SHARED = {"config", "records", "runtime", "background", "interpreter", "tempdirs", "processes"}


def all_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(core.__path__, "core."))


def test_core_is_grouped_by_role():
    top = {name.split(".")[1] for name in all_modules()}
    assert top == ROLES | SHARED, f"core/ holds {sorted(top - ROLES - SHARED)} outside the role packages"


def test_core_imports_without_textual():
    modules = all_modules()
    assert len(modules) > 30
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "loaded = [m for m in sys.modules if m == 'textual' or m.startswith('textual.')]\n"
            "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
