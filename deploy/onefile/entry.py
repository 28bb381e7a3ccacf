"""The one-file executable's entry point: the ``fluidity`` command, as the console script."""

import multiprocessing
import sys

from fluidity.cli import main

if __name__ == "__main__":
    # a frozen program must call this first, or a child process re-runs main() (Windows, macOS)
    multiprocessing.freeze_support()
    sys.exit(main())
