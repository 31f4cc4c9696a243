"""The process of one browser session: arm the parent-death signal, then run `swordsec-console attach`."""

import sys

from core.queue.children import arm_from_environment


def main() -> int:
    arm_from_environment()  # where setpriv armed it already: only the check that we were not orphaned first
    from console.cli import main as cli_main

    return cli_main(["attach", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
