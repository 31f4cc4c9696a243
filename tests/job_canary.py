"""A module a forged RQ job names. Importing it, or calling anything in it, leaves a file in $SWORDSEC_CANARY.

The job-safety tests assert no such file appears: a worker never imports or calls what a job in Redis names.
"""

import os
from pathlib import Path


def _mark(what: str) -> None:
    folder = os.environ.get("SWORDSEC_CANARY")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{what}-{os.getpid()}").write_text(what)


_mark("imported")


def run(*_args, **_kwargs):
    _mark("called")


def callback(*_args, **_kwargs):
    _mark("callback")
